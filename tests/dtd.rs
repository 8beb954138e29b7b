//! DTD split logic and bad-input handling on a miniature DTD tree written by the test.

use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, Int32Array, StringArray};

use crate::common::*;

/// Listed in `labels/*.txt` in this (sorted) order, as DTD lists its 47.
const CLASSES: [&str; 5] = ["banded", "cracked", "dotted", "woven", "zigzagged"];

/// `dtd/images/<class>/<class>_000N.jpg`, 8 per class, and labels/{train,val,test}1.txt
/// listing them class by class, as DTD ships them: 4 per class in train1, 2 in val1, 2 in
/// test1. A prefix of train1.txt would hold the first classes only.
pub fn mini_dtd(root: &Path) -> PathBuf {
    let dtd = root.join("dtd");
    let mut lists: [Vec<String>; 3] = Default::default();
    for (c, class) in CLASSES.iter().enumerate() {
        let d = dtd.join("images").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..8u32 {
            let img = image::RgbImage::from_fn(20 + 3 * i, 18, |x, y| {
                image::Rgb([(x * 9) as u8, (y * 11) as u8, (c * 50) as u8])
            });
            let name = format!("{class}_{i:04}.jpg");
            img.save(d.join(&name)).unwrap();
            let list = match i {
                0..4 => 0,
                4..6 => 1,
                _ => 2,
            };
            lists[list].push(format!("{class}/{name}"));
        }
    }
    let labels = dtd.join("labels");
    std::fs::create_dir_all(&labels).unwrap();
    for (name, lines) in ["train1.txt", "val1.txt", "test1.txt"].iter().zip(&lists) {
        std::fs::write(labels.join(name), lines.join("\n") + "\n").unwrap();
    }
    dtd
}

fn read_split(
    store: &Path,
    id: &str,
    split: &str,
) -> (Vec<String>, Vec<i32>, Vec<String>, Vec<usize>) {
    let (batches, meta) = graft_store::table::read_parquet(
        &store
            .join("objects")
            .join(id)
            .join(format!("{split}.parquet")),
    )
    .unwrap();
    assert_eq!(
        meta.get("graft.image_shape").map(String::as_str),
        Some("16,16,3")
    );
    let (mut ids, mut labels, mut names, mut sizes) = (vec![], vec![], vec![], vec![]);
    for b in batches {
        let col = |n: &str| b.column_by_name(n).unwrap().clone();
        let idc = col("id");
        let idc = idc.as_any().downcast_ref::<StringArray>().unwrap();
        let lc = col("label");
        let lc = lc.as_any().downcast_ref::<Int32Array>().unwrap();
        let nc = col("label_name");
        let nc = nc.as_any().downcast_ref::<StringArray>().unwrap();
        let ic = col("image");
        let ic = ic.as_any().downcast_ref::<BinaryArray>().unwrap();
        for i in 0..b.num_rows() {
            ids.push(idc.value(i).to_owned());
            labels.push(lc.value(i));
            names.push(nc.value(i).to_owned());
            sizes.push(ic.value(i).len());
        }
        assert_eq!(ic.null_count(), 0);
    }
    (ids, labels, names, sizes)
}

