//! Faults on the smallest pipeline with every stage (issue 12, item 10): kill -9 at random
//! moments, eight pipelines at once on one store, a flipped byte in each kind of stored file
//! (stages' artifacts and the entries stages publish for themselves), the probe rerun after a
//! version bump. A whole run takes seconds in a debug build; every command is bounded by
//! [`LIMIT`] and killed with its process group past it.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use graft_store::Store;
use graft_tables::{RunRow, Table};

use crate::common::*;

/// Stages of [`tiny_pipeline`], in order.
pub const STAGES: [&str; 7] = [
    "prep-source",
    "prep",
    "pretrain",
    "probe",
    "propose",
    "finetune",
    "report",
];

/// Every stage kind at the smallest size that still trains: a whole run is a few seconds.
pub fn tiny_pipeline(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        r#"
description = "the smallest pipeline with every stage"
[stages.prep-source]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 64, val = 16, test = 16 }
[stages.prep]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 16, seed = 1, train = 48, val = 16, test = 16 }
[stages.pretrain]
kind = "pretrain"
inputs = { dataset = "prep-source" }
params = { preset = "vit-cpu-tiny", epochs = 1, batch = 32 }
[stages.probe]
kind = "probe"
inputs = { dataset = "prep", base = "pretrain" }
params = { batch = 8, batches = 1, head_epochs = 1 }
[stages.propose]
kind = "propose"
inputs = { probe = "probe" }
params = { budgets = [1], heuristics = [{ name = "top-k", score = "rank" }] }
[stages.finetune]
kind = "finetune"
inputs = { dataset = "prep", base = "pretrain", proposals = "propose" }
params = { proposals = true, baselines = ["linear-probe"], seeds = [0], epochs = 1, batch = 16, jobs = 1 }
[stages.report]
kind = "report"
inputs = { probe-target = "probe", finetune-target = "finetune" }
"#,
    )
    .unwrap();
    path
}

/// The longest any one command of these tests may take; a whole run of the tiny pipeline
/// takes seconds, so only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(120);

