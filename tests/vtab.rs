//! VTAB-1k in the PETL code bases' format (`<root>/<task>/{train800,val200,train800val200,
//! test}.txt`) on miniature task folders written by the test: the reader, its errors, and
//! `pipelines/vtab.toml` end to end with a tiny checkpoint on the CPU.

use std::path::{Path, PathBuf};

use arrow::array::{Array, Int32Array, StringArray};

use crate::common::*;
use crate::dtd::{overrides, run_protocols, tiny_checkpoint, tiny_model_sets};

/// `<root>/<task>/images/<k>_<i>.png` for `classes` classes, 3 train, 1 val and 2 test
/// images per class, the four list files (train800val200 = train800 then val200) and, with
/// `names`, a `classes.txt`.
fn mini_vtab(root: &Path, task: &str, classes: usize, names: bool) -> PathBuf {
    let dir = root.join(task);
    std::fs::create_dir_all(dir.join("images")).unwrap();
    let mut lists: [Vec<String>; 3] = Default::default();
    // Each task's images differ from another's with as many classes.
    let salt = task
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    for k in 0..classes {
        for i in 0..6u32 {
            let img = image::RgbImage::from_fn(12 + i, 10, |x, y| {
                let red = (x * 20 + salt) % 256;
                image::Rgb([red as u8, (y * 25) as u8, (k * 90) as u8])
            });
            let rel = format!("images/{k}_{i}.png");
            img.save(dir.join(&rel)).unwrap();
            let list = match i {
                0..3 => 0,
                3 => 1,
                _ => 2,
            };
            lists[list].push(format!("{rel} {k}"));
        }
    }
    let write = |name: &str, lines: &[String]| {
        std::fs::write(dir.join(name), lines.join("\n") + "\n").unwrap();
    };
    write("train800.txt", &lists[0]);
    write("val200.txt", &lists[1]);
    write(
        "train800val200.txt",
        &[lists[0].clone(), lists[1].clone()].concat(),
    );
    write("test.txt", &lists[2]);
    if names {
        let names: Vec<String> = (0..classes).map(|k| format!("kind{k}")).collect();
        write("classes.txt", &names);
    }
    dir
}

fn vtab_args(root: &Path, task: &str) -> Vec<String> {
    [
        "source=vtab-1k".to_owned(),
        format!("task={task}"),
        "image_size=8".into(),
        format!("path={}", root.display()),
    ]
    .into_iter()
    .flat_map(|p| ["-p".to_owned(), p])
    .collect()
}

/// ids and labels of a split of a dataset artifact.
fn split(store: &Path, id: &str, name: &str) -> (Vec<String>, Vec<i32>) {
    let (batches, _) = graft_store::table::read_parquet(
        &store
            .join("objects")
            .join(id)
            .join(format!("{name}.parquet")),
    )
    .unwrap();
    let (mut ids, mut labels) = (vec![], vec![]);
    for b in batches {
        let i = b.column_by_name("id").unwrap().clone();
        let i = i.as_any().downcast_ref::<StringArray>().unwrap();
        let l = b.column_by_name("label").unwrap().clone();
        let l = l.as_any().downcast_ref::<Int32Array>().unwrap();
        for r in 0..b.num_rows() {
            ids.push(i.value(r).to_owned());
            labels.push(l.value(r));
        }
    }
    (ids, labels)
}

fn listed(dir: &Path, list: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(list))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(' ').unwrap().0.to_owned())
        .collect()
}

fn dataset_json(store: &Path, id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(store.join("objects").join(id).join("dataset.json")).unwrap(),
    )
    .unwrap()
}

