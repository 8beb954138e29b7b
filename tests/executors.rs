//! The fine-tune stage's executors (issue 14): runs are reproducible artifact for artifact,
//! whatever ran them, which is what lets `tests/slurm.sh ci` compare the Slurm executor's
//! runs with the local executor's; and the Slurm executor refuses a relative store path.
//! The Slurm executor itself runs against a real one-node cluster in `tests/slurm.sh ci`
//! (`.ci/run`).

use std::path::Path;

use graft_tables::{RunRow, RunStatus, Table};

use crate::common::*;

fn pipeline(dir: &Path) -> std::path::PathBuf {
    small_finetune_pipeline(dir, "ex", r#"[{ name = "recurrent", edges = [[4, 1]] }]"#)
}

fn runs(store: &Path) -> Vec<(String, String)> {
    let art = store
        .join("objects")
        .join(slot_artifact(store, "ex/finetune"));
    let mut v: Vec<(String, String)> = RunRow::read(&art.join(RunRow::FILE))
        .unwrap()
        .into_iter()
        .map(|r| {
            assert_eq!(r.status, RunStatus::Ok, "{r:?}");
            (
                format!("{} seed {}", r.placement_id, r.seed),
                r.run_artifact,
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn runs_trained_twice_are_the_same_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ok(graft(&a).args(["run", p]));
    // Another store, one worker instead of two (so other thread counts too).
    ok(graft(&b).args(["run", p, "-S", "finetune.jobs=1"]));
    let (ra, rb) = (runs(&a), runs(&b));
    assert_eq!(ra.len(), 3);
    assert_eq!(ra, rb);
}

#[test]
fn the_slurm_executor_refuses_a_relative_store_path() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    let o = run(graft(Path::new("store")).current_dir(dir.path()).args([
        "run",
        p,
        "-S",
        "finetune.executor=slurm",
    ]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("executor = \"slurm\"") && err.contains("\"store\" is not absolute"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let store = dir.path().join("store");
    assert!(!store.join("slots").join("ex--finetune.json").exists());
    assert!(
        std::fs::read_dir(store.join("tmp"))
            .unwrap()
            .next()
            .is_none()
    );
}
