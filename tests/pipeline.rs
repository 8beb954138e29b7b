use crate::common::*;

#[test]
fn rerun_is_fresh_and_one_changed_param_reruns_only_that_stage() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = small_pipeline(dir.path(), "small");
    let p = pipe.to_str().unwrap();

    let first = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&first, "src"), "ran", "{first}");
    assert!(first.contains("no previous run"), "{first}");

    let status = ok(graft(&store).args(["status", p]));
    assert_eq!(status_of(&status, "src"), "fresh", "{status}");
    assert_eq!(status_of(&status, "tgt"), "fresh", "{status}");

    let second = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&second, "src"), "fresh", "{second}");
    assert_eq!(status_of(&second, "tgt"), "fresh", "{second}");
    assert_eq!(short_id(&first, "tgt"), short_id(&second, "tgt"));

    // status says why without running; run then does exactly that.
    let before = snapshot(&store);
    let status = ok(graft(&store).args(["status", p, "-S", "tgt.image_size=24"]));
    assert_eq!(status_of(&status, "tgt"), "stale", "{status}");
    assert!(
        status.contains("params.image_size changed 16 -> 24"),
        "{status}"
    );
    assert_eq!(snapshot(&store), before, "status wrote to the store");

    let third = ok(graft(&store).args(["run", p, "-S", "tgt.image_size=24"]));
    assert_eq!(status_of(&third, "src"), "fresh", "{third}");
    assert_eq!(status_of(&third, "tgt"), "ran", "{third}");
    assert!(
        third.contains("params.image_size changed 16 -> 24"),
        "{third}"
    );

    // Back to the file's value: the earlier artifact is still in the store.
    let fourth = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&fourth, "tgt"), "fresh", "{fourth}");
    assert_eq!(short_id(&fourth, "tgt"), short_id(&first, "tgt"));

    // Writing a default explicitly changes nothing.
    let fifth = ok(graft(&store).args(["run", p, "-S", "tgt.interpolation=bilinear"]));
    assert_eq!(status_of(&fifth, "tgt"), "fresh", "{fifth}");
}

#[test]
fn forced_rerun_reproduces_the_same_id() {
    // Early cutoff rests on this: a rerun with the same output keeps the same id, so every
    // stage keyed on that id stays fresh.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = small_pipeline(dir.path(), "small");
    let p = pipe.to_str().unwrap();
    let first = ok(graft(&store).args(["run", p]));
    let forced = ok(graft(&store).args(["run", p, "--force", "tgt"]));
    assert_eq!(status_of(&forced, "tgt"), "ran", "{forced}");
    assert!(forced.contains("forced"), "{forced}");
    assert_eq!(short_id(&forced, "tgt"), short_id(&first, "tgt"));
}

#[test]
fn same_seed_gives_byte_identical_tables_in_two_stores() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let args = [
        "-p",
        "source=procedural",
        "-p",
        "task=textures",
        "-p",
        "image_size=16",
        "-p",
        "train=40",
        "-p",
        "val=8",
        "-p",
        "test=8",
    ];
    ok(prep(&a).args(args));
    ok(prep(&b).args(args).env("RAYON_NUM_THREADS", "1"));
    let ida = slot_artifact(&a, "prep");
    assert_eq!(ida, slot_artifact(&b, "prep"));
    for f in [
        "train.parquet",
        "val.parquet",
        "test.parquet",
        "dataset.json",
    ] {
        let fa = std::fs::read(a.join("objects").join(&ida).join(f)).unwrap();
        let fb = std::fs::read(b.join("objects").join(&ida).join(f)).unwrap();
        assert_eq!(fa, fb, "{f}");
    }
    ok(prep(&b).args(args).args(["-p", "seed=5"]));
    assert_ne!(
        ida,
        slot_artifact(&b, "prep"),
        "another seed gives other images"
    );
}

#[test]
fn concurrent_runs_on_one_store_agree() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = small_pipeline(dir.path(), "small");
    let p = pipe.to_str().unwrap();
    let children: Vec<_> = (0..3)
        .map(|_| {
            graft(&store)
                .args(["run", p])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            stdout(&o)
        })
        .collect();
    for stage in ["src", "tgt"] {
        let ids: Vec<String> = outs.iter().map(|o| short_id(o, stage)).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{stage}: {ids:?}");
        // The key lock makes one run build it and the others find it.
        let ran = outs.iter().filter(|o| status_of(o, stage) == "ran").count();
        assert_eq!(ran, 1, "{stage} ran {ran} times:\n{outs:#?}");
    }
    ok(graft(&store).arg("verify"));
    assert_eq!(std::fs::read_dir(store.join("tmp")).unwrap().count(), 0);
}