#[test]
fn vtab_1k_reader_reads_the_list_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vtab-1k");
    let eurosat = mini_vtab(&root, "eurosat", 3, false);
    let store = dir.path().join("store");

    // VTAB_DIR locates the task folders when path is not given.
    ok(prep(&store).env("VTAB_DIR", &root).args([
        "-p",
        "source=vtab-1k",
        "-p",
        "task=eurosat",
        "-p",
        "image_size=8",
    ]));
    let id = slot_artifact(&store, "prep");
    let (ids, labels) = split(&store, &id, "train");
    assert_eq!(
        ids,
        listed(&eurosat, "train800.txt"),
        "every line, in order"
    );
    assert_eq!(labels, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    assert_eq!(split(&store, &id, "val").0, listed(&eurosat, "val200.txt"));
    assert_eq!(split(&store, &id, "test").0, listed(&eurosat, "test.txt"));
    let desc = dataset_json(&store, &id);
    // No classes.txt: VTAB-1k's eurosat has 10 classes, named class-<k>.
    let classes: Vec<String> = (0..10).map(|k| format!("class-{k}")).collect();
    assert_eq!(desc["classes"], serde_json::json!(classes));
    assert_eq!(desc["source"], "vtab-1k");
    // Not the task's name: like the path, it only says where the lists were.
    assert_eq!(desc["task"], serde_json::Value::Null);
    assert_eq!(desc["draw"]["splits"]["train"]["from"], "train800.txt");
    assert_eq!(desc["draw"]["splits"]["train"]["listed"], 9);

    // classes.txt names the classes and sets their count; a task VTAB-1k does not have is
    // read the same way.
    mini_vtab(&root, "textures", 3, true);
    ok(prep(&store).args(vtab_args(&root, "textures")));
    let id = slot_artifact(&store, "prep");
    assert_eq!(
        dataset_json(&store, &id)["classes"],
        serde_json::json!(["kind0", "kind1", "kind2"])
    );
    // The task's name enters the key only through what was read: the same folder under
    // another name is fresh.
    copy_dir(&root.join("textures"), &root.join("textures-copy"));
    let out = ok(prep(&store).args(vtab_args(&root, "textures-copy")));
    assert!(out.contains("fresh"), "{out}");
    // A count cuts a list by the stratified draw: one of each class here.
    ok(prep(&store)
        .args(vtab_args(&root, "textures"))
        .args(["-p", "train=3"]));
    let (_, labels) = split(&store, &slot_artifact(&store, "prep"), "train");
    assert_eq!(labels, [0, 1, 2]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn bad_vtab_inputs_name_the_file_and_line_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    tiny_prep(&store);
    let expect = |root: &Path, task: &str, needles: &[&str]| {
        let before = snapshot(&store);
        let o = run(prep(&store).args(vtab_args(root, task)));
        assert!(!o.status.success(), "expected failure for {task}");
        let err = stderr(&o);
        for n in needles {
            assert!(err.contains(n), "missing {n:?} in: {err}");
        }
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(snapshot(&store), before, "the store changed");
    };
    let root = dir.path().join("vtab-1k");

    // No folder for the task, and no location at all.
    std::fs::create_dir_all(&root).unwrap();
    expect(&root, "svhn", &["svhn/", "train800.txt", "VTAB_DIR"]);
    let o = run(prep(&store).args(["-p", "source=vtab-1k", "-p", "task=svhn"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("VTAB_DIR"), "{}", stderr(&o));
    let o = run(prep(&store).args(["-p", "source=vtab-1k", "-p", "path=."]));
    assert!(stderr(&o).contains("task is required"), "{}", stderr(&o));

    // A missing list file.
    let d = mini_vtab(&root, "a", 3, true);
    std::fs::remove_file(d.join("test.txt")).unwrap();
    expect(&root, "a", &["test.txt", "missing"]);

    // A listed image that does not exist, with its line.
    let d = mini_vtab(&root, "b", 3, true);
    std::fs::remove_file(d.join("images/0_1.png")).unwrap();
    expect(&root, "b", &["train800.txt:2", "0_1.png", "does not exist"]);

    // A listed image that does not decode, with its line.
    let d = mini_vtab(&root, "c", 3, true);
    std::fs::write(d.join("images/2_3.png"), b"not a png").unwrap();
    expect(&root, "c", &["val200.txt:3", "2_3.png", "cannot decode"]);

    // A label outside the classes.
    let d = mini_vtab(&root, "d", 3, true);
    let text = std::fs::read_to_string(d.join("test.txt")).unwrap();
    std::fs::write(d.join("test.txt"), text.replacen(" 0\n", " 7\n", 1)).unwrap();
    expect(
        &root,
        "d",
        &["test.txt:1", "label 7", "outside 0..3", "classes.txt"],
    );
    let d = mini_vtab(&root, "cifar", 3, false);
    let text = std::fs::read_to_string(d.join("test.txt")).unwrap();
    std::fs::write(d.join("test.txt"), text.replacen(" 0\n", " 100\n", 1)).unwrap();
    expect(
        &root,
        "cifar",
        &["test.txt:1", "outside 0..100", "cifar has 100 classes"],
    );
    let d = mini_vtab(&root, "e", 3, true);
    let text = std::fs::read_to_string(d.join("train800.txt")).unwrap();
    std::fs::write(d.join("train800.txt"), text.replacen(" 0\n", " zero\n", 1)).unwrap();
    expect(&root, "e", &["train800.txt:1", "not an integer"]);

    // An empty split.
    let d = mini_vtab(&root, "f", 3, true);
    std::fs::write(d.join("val200.txt"), "").unwrap();
    std::fs::copy(d.join("train800.txt"), d.join("train800val200.txt")).unwrap();
    expect(&root, "f", &["val200.txt", "lists no images"]);

    // train800val200 that is not train800 and val200 together.
    let d = mini_vtab(&root, "g", 3, true);
    std::fs::copy(d.join("train800.txt"), d.join("train800val200.txt")).unwrap();
    expect(&root, "g", &["train800val200.txt", "must list exactly"]);
}

/// The 19 tasks of pipelines/vtab.toml, in its order.
const TASKS: [&str; 19] = [
    "caltech101",
    "cifar",
    "dtd",
    "oxford_flowers102",
    "oxford_iiit_pet",
    "svhn",
    "sun397",
    "patch_camelyon",
    "eurosat",
    "resisc45",
    "diabetic_retinopathy",
    "clevr_count",
    "clevr_dist",
    "dmlab",
    "kitti",
    "dsprites_loc",
    "dsprites_ori",
    "smallnorb_azi",
    "smallnorb_ele",
];

/// The five tasks the file was written out for by hand before matrix stages.
const BY_HAND: [&str; 5] = ["dtd", "cifar", "oxford_flowers102", "eurosat", "svhn"];

/// Shrinks stage `prep`, `probe`, `propose` and `finetune` (every expansion of a matrix
/// stage, or one stage written by hand) to the miniature.
fn mini_sets(names: [&str; 4], ckpt: &str) -> Vec<String> {
    let [prep, probe, propose, finetune] = names;
    let mut sets = vec![
        format!("{prep}.image_size=16"),
        format!("{propose}.budgets=[1]"),
        format!(
            "{propose}.heuristics=[{{ name = \"gga\", score = \"rank\" }}, {{ name = \"single-sweep\", kinds = [\"parallel\"] }}]"
        ),
        format!("{finetune}.baselines=[\"linear-probe\", \"lora\"]"),
        format!("{finetune}.jobs=2"),
    ];
    sets.extend(tiny_model_sets(probe, finetune, ckpt));
    sets
}

#[test]
fn vtab_pipeline_file_runs_all_19_tasks_on_a_miniature_vtab() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("vtab-1k");
    let store = dir.path().join("store");
    let pipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/vtab.toml");
    let ckpt = tiny_checkpoint(&store);
    let small = overrides(&mini_sets(["prep", "probe", "propose", "finetune"], &ckpt));

    // Without VTAB_DIR: said once for the 19 prep stages, at the check, store untouched.
    let before = snapshot(&store);
    let o = run(graft(&store).args(["run", pipe]).args(&small));
    assert!(!o.status.success());
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("VTAB_DIR")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("stages.prep@*"), "{err}");
    // Two to four classes (no task publishes fewer than patch_camelyon's 2 or, past it, kitti's
    // 4; the reader's class count is the published one).
    let classes = |k: usize, t: &str| if t == "patch_camelyon" { 2 } else { 2 + k % 3 };
    for (k, t) in TASKS[..18].iter().enumerate() {
        mini_vtab(&root, t, classes(k, t), false);
    }
    let o = run(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("VTAB_DIR", &root));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("smallnorb_ele/") && err.contains("train800.txt"),
        "{err}"
    );
    assert_eq!(snapshot(&store), before, "the store changed");

    mini_vtab(&root, "smallnorb_ele", classes(18, "smallnorb_ele"), false);
    let out = ok(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("VTAB_DIR", &root));
    for t in TASKS {
        for stage in ["prep", "probe", "propose", "finetune"] {
            assert_eq!(status_of(&out, &format!("{stage}@{t}")), "ran", "{out}");
        }
        let protocols = run_protocols(
            &store,
            &slot_artifact(&store, &format!("vtab/finetune@{t}")),
        );
        assert!(
            !protocols.is_empty() && protocols.iter().all(|p| p == "final"),
            "{t}: {protocols:?}"
        );
    }
    assert_eq!(status_of(&out, "report"), "ran", "{out}");
    check_vtab_report(&store);
    same_keys_as_the_hand_written_file(&store, &root, &ckpt);
}