/// Issue 11: DTD's label files list their images class by class, and the prep stage took
/// the first 800 lines of train1.txt (20 of 47 classes). The cut is now a class-stratified,
/// seeded draw, recorded in the artifact.
#[test]
fn regression_11_dtd_draw_takes_every_class_from_class_ordered_label_files() {
    let dir = tempfile::tempdir().unwrap();
    let dtd = mini_dtd(dir.path());
    let store = dir.path().join("store");
    // DTD_DIR, and the parent of `dtd/`, both locate it.
    ok(prep(&store)
        .env("DTD_DIR", dir.path())
        .args(["-p", "source=dtd", "-p", "image_size=16"])
        .args(["-p", "train=10", "-p", "val=5"]));
    let id = slot_artifact(&store, "prep");
    let lines = |name: &str| -> Vec<String> {
        std::fs::read_to_string(dtd.join("labels").join(name))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let per_class = |names: &[String]| -> Vec<usize> {
        CLASSES
            .iter()
            .map(|c| names.iter().filter(|n| n == c).count())
            .collect()
    };
    let (ids, labels, names, sizes) = read_split(&store, &id, "train");
    // 10 of the 20 listed: 2 of every class, where the first 10 lines hold 3 classes.
    assert_eq!(per_class(&names), [2; 5], "{ids:?}");
    let train_lines = lines("train1.txt");
    assert!(ids.iter().all(|i| train_lines.contains(i)));
    assert_ne!(ids, train_lines[..10].to_vec(), "not a prefix");
    for ((id, label), name) in ids.iter().zip(&labels).zip(&names) {
        assert_eq!(id.split('/').next().unwrap(), name);
        assert_eq!(CLASSES[*label as usize], name);
    }
    assert!(sizes.iter().all(|&s| s == 16 * 16 * 3));
    let (val_ids, _, val_names, _) = read_split(&store, &id, "val");
    assert_eq!(per_class(&val_names), [1; 5], "{val_ids:?}");
    let (test_ids, _, _, _) = read_split(&store, &id, "test");
    assert_eq!(test_ids, lines("test1.txt"), "test takes all of test1");

    // The draw is in the artifact: seed, source lists and the chosen ids.
    let desc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join("objects").join(&id).join("dataset.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(desc["classes"], serde_json::json!(CLASSES));
    assert_eq!(desc["preprocessing"]["interpolation"], "bilinear");
    assert_eq!(desc["draw"]["method"], "class-stratified");
    assert_eq!(desc["draw"]["seed"], 0);
    assert_eq!(desc["draw"]["splits"]["train"]["from"], "labels/train1.txt");
    assert_eq!(desc["draw"]["splits"]["train"]["listed"], 20);
    assert_eq!(
        desc["draw"]["splits"]["train"]["chosen"],
        serde_json::json!(ids)
    );
    assert_eq!(
        desc["draw"]["splits"]["val"]["chosen"],
        serde_json::json!(val_ids)
    );

    // Another seed is another draw (and a reason to rerun), still stratified.
    let out = ok(prep(&store)
        .args(small_dtd(&dtd))
        .args(["-p", "train=10", "-p", "seed=5"]));
    assert!(out.contains("params.seed changed 0 -> 5"), "{out}");
    let other = slot_artifact(&store, "prep");
    let (ids5, _, names5, _) = read_split(&store, &other, "train");
    assert_eq!(per_class(&names5), [2; 5]);
    assert_ne!(ids5, ids, "seed 5 draws other images");
}

#[test]
fn dtd_key_follows_content_not_location() {
    let dir = tempfile::tempdir().unwrap();
    let dtd = mini_dtd(dir.path());
    let store = dir.path().join("store");
    ok(prep(&store).args(small_dtd(&dtd)));
    // The same data elsewhere on disk is the same key: the path is not part of it.
    let moved = dir.path().join("moved");
    std::fs::rename(&dtd, &moved).unwrap();
    let out = ok(prep(&store).args(small_dtd(&moved)));
    assert!(out.contains("fresh"), "{out}");
    // Changing one image's content is a new key.
    let some = moved.join("images/banded/banded_0000.jpg");
    image::RgbImage::from_pixel(20, 20, image::Rgb([1, 2, 3]))
        .save(&some)
        .unwrap();
    let out = ok(prep(&store).args(small_dtd(&moved)));
    assert!(
        out.contains("ran") && out.contains("input source changed"),
        "{out}"
    );
}

/// Parameters of a small DTD prep run on the tree at `path`.
fn small_dtd(path: &Path) -> Vec<String> {
    ["source=dtd", "image_size=16", "train=15", "val=5"]
        .into_iter()
        .map(String::from)
        .chain([format!("path={}", path.display())])
        .flat_map(|p| ["-p".to_owned(), p])
        .collect()
}

/// Runs prep on a broken tree and checks the error and that the store did not change.
fn expect_error(store: &Path, path: &Path, extra: &[&str], needles: &[&str]) {
    let before = snapshot(store);
    let o = run(prep(store).args(small_dtd(path)).args(extra));
    assert!(!o.status.success(), "expected failure");
    let err = stderr(&o);
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    assert_eq!(snapshot(store), before, "the store changed");
}

#[test]
fn bad_dtd_inputs_name_the_file_and_leave_the_store_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    tiny_prep(&store);

    // Missing directory.
    let nowhere = dir.path().join("no-such-dtd");
    expect_error(
        &store,
        &nowhere,
        &[],
        &["no-such-dtd", "images/<class>", "labels/"],
    );
    // Not set at all.
    let o = run(prep(&store).args(["-p", "source=dtd"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DTD_DIR"), "{}", stderr(&o));

    // Corrupt JPEG.
    let dtd = mini_dtd(&dir.path().join("a"));
    let victim = dtd.join("images/dotted/dotted_0001.jpg");
    // (listed on line 10 of train1.txt: dotted is the third class, 4 lines each)
    // A download cut off inside the headers.
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes.truncate(120);
    std::fs::write(&victim, bytes).unwrap();
    expect_error(
        &store,
        &dtd,
        &["-p", "train=20"],
        &["train1.txt:10", "dotted_0001.jpg", "cannot decode"],
    );

    // Unknown class in a label file.
    let dtd = mini_dtd(&dir.path().join("b"));
    let val = dtd.join("labels/val1.txt");
    let text = std::fs::read_to_string(&val).unwrap();
    std::fs::write(&val, text.replacen("banded/", "plaid/", 1)).unwrap();
    expect_error(&store, &dtd, &[], &["val1.txt:", "unknown class \"plaid\""]);

    // Fewer lines than asked for.
    let dtd = mini_dtd(&dir.path().join("c"));
    expect_error(&store, &dtd, &["-p", "train=800"], &["train1.txt", "800"]);

    // A parameter that does not apply to DTD.
    expect_error(
        &store,
        &dtd,
        &["-p", "render_size=3"],
        &["render_size", "does not apply"],
    );
    expect_error(
        &store,
        &dtd,
        &["-p", "colour=red"],
        &["unknown field `colour`"],
    );
}

#[test]
fn image_folder_reads_split_class_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder");
    for (split, n) in [("train", 3), ("test", 2)] {
        for class in ["cats", "ants"] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..n {
                image::RgbImage::from_pixel(10, 12, image::Rgb([i as u8 * 40, 0, 9]))
                    .save(d.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let store = dir.path().join("store");
    ok(prep(&store)
        .args(["-p", "source=image-folder", "-p", "image_size=16"])
        .arg("-p")
        .arg(format!("path={}", root.display())));
    let id = slot_artifact(&store, "prep");
    let (ids, labels, names, _) = read_split(&store, &id, "train");
    assert_eq!(
        ids,
        [
            "ants/0.png",
            "ants/1.png",
            "ants/2.png",
            "cats/0.png",
            "cats/1.png",
            "cats/2.png"
        ]
    );
    assert_eq!(labels, [0, 0, 0, 1, 1, 1]);
    assert_eq!(names[3], "cats");
    assert_eq!(read_split(&store, &id, "test").0.len(), 4);
    assert!(!store.join("objects").join(&id).join("val.parquet").exists());
}

/// `<root>/<split>/<class>/<i>.png`, `n` per class.
fn image_tree(root: &Path, split: &str, classes: &[&str], n: usize) {
    for class in classes {
        let d = root.join(split).join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(10, 12, image::Rgb([i as u8 * 40, 0, 9]))
                .save(d.join(format!("{i}.png")))
                .unwrap();
        }
    }
}

#[test]
fn image_folder_counts_draw_from_every_class() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder");
    image_tree(&root, "train", &["ants", "bees", "cats"], 4);
    let store = dir.path().join("store");
    ok(prep(&store)
        .args([
            "-p",
            "source=image-folder",
            "-p",
            "image_size=8",
            "-p",
            "train=6",
        ])
        .arg("-p")
        .arg(format!("path={}", root.display())));
    let id = slot_artifact(&store, "prep");
    let (batches, _) =
        graft_store::table::read_parquet(&store.join("objects").join(&id).join("train.parquet"))
            .unwrap();
    let mut names = Vec::new();
    for b in batches {
        let c = b.column_by_name("label_name").unwrap().clone();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        names.extend((0..c.len()).map(|i| c.value(i).to_owned()));
    }
    names.sort();
    assert_eq!(names, ["ants", "ants", "bees", "bees", "cats", "cats"]);
}

#[test]
fn image_folders_without_two_classes_with_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let try_prep = |root: &Path| {
        let o = run(prep(&store)
            .args(["-p", "source=image-folder", "-p", "image_size=8"])
            .arg("-p")
            .arg(format!("path={}", root.display())));
        assert!(!o.status.success());
        stderr(&o)
    };
    // An empty class directory in train/ is named.
    let root = dir.path().join("a");
    image_tree(&root, "train", &["ants", "bees"], 2);
    std::fs::create_dir_all(root.join("train/cats")).unwrap();
    let err = try_prep(&root);
    assert!(
        err.contains("class \"cats\" has no images") && err.contains("train/cats"),
        "{err}"
    );
    // One class is not a classification task.
    let root = dir.path().join("b");
    image_tree(&root, "train", &["ants"], 3);
    let err = try_prep(&root);
    assert!(err.contains("only one class (\"ants\")"), "{err}");
    assert!(!store.join("objects").exists() || snapshot(&store).is_empty());
}

#[test]
fn tables_open_in_pyarrow_and_pandas() {
    let Some((py, running)) = graft_external::require(
        "graft tables_open_in_pyarrow_and_pandas",
        graft_external::VENV,
        graft_external::venv_python(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    ok(prep(&store).args([
        "-p",
        "source=procedural",
        "-p",
        "image_size=16",
        "-p",
        "train=24",
        "-p",
        "val=12",
        "-p",
        "test=12",
    ]));
    let id = slot_artifact(&store, "prep");
    let table = store.join("objects").join(&id).join("train.parquet");
    let script = r#"
import sys, json, numpy as np, pyarrow.parquet as pq, pandas as pd
t = pq.read_table(sys.argv[1])
assert t.column_names == ["id", "label", "label_name", "image"], t.column_names
assert str(t.schema.field("label").type) == "int32"
assert pq.read_metadata(sys.argv[1]).metadata[b"graft.image_shape"] == b"16,16,3"
df = pd.read_parquet(sys.argv[1])
img = np.frombuffer(df.image[0], dtype=np.uint8).reshape(16, 16, 3)
print(json.dumps({"rows": len(df), "first": df.id[0], "label": int(df.label[0]), "mean": float(img.mean())}))
"#;
    let out = ok(std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .arg(&table));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["rows"], 24);
    assert_eq!(v["first"], "train/000000");
    assert_eq!(v["label"], 0);
    running.passed();
}

/// A tiny 16 px vit-cpu-tiny checkpoint in `store`, made by the prep and pretrain stages on
/// procedural data: what stands in for a pipeline file's ViT-B/16 on the CPU. Returns the
/// path of its `model.safetensors`.
pub fn tiny_checkpoint(store: &Path) -> String {
    let json = |out: String| -> String {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["artifact"].as_str().unwrap().to_owned()
    };
    let data = json(ok(prep(store).args([
        "--json",
        "-p",
        "source=procedural",
        "-p",
        "task=source",
        "-p",
        "image_size=16",
        "-p",
        "train=32",
        "-p",
        "val=8",
        "-p",
        "test=8",
    ])));
    let base = json(ok(std::process::Command::new(
        bin_dir().join("graft-pretrain"),
    )
    .arg("--store")
    .arg(store)
    .args(["--json", "-p", "preset=\"vit-cpu-tiny\"", "-p", "epochs=1"])
    .args(["-i", &format!("dataset={data}")])));
    let ckpt = store.join("objects").join(base).join("model.safetensors");
    ckpt.to_str().unwrap().to_owned()
}

/// `-S` arguments from `stage.param=value` strings.
pub fn overrides(sets: &[String]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["-S".to_owned(), s.clone()])
        .collect()
}

/// The probe and fine-tune overrides that shrink a ViT-B/16-on-GPU stage pair named
/// `probe` and `finetune` to `ckpt` (vit-cpu-tiny) on the CPU, one seed, one epoch.
pub fn tiny_model_sets(probe: &str, finetune: &str, ckpt: &str) -> Vec<String> {
    vec![
        format!("{probe}.checkpoint=\"{ckpt}\""),
        format!("{probe}.preset=\"vit-cpu-tiny\""),
        format!("{probe}.device=\"cpu\""),
        format!("{probe}.batch=4"),
        format!("{probe}.batches=1"),
        format!("{probe}.head_epochs=1"),
        format!("{finetune}.checkpoint=\"{ckpt}\""),
        format!("{finetune}.preset=\"vit-cpu-tiny\""),
        format!("{finetune}.device=\"cpu\""),
        format!("{finetune}.seeds=[0]"),
        format!("{finetune}.epochs=1"),
        format!("{finetune}.warmup_epochs=0"),
        format!("{finetune}.batch=8"),
    ]
}

/// The `protocol` column of a fine-tune artifact's runs.parquet.
pub fn run_protocols(store: &Path, finetune_artifact: &str) -> Vec<String> {
    let (batches, _) = graft_store::table::read_parquet(
        &store
            .join("objects")
            .join(finetune_artifact)
            .join("runs.parquet"),
    )
    .unwrap();
    let mut out = Vec::new();
    for b in batches {
        let c = b.column_by_name("protocol").unwrap().clone();
        let c = c.as_any().downcast_ref::<StringArray>().unwrap();
        out.extend((0..c.len()).map(|i| c.value(i).to_owned()));
    }
    out
}

#[test]
fn dtd_pipeline_file_runs_on_a_miniature_dtd() {
    let dir = tempfile::tempdir().unwrap();
    mini_dtd(dir.path());
    let store = dir.path().join("store");
    let pipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/dtd.toml");
    let ckpt = tiny_checkpoint(&store);
    let mut sets = vec![
        "prep.image_size=16".to_owned(),
        "prep.train=10".into(),
        "prep.val=5".into(),
        "propose.budgets=[1]".into(),
        "propose.heuristics=[{ name = \"gga\", score = \"rank\" }, { name = \"single-sweep\", kinds = [\"parallel\"] }]".into(),
        "finetune.baselines=[\"linear-probe\"]".into(),
        "finetune.jobs=2".into(),
    ];
    sets.extend(tiny_model_sets("probe", "finetune", &ckpt));
    let small = overrides(&sets);

    // Without the data set and the checkpoint: every missing part named at the check,
    // nothing written.
    let before = snapshot(&store);
    let o = run(graft(&store)
        .args(["run", pipe])
        .args(overrides(&["prep.image_size=16".to_owned()]))
        .current_dir(dir.path()));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("DTD_DIR"), "{err}");
    assert!(
        err.contains("checkpoints/vit-b16-in21k.safetensors") && err.contains("no such file"),
        "{err}"
    );
    assert!(err.contains("Checkpoints"), "{err}");
    assert_eq!(snapshot(&store), before, "the store changed");

    let out = ok(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("DTD_DIR", dir.path()));
    for stage in ["prep", "probe", "propose", "finetune", "report"] {
        assert_eq!(status_of(&out, stage), "ran", "{out}");
    }
    assert!(out.contains("report.html"), "{out}");
    // The file's protocol is the final one, recorded in every run and stated by the report.
    let protocols = run_protocols(&store, &slot_artifact(&store, "dtd/finetune"));
    assert!(
        !protocols.is_empty() && protocols.iter().all(|p| p == "final"),
        "{protocols:?}"
    );
    let summary = std::fs::read_to_string(
        store
            .join("objects")
            .join(slot_artifact(&store, "dtd/report"))
            .join("summary.md"),
    )
    .unwrap();
    assert!(
        summary.contains("final (trained on train + val for 1 epoch,"),
        "{summary}"
    );

    let out = ok(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("DTD_DIR", dir.path()));
    for stage in ["prep", "probe", "propose", "finetune", "report"] {
        assert_eq!(status_of(&out, stage), "fresh", "{out}");
    }
}
