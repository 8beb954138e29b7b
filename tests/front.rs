//! `graft-front` (issue 10, a rerun that costs nothing): through it, a rerun with every
//! stage fresh starts none of the stage binaries with tensors, and a stage with work to do
//! is handed to its own binary.

use std::path::Path;

use crate::common::*;

/// A bin directory with the real runner, front and prep, and in place of the pretrain and
/// fine-tune binaries scripts that record that they were started and fail.
fn bin_dir_with_recorders(dir: &Path) -> std::path::PathBuf {
    let real = bin_dir();
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    for kind in ["pretrain", "finetune"] {
        let script = bins.join(format!("graft-{kind}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho {kind} >> \"{}\"\nexit 3\n",
                dir.join("started").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // The front is copied last: newer than the scripts, so it answers for them.
    std::thread::sleep(std::time::Duration::from_millis(20));
    for b in ["graft", "graft-prep", "graft-front"] {
        std::fs::copy(real.join(b), bins.join(b)).unwrap();
    }
    bins
}

fn started(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("started")).unwrap_or_default()
}

#[test]
fn a_fresh_rerun_starts_no_tensor_binary_and_work_goes_to_the_stage_binary() {
    assert!(
        bin_dir().join("graft-front").exists(),
        "graft-front is not built: run `cargo build --workspace --bins` first"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = small_finetune_pipeline(dir.path(), "front", "[]");
    // First run with the real binaries (through the real front).
    let first = ok(graft(&store).arg("run").arg(&file));
    assert_eq!(status_of(&first, "finetune"), "ran", "{first}");

    let bins = bin_dir_with_recorders(dir.path());
    let runner = || {
        let mut c = std::process::Command::new(bins.join("graft"));
        c.arg("--store").arg(&store).env("GRAFT_BIN_DIR", &bins);
        c
    };
    // Every stage fresh: answered by the front, the recorders never start.
    let again = ok(runner().arg("run").arg(&file));
    for stage in ["src", "tgt", "pretrain", "finetune"] {
        assert_eq!(status_of(&again, stage), "fresh", "{again}");
    }
    let status = ok(runner().arg("status").arg(&file));
    assert_eq!(status_of(&status, "finetune"), "fresh", "{status}");
    assert_eq!(started(dir.path()), "", "a tensor binary was started");

    // Work to do (a new seed): the front hands the fine-tune stage to its binary.
    let out = run(runner()
        .arg("run")
        .arg(&file)
        .args(["-S", "finetune.seeds=[1]"]));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert_eq!(started(dir.path()), "finetune\n");

    // A stage binary newer than the front decides for itself, even when fresh.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let script = bins.join("graft-pretrain");
    let text = std::fs::read(&script).unwrap();
    std::fs::write(&script, text).unwrap();
    let out = run(runner().arg("run").arg(&file));
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        started(dir.path()).contains("pretrain"),
        "{}",
        started(dir.path())
    );
}

/// A bin directory with a copy of the front and, in place of each tensor stage binary, a
/// script that appends its arguments to [`started_file`] and runs the real binary with
/// them; the front is copied last, so it is newer than the scripts and answers for them.
fn bin_dir_with_forwarders(dir: &Path, real: &Path) -> std::path::PathBuf {
    let bins = dir.join("forwarding-bin");
    std::fs::create_dir_all(&bins).unwrap();
    for kind in ["pretrain", "probe", "finetune"] {
        let script = bins.join(format!("graft-{kind}"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> \"{}\"\nexec \"{}\" \"$@\"\n",
                started_file(dir, kind).display(),
                real.join(format!("graft-{kind}")).display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::copy(real.join("graft-front"), bins.join("graft-front")).unwrap();
    bins
}

/// Where the forwarder of `graft-<kind>` records that it was started.
fn started_file(dir: &Path, kind: &str) -> std::path::PathBuf {
    dir.join(format!("started-{kind}"))
}

/// Arguments with which each tensor stage passes its checks on `cpu`: `dataset` is a prep
/// artifact in the store, and stands for the base model too (`--check` and `--status`
/// read neither's files).
fn base_args(kind: &str, dataset: &str) -> Vec<String> {
    let mut args = vec!["-i".to_owned(), format!("dataset={dataset}")];
    if kind != "pretrain" {
        args.extend(["-i".to_owned(), format!("base={dataset}")]);
    }
    if kind == "finetune" {
        args.extend(["-p".to_owned(), r#"baselines=["full"]"#.to_owned()]);
    }
    args
}

/// The catalogue of issue 25: device settings (every way to pass one, well formed or not),
/// a device beside another bad parameter or input, and the fine-tune stage's workers and
/// executors; each with whether its answer is the stage binary's backend's (a CUDA device
/// that the process opens). There are no precision parameters yet.
fn catalogue(kind: &str) -> Vec<(Vec<&'static str>, bool)> {
    let mut cases: Vec<(Vec<&str>, bool)> = vec![
        (vec![], false),
        (vec!["--device", "cpu"], false),
        (vec!["--device", "cuda"], true),
        (vec!["--device", "cuda:0"], true),
        (vec!["--device", "cuda:1"], true),
        (vec!["--device", " cuda:1 "], true),
        (vec!["--device", "gpu"], false),
        (vec!["--device", "cuda:x"], false),
        (vec!["--device", "cuda:-1"], false),
        (vec!["--device", "CUDA"], false),
        (vec!["--device", ""], false),
        (vec!["-p", "device=cuda"], true),
        (vec!["-p", "device=3"], false),
        (vec!["--params-json", r#"{"device": "cuda:1"}"#], true),
        (vec!["--params-json", r#"{"device": "cpu"}"#], false),
        // Another error beside the device: whoever answers, the same one comes first.
        (vec!["--device", "cuda", "-p", "no_such_param=1"], false),
        (vec!["--device", "cuda", "-p", "batch=0"], true),
        (vec!["--device", "gpu", "-p", "batch=0"], false),
        (vec!["--device", "cuda", "-i", "dataset=xyz"], true),
    ];
    if kind == "finetune" {
        cases.extend([
            (vec!["--device", "cuda", "--jobs", "2"], true),
            (vec!["--device", "cpu", "--jobs", "2"], false),
            (vec!["--device", "cuda", "-p", "executor=slurm"], false),
            (
                vec![
                    "--device",
                    "cuda",
                    "-p",
                    "executor=slurm",
                    "-p",
                    "slurm_gpus_per_task=1",
                ],
                false,
            ),
            (
                vec![
                    "--device",
                    "cuda:1",
                    "-p",
                    "executor=slurm",
                    "-p",
                    "slurm_gpus_per_task=1",
                ],
                false,
            ),
            (
                vec![
                    "--device",
                    "cuda:1",
                    "-p",
                    "executor=slurm",
                    "-p",
                    "slurm_gpus_per_task=2",
                ],
                false,
            ),
            (vec!["--device", "gpu", "-p", "executor=slurm"], false),
            (vec!["--device", "cuda", "-p", "executor=pbs"], true),
        ]);
    }
    cases
}

/// What graft says on stderr: its `error:` and `warning:` lines (LibTorch's own warnings,
/// with their time stamps and process ids, left out).
fn said(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.starts_with("warning:"))
        .collect()
}

/// A stage's stdout with the time it took left out (`--json`: the `seconds` field; else
/// the line's `0.01 s`).
fn outcome(stdout: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(stdout) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.remove("seconds");
            serde_json::Value::Object(m).to_string()
        }
        _ => {
            let words: Vec<&str> = stdout.split_whitespace().collect();
            let keep = |k: usize| words.get(k + 1) != Some(&"s") && words[k] != "s";
            (0..words.len())
                .filter(|&k| keep(k))
                .map(|k| words[k])
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

/// Issue 25: the front (built with flex) never answers what only the stage's binary can
/// know. Every setting of [`catalogue`] goes through the front and straight to each tensor
/// binary, with `--check` (with and without `--json`) and `--status --json`: the same exit
/// code, the same error text and the same outcome (seconds aside). A setting whose answer is
/// the backend's (a CUDA device this process would open) must reach the stage's binary;
/// any other is answered by the front alone, which keeps a fresh rerun free of LibTorch's
/// start-up. It holds whatever backend the binaries in `target/debug` were built with;
/// `.ci/run` runs it again against the tch binaries `make test-tch` leaves there.
#[test]
fn the_front_answers_as_the_stage_binary_and_leaves_devices_to_it() {
    let real = bin_dir();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    tiny_prep(&store);
    let dataset = std::fs::read_dir(store.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|n| n.len() == 64)
        .expect("the prep artifact");
    let bins = bin_dir_with_forwarders(dir.path(), &real);
    let at = Setup {
        dir: dir.path(),
        real: &real,
        bins: &bins,
        store: &store,
        dataset: &dataset,
    };
    // One thread per stage: a tch binary takes half a second to start.
    let compared: usize = std::thread::scope(|s| {
        let kinds = ["pretrain", "probe", "finetune"].map(|kind| s.spawn(move || at.compare(kind)));
        kinds.into_iter().map(|k| k.join().unwrap()).sum()
    });
    assert_eq!(compared, 3 * (3 * 19 + 8));
}

/// Where [`Setup::compare`] finds the binaries and the store.
#[derive(Clone, Copy)]
struct Setup<'a> {
    dir: &'a Path,
    real: &'a Path,
    bins: &'a Path,
    store: &'a Path,
    dataset: &'a str,
}

impl Setup<'_> {
    /// Every setting of the catalogue of `graft-<kind>` in every mode, through the front and
    /// straight to the binary; returns how many calls were compared.
    fn compare(self, kind: &str) -> usize {
        // As a user types them (`--check`: the error on stderr) and as the runner sends them
        // (`--json`: the outcome or the failure on stdout).
        let modes: [&[&str]; 3] = [
            &["--check"],
            &["--check", "--json"],
            &["--status", "--json"],
        ];
        let mut compared = 0;
        for (case, backend_decides) in catalogue(kind) {
            let mut args: Vec<String> = vec!["--store".into(), self.store.display().to_string()];
            args.extend(base_args(kind, self.dataset));
            args.extend(case.iter().map(|s| s.to_string()));
            for mode in modes {
                let what = format!("graft-{kind} {} {}", mode.join(" "), case.join(" "));
                let record = started_file(self.dir, kind);
                let _ = std::fs::remove_file(&record);
                let front = run(std::process::Command::new(self.bins.join("graft-front"))
                    .arg(kind)
                    .args(mode)
                    .args(&args)
                    .env_remove("GRAFT_STORE"));
                let started = !std::fs::read_to_string(&record)
                    .unwrap_or_default()
                    .is_empty();
                let own = run(
                    std::process::Command::new(self.real.join(format!("graft-{kind}")))
                        .args(mode)
                        .args(&args)
                        .env_remove("GRAFT_STORE"),
                );
                same_answer(&what, mode, &front, &own);
                assert_eq!(
                    started,
                    backend_decides,
                    "{what}: the front {} the stage binary",
                    if started { "started" } else { "answered for" }
                );
                compared += 1;
            }
        }
        compared
    }
}

/// The front's answer `front` and the binary's `own` to the call `what`: the same exit code,
/// the same error lines, the same outcome (time aside), and not nothing.
fn same_answer(
    what: &str,
    mode: &[&str],
    front: &std::process::Output,
    own: &std::process::Output,
) {
    assert_eq!(
        front.status.code(),
        own.status.code(),
        "{what}: exit codes differ\nfront: {}{}\nbinary: {}{}",
        stdout(front),
        stderr(front),
        stdout(own),
        stderr(own)
    );
    assert_eq!(
        said(&stderr(front)),
        said(&stderr(own)),
        "{what}: error text differs"
    );
    assert_eq!(
        outcome(&stdout(front)),
        outcome(&stdout(own)),
        "{what}: outcome differs"
    );
    let answer = if mode.contains(&"--json") || own.status.success() {
        outcome(&stdout(own))
    } else {
        said(&stderr(own)).join("\n")
    };
    assert!(!answer.is_empty(), "{what}: the binary said nothing");
}
