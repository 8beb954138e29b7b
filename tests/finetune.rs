//! The fine-tune stage through the runner: placements and baselines trained once per seed,
//! cached per run, diverging runs recorded, bad placements refused.

use std::path::Path;

use graft_tables::{Method, ProposalRow, RunRow, RunStatus, Table};

use crate::common::*;

fn pipeline(dir: &Path) -> std::path::PathBuf {
    small_finetune_pipeline(
        dir,
        "ft",
        r#"[{ name = "long-range", edges = [[0, 3]] }, { name = "recurrent", edges = [[4, 1]] }]"#,
    )
}

fn artifact_dir(store: &Path) -> std::path::PathBuf {
    store
        .join("objects")
        .join(slot_artifact(store, "ft/finetune"))
}

fn manifest_extra(store: &Path, key: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(artifact_dir(store).join("manifest.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["extra"][key].clone()
}

#[test]
fn placements_and_baselines_train_once_per_seed_and_cache_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = pipeline(dir.path());
    let p = pipe.to_str().unwrap();

    let first = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&first, "finetune"), "ran", "{first}");
    let art = artifact_dir(&store);
    let runs = RunRow::read(&art.join(RunRow::FILE)).unwrap();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    let methods: Vec<Method> = runs.iter().map(|r| r.method).collect();
    assert_eq!(
        methods,
        [
            Method::Adapters,
            Method::Adapters,
            Method::LinearProbe,
            Method::Adapters
        ]
    );
    for r in &runs {
        assert_eq!(r.status, RunStatus::Ok, "{r:?}");
        let acc = r.test_accuracy.unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(r.trainable_params > 0 && r.forward_flops > 0 && r.wall_seconds > 0.0);
        let weights = r.weights_file.as_ref().unwrap();
        assert!(art.join(weights).exists(), "{weights}");
        assert!(store.join("objects").join(&r.run_artifact).exists());
    }
    // The recurrent placement costs a second pass.
    assert!(runs[1].forward_flops > runs[0].forward_flops, "{runs:#?}");
    let proposals = ProposalRow::read(&art.join(ProposalRow::FILE)).unwrap();
    let heuristics: Vec<&str> = proposals.iter().map(|r| r.heuristic.as_str()).collect();
    assert_eq!(heuristics, ["manual", "manual", "baseline", "parallel-all"]);
    assert_eq!(manifest_extra(&store, "trained"), 4);

    // The run artifacts are kept by gc as long as the stage's artifact is.
    let gc = ok(graft(&store).args(["gc", "--pipelines", dir.path().to_str().unwrap()]));
    assert!(gc.contains("kept"), "{gc}");
    assert!(!gc.contains(&runs[0].run_artifact[..12]), "{gc}");

    let second = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&second, "finetune"), "fresh", "{second}");

    // One more seed: only the new seed's runs train.
    let third = ok(graft(&store).args(["run", p, "-S", "finetune.seeds=[0, 1]"]));
    assert_eq!(status_of(&third, "finetune"), "ran", "{third}");
    assert_eq!(manifest_extra(&store, "trained"), 4);
    assert_eq!(manifest_extra(&store, "cached"), 4);
    let runs = RunRow::read(&artifact_dir(&store).join(RunRow::FILE)).unwrap();
    assert_eq!(runs.len(), 8);
}

#[test]
fn a_diverging_learning_rate_is_recorded_per_run_and_the_rest_continue() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    let out = ok(graft(&store).args(["run", p, "-S", "finetune.lr=1e9"]));
    assert_eq!(status_of(&out, "finetune"), "ran", "{out}");
    let runs = RunRow::read(&artifact_dir(&store).join(RunRow::FILE)).unwrap();
    let diverged: Vec<&RunRow> = runs
        .iter()
        .filter(|r| r.status == RunStatus::Diverged)
        .collect();
    assert!(!diverged.is_empty(), "{runs:#?}");
    for r in &diverged {
        assert!(r.error.as_ref().unwrap().contains("diverged"), "{r:?}");
        assert_eq!(r.test_accuracy, None);
    }
}

#[test]
fn an_edge_outside_the_graph_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    let o = run(graft(&store).args([
        "run",
        p,
        "-S",
        "finetune.preset=\"vit-cpu-tiny\"",
        "-S",
        "finetune.placements=[{ edges = [[0, 9]] }]",
    ]));
    assert!(!o.status.success());
    let err = stderr(&o) + &stdout(&o);
    assert!(err.contains("placements[0]") && err.contains("9"), "{err}");
    assert!(
        snapshot(&store).keys().all(|k| !k.starts_with("objects")),
        "{err}"
    );
}
