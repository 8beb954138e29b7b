//! Issue 25: the GPU bench scripts (`bench/device_check.sh`, `bench/gpu.sh`) run as written
//! with `PYTHON` set and unset, in their dry modes (`DRY=1`: every check, then what they
//! would run, stopping before the first CUDA call), and `gpu.sh` refuses binaries linked
//! against a PyTorch without CUDA. The PyTorch is the project's `.venv`'s (a CUDA build,
//! as pip installs it): only its version strings are read, so no GPU is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// A directory with `python3` and `nvidia-smi` that record being run and fail: with
/// `PYTHON` set the scripts must not reach `python3` from `PATH`, and a dry run never
/// calls `nvidia-smi`.
fn traps(dir: &Path) -> PathBuf {
    let traps = dir.join("traps");
    std::fs::create_dir_all(&traps).unwrap();
    for name in ["python3", "nvidia-smi"] {
        executable(
            &traps.join(name),
            &format!(
                "#!/bin/sh\necho {name} >> \"{}\"\nexit 97\n",
                dir.join("trapped").display()
            ),
        );
    }
    traps
}

fn executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A `make gpu-binaries` directory: `torch-version` as given, and in place of the three
/// binaries scripts that record being run (a dry run runs none of them).
fn gpu_bin_dir(dir: &Path, torch_version: &str) -> PathBuf {
    let bins = dir.join("gpu-bin");
    for b in ["graft-prep", "graft-probe", "examples/step_bench"] {
        executable(
            &bins.join(b),
            &format!(
                "#!/bin/sh\necho {b} >> \"{}\"\nexit 97\n",
                dir.join("trapped").display()
            ),
        );
    }
    std::fs::write(bins.join("torch-version"), format!("{torch_version}\n")).unwrap();
    bins
}

/// `bash bench/<script> args` with `DRY=1`, `PYTHON` set to `python` or unset (then
/// `python3` is the one in `path_first`), within a minute (the recursion that issue 25
/// found never returned).
fn dry_run(
    script: &str,
    args: &[&Path],
    python: Option<&Path>,
    path_first: &Path,
    env: &[(&str, &str)],
) -> Output {
    let mut c = Command::new("timeout");
    c.arg("60")
        .arg("bash")
        .arg(root().join("bench").join(script))
        .args(args)
        .env("DRY", "1")
        .env("PATH", format!("{}:/usr/bin:/bin", path_first.display()))
        .env_remove("DEVICE")
        .env_remove("PRESET");
    match python {
        Some(py) => c.env("PYTHON", py),
        None => c.env_remove("PYTHON"),
    };
    c.envs(env.iter().copied());
    run(&mut c)
}

/// This checkout (the scripts and its `.venv`).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn says(out: &Output, what: &str) -> String {
    format!("{what}\nstdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

#[test]
fn the_gpu_scripts_run_dry_with_python_set_and_unset() {
    let venv = root().join(".venv/bin/python");
    let Some((py, running)) = graft_external::require(
        "bench scripts' dry runs with the venv's PyTorch",
        graft_external::VENV,
        venv.exists().then_some(venv),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let traps = traps(dir.path());
    let venv_bin = py.parent().unwrap().to_path_buf();
    // What `make gpu-binaries` writes for this PyTorch.
    let here = ok(Command::new(&py).args([
        "-c",
        "import torch; print(torch.__version__, torch.version.cuda)",
    ]));
    let here = here.trim();
    let (version, cuda) = here.split_once(' ').unwrap();
    assert_ne!(
        cuda, "None",
        "the venv's PyTorch is pip's CUDA build: {here}"
    );
    let bins = gpu_bin_dir(dir.path(), here);
    let trapped = || std::fs::read_to_string(dir.path().join("trapped")).unwrap_or_default();

    // PYTHON unset: python3 from PATH (the venv's); set: that interpreter, PATH's python3
    // a trap.
    let interpreters: [(Option<&Path>, &Path); 2] = [(None, &venv_bin), (Some(&py), &traps)];
    for (python, path_first) in interpreters {
        let who = format!("PYTHON={python:?}");
        let out = dry_run("device_check.sh", &[], python, path_first, &[]);
        assert!(out.status.success(), "{}", says(&out, &who));
        assert!(
            stdout(&out).contains(&format!("python torch: {version} (CUDA {cuda})"))
                && stdout(&out).contains("dry run: would run nvidia-smi"),
            "{}",
            says(&out, &who)
        );
        let out = dry_run("gpu.sh", &[&bins], python, path_first, &[]);
        assert!(out.status.success(), "{}", says(&out, &who));
        assert!(
            stdout(&out).contains(&format!("torch here: {version} (CUDA {cuda})"))
                && stdout(&out).contains("dry run: checks passed; would run on cuda:"),
            "{}",
            says(&out, &who)
        );
        assert_eq!(trapped(), "", "{who}: a dry run ran something it must not");
    }

    // Binaries linked against a torch without CUDA, or whose torch is not known to have
    // it, are refused for cuda before anything runs; on cpu they are fine.
    let base = version.split('+').next().unwrap();
    for (linked, refusal) in [
        (
            format!("{base}+cpu None"),
            "a build without CUDA: they cannot use DEVICE=cuda",
        ),
        (base.to_owned(), "does not say whether that torch has CUDA"),
        (
            "0.0.1+cu128 12.8".to_owned(),
            "were linked against PyTorch 0.0.1+cu128",
        ),
    ] {
        let bins = gpu_bin_dir(dir.path(), &linked);
        let out = dry_run("gpu.sh", &[&bins], Some(&py), &traps, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", says(&out, &linked));
        assert!(stderr(&out).contains(refusal), "{}", says(&out, &linked));
        assert!(!stdout(&out).contains("dry run"), "{}", says(&out, &linked));
    }
    let bins = gpu_bin_dir(dir.path(), &format!("{base}+cpu None"));
    let out = dry_run("gpu.sh", &[&bins], Some(&py), &traps, &[("DEVICE", "cpu")]);
    assert!(out.status.success(), "{}", says(&out, "DEVICE=cpu"));
    assert!(
        stdout(&out).contains("would run on cpu:"),
        "{}",
        says(&out, "cpu")
    );
    // A binary missing from the directory is named.
    std::fs::remove_file(bins.join("examples/step_bench")).unwrap();
    let out = dry_run("gpu.sh", &[&bins], Some(&py), &traps, &[("DEVICE", "cpu")]);
    assert!(
        !out.status.success() && stderr(&out).contains("examples/step_bench is missing"),
        "{}",
        says(&out, "no step_bench")
    );
    assert_eq!(trapped(), "", "a refusal ran something it must not");
    running.passed();
}