/// Sends SIGKILL to a process group: the runner, its stage and the stage's workers.
fn kill_group(child: &Child) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// Starts `cmd` in a process group of its own, stdout and stderr captured.
fn spawn_group(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Waits for `child`; past [`LIMIT`] kills its group and fails the test.
fn wait_bounded(mut child: Child, what: &str) -> Output {
    let start = Instant::now();
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Output {
                status,
                stdout: out.join().unwrap(),
                stderr: err.join().unwrap(),
            };
        }
        if start.elapsed() > LIMIT {
            kill_group(&child);
            let _ = child.wait();
            panic!("{what} ran past {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` bounded by [`LIMIT`].
fn bounded(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    wait_bounded(spawn_group(cmd), &what)
}

/// Runs `cmd` bounded by [`LIMIT`] and asserts success, returning stdout.
fn bounded_ok(cmd: &mut Command) -> String {
    let o = bounded(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed\nstdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Every complete-looking artifact verifies (in a fresh process: no verification cache), and
/// every key record points at one that does.
pub fn assert_store_verifies(store: &Path) {
    let o = bounded(graft(store).arg("verify"));
    assert!(
        o.status.success(),
        "verify failed:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
    for e in std::fs::read_dir(store.join("keys")).unwrap().flatten() {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let id = v["artifact"].as_str().unwrap();
        assert!(
            store
                .join("objects")
                .join(id)
                .join("manifest.json")
                .exists(),
            "key {} points at {id}, which is not in the store",
            e.path().display()
        );
    }
}

/// The artifact id of every stage of the tiny pipeline, from its slots.
fn stage_ids(store: &Path, pipeline: &str) -> BTreeMap<String, String> {
    STAGES
        .iter()
        .map(|s| {
            (
                s.to_string(),
                slot_artifact(store, &format!("{pipeline}/{s}")),
            )
        })
        .collect()
}

/// The ids of the stages whose files hold no timings. A fine-tune run records its wall time,
/// images/s and peak memory, so a run trained again gives the fine-tune artifact (and the
/// report that shows them) another id; [`run_results`] compares those by their results.
fn reproducible_ids(store: &Path, pipeline: &str) -> BTreeMap<String, String> {
    let mut ids = stage_ids(store, pipeline);
    ids.remove("finetune");
    ids.remove("report");
    ids
}

/// What each fine-tune run achieved, without its timings.
fn run_results(store: &Path, pipeline: &str) -> Vec<String> {
    let id = slot_artifact(store, &format!("{pipeline}/finetune"));
    let rows = RunRow::read(&store.join("objects").join(id).join(RunRow::FILE)).unwrap();
    rows.iter()
        .map(|r| {
            format!(
                "{} {} {} {} {:?} {:?} {:?} {} {}",
                r.placement_id,
                r.method,
                r.seed,
                r.status,
                r.best_epoch,
                r.val_accuracy,
                r.test_accuracy,
                r.trainable_params,
                r.forward_flops
            )
        })
        .collect()
}

fn manifest(store: &Path, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(store.join("objects").join(id).join("manifest.json"))
        .unwrap_or_else(|e| panic!("manifest of {id}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The entries an artifact names in its manifest's `refs`.
fn refs(store: &Path, id: &str) -> Vec<String> {
    manifest(store, id)["refs"]
        .as_array()
        .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

/// A small deterministic generator, so the kill moments are random but reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

#[test]
fn twenty_kill_9_at_random_moments_of_a_pipeline_leave_a_store_that_verifies_and_reruns() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = tiny_pipeline(dir.path());
    let p = pipe.to_str().unwrap();

    // A clean run gives the reference ids and how long a run takes.
    let reference = dir.path().join("reference");
    let t0 = Instant::now();
    bounded_ok(graft(&reference).args(["run", p, "-S", "prep.seed=100"]));
    let span = t0.elapsed().as_millis() as u64;
    let expected = reproducible_ids(&reference, "tiny");
    let expected_runs = run_results(&reference, "tiny");

    let store = dir.path().join("store");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut landed = 0;
    for round in 0..20u64 {
        // Another target seed each round, so every round has all stages after prep to run.
        let seed = format!("prep.seed={}", 100 + round);
        let mut child = graft(&store)
            .args(["run", p, "-S", &seed])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.below(span)));
        let finished = child.try_wait().unwrap().is_some();
        kill_group(&child);
        child.wait().unwrap();
        landed += usize::from(!finished);
        assert_store_verifies(&store);
    }
    assert!(
        landed >= 10,
        "only {landed} of 20 kills landed during a run"
    );

    // The rerun succeeds, leaves no temporary directory, and gives the clean run's ids.
    bounded_ok(graft(&store).args(["run", p, "-S", "prep.seed=100"]));
    assert_store_verifies(&store);
    assert_eq!(
        std::fs::read_dir(store.join("tmp")).unwrap().count(),
        0,
        "temporary directories left behind"
    );
    assert_eq!(reproducible_ids(&store, "tiny"), expected);
    assert_eq!(run_results(&store, "tiny"), expected_runs);
}

#[test]
fn eight_concurrent_pipelines_on_one_store_all_succeed_with_identical_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = tiny_pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    let children: Vec<Child> = (0..8)
        .map(|_| spawn_group(graft(&store).args(["run", p])))
        .collect();
    let outs: Vec<String> = children
        .into_iter()
        .enumerate()
        .map(|(k, c)| {
            let o = wait_bounded(c, &format!("concurrent pipeline {k}"));
            assert!(o.status.success(), "{}\n{}", stdout(&o), stderr(&o));
            stdout(&o)
        })
        .collect();
    for stage in STAGES {
        let ids: Vec<String> = outs.iter().map(|o| short_id(o, stage)).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{stage}: {ids:?}");
        let ran = outs.iter().filter(|o| status_of(o, stage) == "ran").count();
        assert_eq!(ran, 1, "{stage} ran {ran} times:\n{outs:#?}");
    }
    // One probe head and one entry per fine-tune run: nobody trained one twice.
    let objects = std::fs::read_dir(store.join("objects")).unwrap().count();
    let finetune = slot_artifact(&store, "tiny/finetune");
    let probe = slot_artifact(&store, "tiny/probe");
    assert_eq!(
        objects,
        STAGES.len() + refs(&store, &finetune).len() + refs(&store, &probe).len()
    );
    assert_store_verifies(&store);
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
}

/// Flips one byte in the middle of `file`.
fn flip(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_flipped_byte_in_each_kind_of_stored_file_is_detected_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = tiny_pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    bounded_ok(graft(&store).args(["run", p]));
    let ids = stage_ids(&store, "tiny");
    let head = refs(&store, &ids["probe"]);
    assert_eq!(head.len(), 1, "the probe refers to its head entry");
    let run_entries = refs(&store, &ids["finetune"]);
    assert_eq!(run_entries.len(), 2, "two fine-tune runs");
    let results = run_results(&store, "tiny");
    let reproducible_ids_of = |ids: &BTreeMap<String, String>| {
        let mut ids = ids.clone();
        ids.remove("finetune");
        ids.remove("report");
        ids
    };

    // (what, artifact, file, stage to force so that it reads the entry, stage that reruns)
    let cases: [(&str, &str, &str, Option<&str>, &str); 6] = [
        ("Parquet", &ids["prep"], "train.parquet", None, "prep"),
        (
            "safetensors",
            &ids["pretrain"],
            "model.safetensors",
            None,
            "pretrain",
        ),
        (
            "JSON",
            &ids["prep-source"],
            "dataset.json",
            None,
            "prep-source",
        ),
        ("HTML", &ids["report"], "report.html", None, "report"),
        // Entries a stage publishes for itself: read when that stage runs.
        (
            "probe head (safetensors)",
            &head[0],
            "head.safetensors",
            Some("probe"),
            "probe",
        ),
        (
            "fine-tune run (JSON)",
            &run_entries[0],
            "run.json",
            Some("finetune"),
            "finetune",
        ),
    ];
    for (what, id, file, force, reruns) in cases {
        let path = store.join("objects").join(id).join(file);
        flip(&path);
        let o = bounded(graft(&store).arg("verify"));
        assert!(!o.status.success(), "{what}: verify missed it");
        assert!(
            stdout(&o).contains(file) && stdout(&o).contains("1 corrupt"),
            "{what}: {}",
            stdout(&o)
        );

        let mut cmd = graft(&store);
        cmd.args(["run", p]);
        if let Some(stage) = force {
            cmd.args(["--force", stage]);
        }
        let o = bounded(&mut cmd);
        let (out, err) = (stdout(&o), stderr(&o));
        assert!(o.status.success(), "{what}:\n{out}\n{err}");
        // Warned, naming the file; moved aside; rebuilt with the same id.
        assert!(
            err.contains("warning: artifact")
                && err.contains("is corrupt")
                && err.contains(&path.display().to_string())
                && err.contains("moved to"),
            "{what}: {err}"
        );
        assert_eq!(status_of(&out, reruns), "ran", "{what}: {out}");
        if force.is_none() {
            assert!(out.contains("output corrupt"), "{what}: {out}");
        }
        let moved = std::fs::read_dir(store.join("corrupt"))
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(id));
        assert!(moved, "{what}: {id} not in corrupt/");
        if reruns == "finetune" {
            // The retrained run has new timings, so the fine-tune artifact a new id; its
            // results are the same.
            assert_eq!(
                reproducible_ids(&store, "tiny"),
                reproducible_ids_of(&ids),
                "{what}"
            );
            assert_eq!(run_results(&store, "tiny"), results, "{what}");
        } else {
            assert_eq!(stage_ids(&store, "tiny"), ids, "{what}: ids changed");
        }
        if reruns != "finetune" {
            assert!(
                store.join("objects").join(id).join(file).exists(),
                "{what}: not rebuilt"
            );
        }
        assert_store_verifies(&store);
    }
    // Every moved entry is still there for inspection, until gc.
    assert_eq!(
        std::fs::read_dir(store.join("corrupt")).unwrap().count(),
        cases.len()
    );
    let store = Store::open(&store).unwrap();
    for id in store.objects().unwrap() {
        store.verify(&id).unwrap();
    }
}

#[test]
fn probe_rerun_after_a_version_bump_keeps_its_id_and_propose_stays_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = tiny_pipeline(dir.path());
    let p = pipe.to_str().unwrap();
    bounded_ok(graft(&store).args(["run", p]));
    let probe = slot_artifact(&store, "tiny/probe");
    // Timings are in the manifest, not in the files.
    let obj = store.join("objects").join(&probe);
    assert!(!obj.join("cost.json").exists());
    let m = manifest(&store, &probe);
    assert!(
        m["extra"]["forward_backward_seconds"].as_f64().unwrap() > 0.0,
        "{m}"
    );
    assert!(
        m["extra"]["train_step_seconds"].as_f64().unwrap() > 0.0,
        "{m}"
    );

    // The store as a build with the probe one version older left it: the slot says the
    // older version, and the current version's key has no record yet.
    let slot_file = store.join("slots").join("tiny--probe.json");
    let mut slot: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&slot_file).unwrap()).unwrap();
    let version = slot["stage_version"].as_u64().unwrap();
    assert!(
        version >= 2,
        "the probe's version was bumped when cost.json left"
    );
    slot["stage_version"] = (version - 1).into();
    std::fs::write(&slot_file, serde_json::to_string(&slot).unwrap()).unwrap();
    let key = slot["key"].as_str().unwrap();
    std::fs::remove_file(store.join("keys").join(format!("{key}.json"))).unwrap();

    let out = bounded_ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&out, "probe"), "ran", "{out}");
    assert!(
        out.contains(&format!("stage version {} -> {version}", version - 1)),
        "{out}"
    );
    assert_eq!(slot_artifact(&store, "tiny/probe"), probe, "{out}");
    for stage in ["propose", "finetune", "report"] {
        assert_eq!(status_of(&out, stage), "fresh", "{stage}: {out}");
    }
    // And a forced rerun: new timings in the manifest, the same files.
    let out = bounded_ok(graft(&store).args(["run", p, "--force", "probe"]));
    assert_eq!(status_of(&out, "probe"), "ran", "{out}");
    assert_eq!(status_of(&out, "propose"), "fresh", "{out}");
    assert_eq!(slot_artifact(&store, "tiny/probe"), probe);
}
