//! Issue 27 item 1: the CI pipeline's pretrain gives one artifact on any x86-64 machine.
//!
//! The tch build of `graft-pretrain` (`make test-tch` builds it before the tests) trains
//! `pipelines/ci.toml`'s backbone on its prep-source data, each variant in a copy of one
//! store and with its process's environment set as on another machine: graft's default
//! (kernels pinned to AVX2) with 1 and 2 threads, and LibTorch's own choice on a machine
//! without AVX-512 (`ATEN_CPU_CAPABILITY=avx2`, MKL's AVX2 path, graft's pin off). On a CPU
//! with AVX-512 the machine's own kernels (`GRAFT_CPU_KERNELS=native`) must give another
//! artifact, or the test could not see a pin that does not take effect.

use std::path::{Path, PathBuf};

use graft_backend::numerics::{MODE_VAR, PINNED_VAR, PINS};
use serde_json::Value;

/// The tch build of `graft-pretrain` next to this test binary.
fn tch_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("graft-pretrain");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the tch binaries first (`make test-tch` does)",
            bin.display()
        )
    });
    assert!(
        bytes.windows(15).any(|w| w == b"libtorch_cpu.so"),
        "{} is not the tch build (it does not link LibTorch): `make test-tch` builds it",
        bin.display()
    );
    bin
}

/// The parameters of stage `name` in `pipelines/ci.toml`, as JSON.
fn ci_params(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines/ci.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let params = doc["stages"][name]["params"].clone();
    serde_json::to_value(params).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A store holding the CI pipeline's prep-source dataset; returns its id.
fn source_store(store: &Path) -> String {
    super::tests::execute_stage::<graft_prep::Prep>(store, ci_params("prep-source"), &[])
}

/// Trains the CI backbone with `threads` intra-op threads and `env` in a copy of `base`;
/// returns the artifact id and the manifest's `cpu_kernels`.
fn pretrain(
    base: &Path,
    dataset: &str,
    name: &str,
    threads: usize,
    env: &[(&str, &str)],
) -> (String, Value) {
    pretrain_with(ci_params("pretrain"), base, dataset, (name, threads, env))
}

/// [`pretrain`] with `params` instead of the CI pipeline's.
fn pretrain_with(
    params: Value,
    base: &Path,
    dataset: &str,
    (name, threads, env): (&str, usize, &[(&str, &str)]),
) -> (String, Value) {
    let store = base.with_file_name(name);
    copy_dir(base, &store);
    let bin = tch_binary();
    let mut cmd = std::process::Command::new(&bin);
    for (k, _) in PINS {
        cmd.env_remove(k);
    }
    let out = cmd
        .env_remove(PINNED_VAR)
        .env_remove(MODE_VAR)
        .env("OMP_NUM_THREADS", threads.to_string())
        .envs(env.iter().copied())
        .arg("--store")
        .arg(&store)
        .arg("--params-json")
        .arg(params.to_string())
        .arg("-i")
        .arg(format!("dataset={dataset}"))
        .arg("--json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name}: {} failed ({}):\n{stdout}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let outcome: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let id = outcome["artifact"].as_str().unwrap().to_owned();
    let manifest =
        std::fs::read_to_string(store.join("objects").join(&id).join("manifest.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest).unwrap();
    (id, manifest["extra"]["cpu_kernels"].clone())
}

#[test]
fn the_ci_backbone_is_one_artifact_whatever_the_kernels_and_threads() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let dataset = source_store(&base);
    let (pinned_1, kernels) = pretrain(&base, &dataset, "pinned-1", 1, &[]);
    assert_eq!(kernels["ATEN_CPU_CAPABILITY"], "avx2 (graft)", "{kernels}");
    let (pinned_2, _) = pretrain(&base, &dataset, "pinned-2", 2, &[]);
    let avx2_machine = [
        (MODE_VAR, "native"),
        ("ATEN_CPU_CAPABILITY", "avx2"),
        ("MKL_CBWR", "AVX2,STRICT"),
        ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ];
    let (avx2, kernels) = pretrain(&base, &dataset, "avx2-machine", 2, &avx2_machine);
    assert_eq!(
        kernels["ATEN_CPU_CAPABILITY"], "avx2 (environment)",
        "{kernels}"
    );
    assert_eq!(pinned_1, pinned_2, "1 and 2 threads gave two backbones");
    assert_eq!(
        pinned_1, avx2,
        "graft's pin and an AVX2 machine gave two backbones"
    );
    if std::arch::is_x86_feature_detected!("avx512f") {
        let (native, _) = pretrain(&base, &dataset, "native", 2, &[(MODE_VAR, "native")]);
        assert_ne!(
            native, pinned_1,
            "this AVX-512 machine's own kernels gave the pinned backbone: the test cannot tell a pin that works from one that does nothing"
        );
    } else {
        eprintln!("no AVX-512 on this CPU: the machine's own kernels are the pinned ones");
    }
}

/// A bf16 run lifts graft's pin (`graft_backend::numerics::native_for_bf16`) and says so in
/// its manifest, unless the user asked for the pin by name; an f32 run keeps it.
#[test]
fn a_bf16_pretrain_takes_the_machines_kernels_unless_the_user_pins_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let dataset = source_store(&base);
    let mut params = ci_params("pretrain");
    params["epochs"] = 1.into();
    params["precision"] = "bf16".into();
    let (_, kernels) = pretrain_with(params.clone(), &base, &dataset, ("bf16", 2, &[]));
    assert_eq!(kernels[MODE_VAR], "native (graft, for bf16)", "{kernels}");
    for (name, _) in PINS {
        assert_eq!(kernels[name], "unset", "{kernels}");
    }
    let pinned = [(MODE_VAR, "avx2")];
    let (_, kernels) = pretrain_with(params, &base, &dataset, ("bf16-avx2", 2, &pinned));
    assert_eq!(kernels[MODE_VAR], "avx2", "{kernels}");
    assert_eq!(kernels["ATEN_CPU_CAPABILITY"], "avx2 (graft)", "{kernels}");
}
