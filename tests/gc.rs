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

/// Waits for `child` up to `limit`; kills it and fails the test past that, with `what` it was
/// and the output it left in `log`.
fn wait_bounded(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    what: &str,
    log: &Path,
) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {limit:?}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Starts `cmd` with stdout and stderr going to `<log>` (a file: a pipe nobody reads would
/// block it).
fn spawn_logged(cmd: &mut std::process::Command, log: &Path) -> std::process::Child {
    let out = std::fs::File::create(log).unwrap();
    cmd.stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap()
}

/// Issue 27, item 5: `graft gc --yes` started while a pipeline's fine-tune stage is between
/// runs (one run published, the stage's artifact not yet) deletes nothing that run needs: the
/// running pipeline holds the store, `gc --no-wait` refuses naming it, `gc --yes` waits for it
/// and then deletes only what no pipeline reaches. The pipeline finishes, verifies, and a
/// rerun finds every stage fresh.
#[test]
fn gc_started_during_a_run_waits_for_it_and_deletes_nothing_it_needs() {
    use crate::finetune::{objects_of_stage, small_ci};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes).unwrap();
    // Something for gc to delete: a replaced target of another pipeline.
    let pipe = small_pipeline(&pipes, "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p, "-S", "tgt.seed=9"]));
    let garbage = slot_artifact(&store, "small/tgt");
    ok(graft(&store).args(["run", p]));

    // The cut-down CI pipeline, its fine-tune stage long enough (some forty runs of three
    // epochs, a few seconds) for gc to start while it is between runs.
    let busy_ci = || {
        let mut c = small_ci(&store);
        for set in [
            "prep.train=128",
            "finetune.epochs=3",
            "finetune.seeds=[0, 1]",
        ] {
            c.args(["-S", set]);
        }
        c
    };
    let run_log = dir.path().join("run.log");
    let mut pipeline = spawn_logged(&mut busy_ci(), &run_log);
    let start = Instant::now();
    while objects_of_stage(&store, "finetune-run").is_empty() {
        if let Some(status) = pipeline.try_wait().unwrap() {
            panic!(
                "the pipeline ended ({status}) before its first fine-tune run:\n{}",
                std::fs::read_to_string(&run_log).unwrap()
            );
        }
        if start.elapsed() > Duration::from_secs(900) {
            let _ = pipeline.kill();
            panic!("no fine-tune run after 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let first_run = objects_of_stage(&store, "finetune-run");
    assert!(
        pipeline.try_wait().unwrap().is_none(),
        "the fine-tune stage finished before gc could start: nothing was tested"
    );

    // Without waiting, gc names the pipeline that holds the store and deletes nothing.
    let o = gc(&store, &pipes, &["--yes", "--no-wait"]);
    let err = stderr(&o);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(
        err.contains("gc deletes nothing")
            && err.contains(&format!("pipeline ci (pid {})", pipeline.id())),
        "{err}"
    );
    assert!(store.join("objects").join(&garbage).exists());

    // With --yes it waits for the pipeline.
    let gc_log = dir.path().join("gc.log");
    let mut collector = spawn_logged(
        graft(&store).args(["gc", "--yes", "--pipelines", pipes.to_str().unwrap()]),
        &gc_log,
    );
    let status = wait_bounded(
        &mut pipeline,
        Duration::from_secs(900),
        "the pipeline",
        &run_log,
    );
    let run_out = std::fs::read_to_string(&run_log).unwrap();
    assert!(status.success(), "{run_out}");
    let status = wait_bounded(&mut collector, Duration::from_secs(120), "gc", &gc_log);
    let gc_out = std::fs::read_to_string(&gc_log).unwrap();
    assert!(status.success(), "{gc_out}");
    assert!(
        gc_out.contains("gc: waiting for pipeline ci (pid "),
        "gc did not wait for the pipeline:\n{gc_out}"
    );
    assert!(
        gc_out.contains(&format!("removed {garbage}")),
        "gc removed nothing:\n{gc_out}"
    );

    // Nothing the run needs is gone: every run it published is in the store and referred to
    // by its fine-tune artifact, everything verifies, and a rerun is fresh throughout.
    let runs = objects_of_stage(&store, "finetune-run");
    assert!(runs.is_superset(&first_run));
    let stage = slot_artifact(&store, "ci/finetune");
    let manifest =
        std::fs::read_to_string(store.join("objects").join(&stage).join("manifest.json")).unwrap();
    for id in &runs {
        assert!(
            manifest.contains(id.as_str()),
            "run {id} is not referred to"
        );
    }
    ok(graft(&store).arg("verify"));
    let again = ok(&mut busy_ci());
    for line in again.lines().filter(|l| l.contains(" -> ")) {
        assert!(line.contains("fresh"), "{again}");
    }
}
