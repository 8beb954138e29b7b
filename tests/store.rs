use std::process::Stdio;
use std::time::Duration;

use graft_store::{ArtifactId, Store};

use crate::common::*;

/// Every complete-looking artifact verifies, and every key record points at one.
fn assert_consistent(store_path: &std::path::Path) {
    let store = Store::open(store_path).unwrap();
    for id in store.objects().unwrap() {
        store.verify(&id).unwrap_or_else(|e| panic!("{id}: {e:?}"));
    }
    for e in std::fs::read_dir(store_path.join("keys"))
        .unwrap()
        .flatten()
    {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        let id = ArtifactId::parse(v["artifact"].as_str().unwrap()).unwrap();
        store
            .verify(&id)
            .unwrap_or_else(|e| panic!("key {:?} -> {id}: {e:?}", e));
    }
}

#[test]
fn kill_9_at_any_moment_leaves_nothing_that_looks_complete() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let args = [
        "-p",
        "source=procedural",
        "-p",
        "task=source",
        "-p",
        "image_size=48",
        "-p",
        "train=3000",
        "-p",
        "val=10",
        "-p",
        "test=10",
    ];
    let mut saw_partial = false;
    for delay_ms in [5u64, 30, 80, 150, 250, 400, 600, 900] {
        let mut child = prep(&store)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if finished {
            break;
        }
        let tmp_entries = std::fs::read_dir(store.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        saw_partial |= tmp_entries > 0;
        assert_consistent(&store);
    }
    assert!(
        saw_partial,
        "no kill landed while the stage was writing; raise the data size"
    );
    // The next open cleans the leftovers of the killed writers.
    Store::open(&store).unwrap();
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
    // And the stage completes afterwards.
    ok(prep(&store).args(args));
    assert_consistent(&store);
}

#[test]
fn a_flipped_byte_is_detected_reported_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = small_pipeline(dir.path(), "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p]));
    let id = slot_artifact(&store, "small/tgt");
    let file = store.join("objects").join(&id).join("train.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let o = run(graft(&store).arg("verify"));
    assert!(!o.status.success());
    assert!(
        stdout(&o).contains("train.parquet") && stdout(&o).contains("1 corrupt"),
        "{}",
        stdout(&o)
    );

    let o = run(graft(&store).args(["run", p]));
    assert!(o.status.success(), "{}", stderr(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        err.contains("corrupt") && err.contains("train.parquet"),
        "{err}"
    );
    assert_eq!(status_of(&out, "tgt"), "ran", "{out}");
    assert!(out.contains("output corrupt"), "{out}");
    assert_eq!(status_of(&out, "src"), "fresh", "{out}");
    assert_eq!(
        slot_artifact(&store, "small/tgt"),
        id,
        "rebuilt with the same id"
    );
    ok(graft(&store).arg("verify"));
}

#[test]
fn a_stage_reading_a_corrupt_input_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("store");
    tiny_prep(&store_path);
    let id = ArtifactId::parse(&slot_artifact(&store_path, "prep")).unwrap();
    let store = Store::open(&store_path).unwrap();
    let file = store.object_dir(&id).join("dataset.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("uint8", "uint9")).unwrap();
    // A fresh process (no verification cache) reading the artifact.
    let e = Store::open(&store_path)
        .unwrap()
        .artifact(&id)
        .unwrap_err()
        .to_string();
    assert!(e.contains("dataset.json") && e.contains("corrupt"), "{e}");
}
