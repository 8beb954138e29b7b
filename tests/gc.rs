//! `graft gc` (issue 12, item 3): it keeps the last run of every pipeline with slots in the
//! store wherever its file lives, forgets one only by name, lists exactly what `--yes`
//! deletes, and deletes nothing when it cannot tell what to keep.

use std::collections::BTreeSet;
use std::path::Path;

use crate::common::*;

/// The artifact lines of a gc run, with the verb taken off: what was (or would be) removed.
fn listed(out: &str) -> BTreeSet<String> {
    out.lines()
        .filter_map(|l| {
            l.strip_prefix("would remove ")
                .or_else(|| l.strip_prefix("removed "))
                .or_else(|| l.strip_prefix("would forget "))
                .or_else(|| l.strip_prefix("forgot "))
        })
        .map(str::to_owned)
        .collect()
}

fn objects(store: &Path) -> BTreeSet<String> {
    std::fs::read_dir(store.join("objects"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn gc(store: &Path, pipes: &Path, extra: &[&str]) -> std::process::Output {
    run(graft(store)
        .args(["gc", "--pipelines", pipes.to_str().unwrap()])
        .args(extra))
}

#[test]
fn gc_keeps_a_pipeline_run_from_outside_the_pipelines_directory_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipes = dir.path().join("pipelines");
    let elsewhere = dir.path().join("exp");
    std::fs::create_dir_all(&pipes).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let known = small_pipeline(&pipes, "small");
    let mine = small_pipeline(&elsewhere, "mine");
    ok(graft(&store).args(["run", known.to_str().unwrap()]));
    // Another seed for the outside pipeline, so its artifacts are its own.
    ok(graft(&store).args([
        "run",
        mine.to_str().unwrap(),
        "-S",
        "src.seed=7",
        "-S",
        "tgt.seed=8",
    ]));
    let all = objects(&store);
    assert_eq!(all.len(), 4);

    let o = gc(&store, &pipes, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(listed(&out).is_empty(), "{out}");
    assert!(out.contains("kept pipeline mine"), "{out}");
    let o = gc(&store, &pipes, &["--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(objects(&store), all, "{}", stdout(&o));
    let again = ok(graft(&store).args([
        "run",
        mine.to_str().unwrap(),
        "-S",
        "src.seed=7",
        "-S",
        "tgt.seed=8",
    ]));
    assert_eq!(status_of(&again, "src"), "fresh", "{again}");
    assert_eq!(status_of(&again, "tgt"), "fresh", "{again}");

    // Forgotten by name: the dry run lists its slots and artifacts, with their pipeline.
    let mine_ids = [
        slot_artifact(&store, "mine/src"),
        slot_artifact(&store, "mine/tgt"),
    ];
    let o = gc(&store, &pipes, &["--forget", "mine"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dry = stdout(&o);
    for (id, slot) in mine_ids.iter().zip(["mine/src", "mine/tgt"]) {
        let line = dry
            .lines()
            .find(|l| l.contains(id.as_str()))
            .unwrap_or_else(|| panic!("{id} not listed:\n{dry}"));
        assert!(
            line.starts_with("would remove") && line.ends_with(&format!("last in {slot}")),
            "{line}"
        );
        assert!(
            line.contains(" B ") || line.contains("KiB") || line.contains("MiB"),
            "{line}"
        );
    }
    assert!(dry.contains("would forget slot mine/src"), "{dry}");
    assert_eq!(objects(&store), all, "the dry run deleted something");

    let o = gc(&store, &pipes, &["--forget", "mine", "--yes"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        listed(&stdout(&o)),
        listed(&dry),
        "--yes did other than the dry run said"
    );
    let left: BTreeSet<String> = all
        .iter()
        .filter(|id| !mine_ids.contains(id))
        .cloned()
        .collect();
    assert_eq!(objects(&store), left);
    assert!(!store.join("slots").join("mine--src.json").exists());
    ok(graft(&store).arg("verify"));

    // A name with no slot is an error naming it, and deletes nothing.
    let o = gc(&store, &pipes, &["--forget", "nosuch", "--yes"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
    assert_eq!(objects(&store), left);
}

#[test]
fn gc_dry_run_lists_exactly_what_yes_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes).unwrap();
    let pipe = small_pipeline(&pipes, "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p, "-S", "tgt.seed=9"]));
    let old = slot_artifact(&store, "small/tgt");
    ok(graft(&store).args(["run", p]));
    // A corrupt entry moved aside.
    let src = slot_artifact(&store, "small/src");
    let file = store.join("objects").join(&src).join("dataset.json");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace("uint8", "uint9")).unwrap();
    ok(graft(&store).args(["run", p]));
    assert_eq!(std::fs::read_dir(store.join("corrupt")).unwrap().count(), 1);

    let dry = stdout(&gc(&store, &pipes, &[]));
    let lines = listed(&dry);
    // The old target, its key record and the corrupt entry.
    assert_eq!(lines.len(), 3, "{dry}");
    assert!(
        lines.iter().any(|l| l.starts_with("key record keys/")),
        "{dry}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&old) && l.ends_with("last in small/tgt")),
        "{dry}"
    );
    assert!(lines.iter().any(|l| l.starts_with("corrupt/")), "{dry}");
    let before = objects(&store);
    let yes = gc(&store, &pipes, &["--yes"]);
    assert!(yes.status.success(), "{}", stderr(&yes));
    assert_eq!(listed(&stdout(&yes)), lines, "{}", stdout(&yes));
    let mut expect = before.clone();
    expect.remove(&old);
    assert_eq!(objects(&store), expect);
    assert_eq!(std::fs::read_dir(store.join("corrupt")).unwrap().count(), 0);
    let after = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&after, "tgt"), "fresh", "{after}");
    ok(graft(&store).arg("verify"));
}

#[test]
fn gc_deletes_nothing_when_it_cannot_tell_what_to_keep() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes).unwrap();
    let pipe = small_pipeline(&pipes, "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p, "-S", "tgt.seed=9"]));
    ok(graft(&store).args(["run", p]));
    let before = snapshot(&store);
    let refuses = |pipes: &Path, cause: &str| {
        let o = gc(&store, pipes, &["--yes"]);
        assert!(!o.status.success(), "{cause}: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("gc deletes nothing") && err.contains(cause),
            "{cause}: {err}"
        );
        assert_eq!(snapshot(&store), before, "{cause}: the store changed");
    };

    // The pipelines directory cannot be read (here: it is a file).
    let not_a_dir = dir.path().join("pipelines.txt");
    std::fs::write(&not_a_dir, "").unwrap();
    refuses(&not_a_dir, "pipelines.txt");

    // A pipeline file that does not parse.
    let broken = pipes.join("broken.toml");
    std::fs::write(&broken, "[stages.a\n").unwrap();
    refuses(&pipes, "broken.toml");
    std::fs::remove_file(&broken).unwrap();

    // A slot record that cannot be read.
    let slot = store.join("slots").join("small--tgt.json");
    let slot_text = std::fs::read(&slot).unwrap();
    std::fs::write(&slot, "{").unwrap();
    let before_slot = snapshot(&store);
    let o = gc(&store, &pipes, &["--yes"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("small--tgt.json"), "{}", stderr(&o));
    assert_eq!(snapshot(&store), before_slot);
    std::fs::write(&slot, slot_text).unwrap();

    // A manifest that a kept artifact's slot reaches, and that cannot be read.
    let id = slot_artifact(&store, "small/src");
    let manifest = store.join("objects").join(&id).join("manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not json").unwrap();
    let before_manifest = snapshot(&store);
    let o = gc(&store, &pipes, &["--yes"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("gc deletes nothing") && err.contains(&id) && err.contains("manifest.json"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before_manifest);
    std::fs::write(&manifest, text).unwrap();

    // With every cause gone, it deletes the one unreachable artifact.
    let out = stdout(&gc(&store, &pipes, &["--yes"]));
    let artifacts = listed(&out)
        .into_iter()
        .filter(|l| !l.starts_with("key record"))
        .count();
    assert_eq!(artifacts, 1, "{out}");
}
