//! The fine-tune stage through the runner: placements and baselines trained once per seed,
//! cached per run, diverging runs recorded, bad placements refused.

use std::path::Path;

use graft_tables::{Method, ProposalRow, RunMeasurement, RunRow, RunStatus, Table};

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
    // What each run measured is in the stage's manifest, row for row.
    let measured = RunMeasurement::read(&art).unwrap();
    assert_eq!(measured.len(), runs.len());
    for (r, m) in runs.iter().zip(&measured) {
        assert_eq!((&m.placement_id, m.seed), (&r.placement_id, r.seed));
        assert!(m.wall_seconds.unwrap() > 0.0 && m.images_per_second.unwrap() > 0.0);
        assert_eq!(m.device.as_deref(), Some("cpu"));
        assert!(!m.epoch_seconds.is_empty());
    }
    for r in &runs {
        assert_eq!(r.status, RunStatus::Ok, "{r:?}");
        let acc = r.test_accuracy.unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(r.trainable_params > 0 && r.forward_flops > 0);
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

/// `pipelines/ci.toml` with its data and epochs cut down, so that a test runs it end to end
/// in a minute or two: one epoch everywhere, a few hundred images, one fine-tune seed and
/// budgets 1 and 2 (still some twenty runs, on two workers).
pub(crate) fn small_ci(store: &Path) -> std::process::Command {
    let ci = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join("ci.toml");
    let mut c = graft(store);
    c.arg("run").arg(ci);
    for set in [
        "prep-source.train=256",
        "prep-source.val=32",
        "prep-source.test=32",
        "prep.train=64",
        "prep.val=32",
        "prep.test=64",
        "pretrain.epochs=1",
        "probe.head_epochs=1",
        "propose.budgets=[1, 2]",
        "finetune.epochs=1",
        "finetune.seeds=[0]",
    ] {
        c.args(["-S", set]);
    }
    c
}

/// The artifacts of stage `stage` in the store (by their manifests).
pub(crate) fn objects_of_stage(store: &Path, stage: &str) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(store.join("objects"))
        .unwrap()
        .flatten()
        .filter(|e| {
            let m = std::fs::read_to_string(e.path().join("manifest.json")).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&m).is_ok_and(|v| v["stage"] == stage)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Issue 27, item 4: the fine-tune stage's files hold results only; wall times, speed,
/// memory and device indices are in the manifests. So retraining the same runs (their
/// entries deleted, the stage forced) reproduces the stage's artifact id, the report stays
/// fresh with the same id, and a report made again from those inputs is the same one.
#[test]
fn retrained_runs_reproduce_the_stage_and_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let first = ok(&mut small_ci(&store));
    assert_eq!(status_of(&first, "finetune"), "ran", "{first}");
    let stage = slot_artifact(&store, "ci/finetune");
    let report = slot_artifact(&store, "ci/report");
    let art = store.join("objects").join(&stage);
    let runs = RunRow::read(&art.join(RunRow::FILE)).unwrap();
    let measured = RunMeasurement::read(&art).unwrap();
    assert_eq!(measured.len(), runs.len());
    assert!(measured.iter().all(|m| m.wall_seconds.unwrap() > 0.0));
    let manifest = std::fs::read_to_string(art.join("manifest.json")).unwrap();
    let file = std::fs::File::open(art.join(RunRow::FILE)).unwrap();
    let builder =
        parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let columns: Vec<String> = builder
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for timing in ["wall_seconds", "images_per_second", "peak_memory_bytes"] {
        assert!(!columns.iter().any(|c| c == timing), "{columns:?}");
        assert!(manifest.contains(timing), "{timing} is not in the manifest");
    }

    // Every run's entry deleted (object and key record): they train again.
    let trained = objects_of_stage(&store, "finetune-run");
    assert_eq!(trained.len(), runs.len());
    for id in &trained {
        std::fs::remove_dir_all(store.join("objects").join(id)).unwrap();
    }
    for key in std::fs::read_dir(store.join("keys")).unwrap().flatten() {
        let text = std::fs::read_to_string(key.path()).unwrap();
        if trained.iter().any(|id| text.contains(id.as_str())) {
            std::fs::remove_file(key.path()).unwrap();
        }
    }
    let again = ok(small_ci(&store).args(["--force", "finetune"]));
    assert_eq!(status_of(&again, "finetune"), "ran", "{again}");
    assert_eq!(slot_artifact(&store, "ci/finetune"), stage, "{again}");
    assert_eq!(objects_of_stage(&store, "finetune-run"), trained);
    assert_eq!(status_of(&again, "report"), "fresh", "{again}");
    assert_eq!(slot_artifact(&store, "ci/report"), report);

    // The report is a function of its inputs, manifests included.
    let forced = ok(small_ci(&store).args(["--force", "report"]));
    assert_eq!(status_of(&forced, "report"), "ran", "{forced}");
    assert_eq!(slot_artifact(&store, "ci/report"), report, "{forced}");
    ok(graft(&store).arg("verify"));
}