#[test]
fn gc_removes_only_what_no_pipeline_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes).unwrap();
    let pipe = small_pipeline(&pipes, "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p]));
    ok(graft(&store).args(["run", p, "-S", "tgt.seed=9"]));
    let objects = || std::fs::read_dir(store.join("objects")).unwrap().count();
    assert_eq!(objects(), 3);
    let dry = ok(graft(&store).args(["gc", "--pipelines", pipes.to_str().unwrap()]));
    assert!(dry.contains("1 unreachable"), "{dry}");
    assert_eq!(objects(), 3, "dry run deletes nothing");
    ok(graft(&store).args(["gc", "--yes", "--pipelines", pipes.to_str().unwrap()]));
    assert_eq!(objects(), 2);
    let after = ok(graft(&store).args(["run", p, "-S", "tgt.seed=9"]));
    assert_eq!(status_of(&after, "tgt"), "fresh", "{after}");
    ok(graft(&store).arg("verify"));
}

#[test]
fn bad_pipeline_inputs_are_clear_errors_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = small_pipeline(dir.path(), "small");
    let p = pipe.to_str().unwrap();
    ok(graft(&store).args(["run", p]));
    let before = snapshot(&store);

    let bad_toml = dir.path().join("broken.toml");
    std::fs::write(&bad_toml, "[stages.a\nkind = 'prep'\n").unwrap();
    let o = run(graft(&store).args(["run", bad_toml.to_str().unwrap()]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("broken.toml"), "{}", stderr(&o));

    // An unknown parameter in the second stage: the first stage must not run either.
    let o = run(graft(&store).args(["run", p, "-S", "src.seed=4", "-S", "tgt.imag_size=3"]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("imag_size") && err.contains("unknown field"),
        "{err}"
    );

    let o = run(graft(&store).args(["run", p, "-S", "tgt.image_size=0"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("image_size"), "{}", stderr(&o));

    let o = run(graft(&store).args(["run", p, "-S", "nostage.seed=1"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nostage"), "{}", stderr(&o));

    let o = run(prep(&store).args(["-p", "source=procedural", "-p", "task=nonsense"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nonsense"), "{}", stderr(&o));

    assert_eq!(snapshot(&store), before);
}

#[test]
fn default_pipeline_is_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let out = ok(graft(&store).current_dir(dir.path()).args(["status"]));
    assert!(
        out.contains("pipeline default (embedded default pipeline)"),
        "{out}"
    );
    for stage in ["prep-source", "prep@textures", "prep@colours", "report"] {
        assert_eq!(status_of(&out, stage), "stale", "{out}");
    }
    assert!(out.contains("no previous run"), "{out}");
}

#[test]
fn pretrain_stage_trains_once_and_publishes_a_timm_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let path = dir.path().join("pre.toml");
    std::fs::write(
        &path,
        r#"
[stages.src]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 96, val = 32, test = 32 }
[stages.pretrain]
kind = "pretrain"
inputs = { dataset = "src" }
params = { preset = "vit-cpu-tiny", epochs = 2, batch = 32, lr = 0.002 }
"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let first = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&first, "pretrain"), "ran", "{first}");
    let id = slot_artifact(&store, "pre/pretrain");
    let obj = store.join("objects").join(&id);
    for f in ["model.safetensors", "history.parquet", "summary.json"] {
        assert!(obj.join(f).exists(), "{f} missing");
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(obj.join("summary.json")).unwrap()).unwrap();
    let acc = summary["test_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{summary}");
    let (history, _) = graft_store::table::read_parquet(&obj.join("history.parquet")).unwrap();
    assert_eq!(history.iter().map(|b| b.num_rows()).sum::<usize>(), 2);

    let second = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&second, "pretrain"), "fresh", "{second}");
    // Retraining with the same seed reproduces the artifact: no clock time in its files.
    let forced = ok(graft(&store).args(["run", p, "--force", "pretrain"]));
    assert_eq!(status_of(&forced, "pretrain"), "ran", "{forced}");
    assert_eq!(short_id(&forced, "pretrain"), short_id(&first, "pretrain"));
    // Where it runs is not part of the key.
    let third = ok(graft(&store).args(["run", p, "-S", "pretrain.device=cpu"]));
    assert_eq!(status_of(&third, "pretrain"), "fresh", "{third}");

    // A preset whose image size does not match the data set: a clear error, nothing published.
    let before = snapshot(&store);
    let o = run(graft(&store).args(["run", p, "-S", "pretrain.preset=vit-cpu-small"]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("takes 32 px images") && stderr(&o).contains("has 16 px"),
        "{}",
        stderr(&o)
    );
    assert_eq!(snapshot(&store), before);
    let o = run(graft(&store).args(["run", p, "-S", "pretrain.preset=vit-huge"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("vit-huge"), "{}", stderr(&o));
}

/// Issue 9: a backbone below `min_test_accuracy` fails the pretrain stage with the accuracy,
/// the epochs and a hint, and publishes nothing; a bar it reaches publishes the same
/// artifact as no bar (the parameter is not in the files); a bar outside [0, 1] is refused
/// at `--check`, before anything runs.
#[test]
fn issue9_pretrain_refuses_a_backbone_below_min_test_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let path = dir.path().join("bar.toml");
    std::fs::write(
        &path,
        r#"
[stages.src]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 48, val = 16, test = 32 }
[stages.pretrain]
kind = "pretrain"
inputs = { dataset = "src" }
params = { preset = "vit-cpu-tiny", epochs = 1, batch = 16, lr = 0.002, min_test_accuracy = 0.99 }
"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    // Only the data set: what the failing run must leave as it is.
    ok(graft(&store).args(["run", p, "-S", "pretrain.min_test_accuracy=0.0"]));
    let reached: serde_json::Value = {
        let obj = store
            .join("objects")
            .join(slot_artifact(&store, "bar/pretrain"));
        serde_json::from_slice(&std::fs::read(obj.join("summary.json")).unwrap()).unwrap()
    };
    let acc = reached["test_accuracy"].as_f64().unwrap();
    assert!(acc < 0.99, "a 1-epoch tiny backbone reached {acc}");
    let first = slot_artifact(&store, "bar/pretrain");

    let before = snapshot(&store);
    let o = run(graft(&store).args(["run", p]));
    assert!(!o.status.success());
    let err = stderr(&o);
    let want = format!(
        "test accuracy {:.1} % is below min_test_accuracy = 0.99 after 1 epoch (best val",
        100.0 * acc
    );
    assert!(err.contains(&want), "{err}");
    assert!(
        err.contains("train longer (epochs), on more data") && err.contains("different lr"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        snapshot(&store),
        before,
        "a failed pretrain changed the store"
    );

    // A bar the run reaches: it publishes, and the weights and files are those of the run
    // without a bar, so the artifact id is the same.
    let bar = format!(
        "pretrain.min_test_accuracy={}",
        (acc * 1000.0).floor() / 1000.0
    );
    let out = ok(graft(&store).args(["run", p, "-S", &bar]));
    assert_eq!(status_of(&out, "pretrain"), "ran", "{out}");
    assert_eq!(slot_artifact(&store, "bar/pretrain"), first);

    // Outside [0, 1]: refused at --check, naming the field, before anything runs.
    let before = snapshot(&store);
    let o = run(graft(&store).args(["run", p, "-S", "pretrain.min_test_accuracy=85"]));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("min_test_accuracy = 85 must be in [0, 1]"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before);
}

/// The embedded default's stages, shrunk to seconds: `names` are the file's names of its
/// prep, probe, propose and fine-tune stages (`prep-textures` and `prep-colours` by hand,
/// `prep` for the matrix stage and both its expansions).
fn tiny_default_sets(names: [Vec<String>; 4]) -> Vec<String> {
    let [prep, probe, propose, finetune] = names;
    let mut sets: Vec<String> = [
        "prep-source.image_size=16",
        "prep-source.train=64",
        "prep-source.val=16",
        "prep-source.test=16",
        "pretrain.preset=\"vit-cpu-tiny\"",
        "pretrain.epochs=1",
        "pretrain.min_test_accuracy=0.0",
    ]
    .map(String::from)
    .to_vec();
    let each = |stages: &[String], params: &[&str]| -> Vec<String> {
        stages
            .iter()
            .flat_map(|s| params.iter().map(move |p| format!("{s}.{p}")))
            .collect()
    };
    sets.extend(each(
        &prep,
        &["image_size=16", "train=24", "val=8", "test=8"],
    ));
    sets.extend(each(&probe, &["batch=8", "batches=1", "head_epochs=1"]));
    sets.extend(each(
        &propose,
        &[
            "budgets=[1]",
            "heuristics=[{ name = \"gga\", score = \"rank\" }, { name = \"single-sweep\", kinds = [\"parallel\"] }]",
        ],
    ));
    sets.extend(each(
        &finetune,
        &[
            "baselines=[\"linear-probe\"]",
            "seeds=[0]",
            "sweep_seeds=[0]",
            "sweep_repeats=0",
            "epochs=1",
            "batch=8",
        ],
    ));
    crate::dtd::overrides(&sets)
}

/// A store the hand-written default (one chain per target, `prep-textures`, ...) filled is
/// fresh for the matrix default (`prep@textures`, ...): keys hold stage kinds and input
/// names, never the names in the file.
#[test]
fn the_matrix_default_is_fresh_on_a_store_the_hand_written_default_filled() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let by_hand = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/graft-runner/testdata/default-by-hand.toml"
    );
    let per_target = |stage: &str| vec![format!("{stage}-textures"), format!("{stage}-colours")];
    let sets = tiny_default_sets(["prep", "probe", "propose", "finetune"].map(per_target));
    let first = ok(graft(&store).args(["run", by_hand]).args(&sets));
    assert_eq!(status_of(&first, "finetune-colours"), "ran", "{first}");
    let sets =
        tiny_default_sets(["prep", "probe", "propose", "finetune"].map(|s| vec![s.to_owned()]));
    let out = ok(graft(&store)
        .current_dir(dir.path())
        .arg("status")
        .args(&sets));
    for stage in ["prep-source", "pretrain", "report"] {
        assert_eq!(status_of(&out, stage), "fresh", "{out}");
    }
    for t in ["textures", "colours"] {
        for stage in ["prep", "probe", "propose", "finetune"] {
            assert_eq!(status_of(&out, &format!("{stage}@{t}")), "fresh", "{out}");
        }
    }
}