/// The report across the 19 tasks: the cross-task figure, every task in the summary.
fn check_vtab_report(store: &Path) {
    let report = store
        .join("objects")
        .join(slot_artifact(store, "vtab/report"));
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    // The cross-task figure is drawn, not skipped: every task swept the parallel edges.
    assert!(
        html.contains("Cross-task correlation"),
        "no cross-task figure"
    );
    assert!(
        !html.contains("the cross-task matrix needs"),
        "cross-task figure skipped"
    );
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    for t in TASKS {
        assert!(summary.contains(t), "{t} missing from the summary");
    }
    // The claims open the page, with the task as the replicate (one backbone, 19 tasks).
    let claims_at = summary.find("## Claims").expect("no claims section");
    assert!(
        claims_at < summary.find("## Findings").unwrap(),
        "{summary}"
    );
    assert!(
        summary.contains("The replicate is the task (19 tasks, all on one pretrained backbone)"),
        "{summary}"
    );
    let claims = std::fs::read_to_string(report.join("claims.csv")).unwrap();
    assert!(
        claims.contains("C2,") && claims.contains(",pooled,"),
        "{claims}"
    );
    assert!(
        summary.contains("final (trained on train + val"),
        "{summary}"
    );
    // The table PETL papers print: every task, the three group means (every group is
    // complete), LoRA beside the placements, in each format.
    let results = std::fs::read_to_string(report.join("results.md")).unwrap();
    for column in ["Natural", "Specialized", "Structured", "Mean"] {
        assert!(results.contains(column), "{column} missing:\n{results}");
    }
    assert!(
        results.to_lowercase().contains("lora"),
        "no LoRA row:\n{results}"
    );
    for f in ["results.csv", "results.tex"] {
        assert!(report.join(f).exists(), "{f} missing");
    }
    assert!(
        html.contains("Results table"),
        "no results table in the page"
    );
}

/// The five-task file as it was written by hand, on the same store: every stage of its five
/// chains is fresh (an expansion's key is the hand-written stage's key).
fn same_keys_as_the_hand_written_file(store: &Path, root: &Path, ckpt: &str) {
    let pipe = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/graft-runner/testdata/vtab-five-by-hand.toml"
    );
    let mut sets = Vec::new();
    for t in BY_HAND {
        let names = ["prep", "probe", "propose", "finetune"].map(|s| format!("{s}-{t}"));
        sets.extend(mini_sets(names.each_ref().map(String::as_str), ckpt));
    }
    let out = ok(graft(store)
        .args(["status", pipe])
        .args(overrides(&sets))
        .env("VTAB_DIR", root));
    for t in BY_HAND {
        for stage in ["prep", "probe", "propose", "finetune"] {
            assert_eq!(status_of(&out, &format!("{stage}-{t}")), "fresh", "{out}");
        }
    }
}
