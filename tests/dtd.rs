//! DTD split logic and bad-input handling on a miniature DTD tree written by the test.

use std::path::{Path, PathBuf};

use arrow::array::{Array, BinaryArray, Int32Array, StringArray};

use crate::common::*;

const CLASSES: [&str; 3] = ["banded", "zigzagged", "dotted"];

/// `dtd/images/<class>/<class>_000N.jpg`, 6 per class, and labels/{train,val,test}1.txt
/// listing them in an interleaved order.
fn mini_dtd(root: &Path) -> PathBuf {
    let dtd = root.join("dtd");
    let mut lines: Vec<String> = Vec::new();
    for (c, class) in CLASSES.iter().enumerate() {
        let d = dtd.join("images").join(class);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..6 {
            let img = image::RgbImage::from_fn(40 + 3 * i, 30, |x, y| {
                image::Rgb([(x * 5) as u8, (y * 7) as u8, (c * 100) as u8])
            });
            let name = format!("{class}_{i:04}.jpg");
            img.save(d.join(&name)).unwrap();
            lines.push(format!("{class}/{name}"));
        }
    }
    // Interleave classes so "first N" is checkable.
    lines.sort_by_key(|l| (l[l.len() - 5..l.len() - 4].to_string(), l.clone()));
    let labels = dtd.join("labels");
    std::fs::create_dir_all(&labels).unwrap();
    std::fs::write(labels.join("train1.txt"), lines[..9].join("\n") + "\n").unwrap();
    std::fs::write(labels.join("val1.txt"), lines[9..13].join("\n") + "\n").unwrap();
    std::fs::write(labels.join("test1.txt"), lines[13..].join("\n") + "\n").unwrap();
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

#[test]
fn vtab_split_takes_the_first_lines_and_sorts_classes() {
    let dir = tempfile::tempdir().unwrap();
    let dtd = mini_dtd(dir.path());
    let store = dir.path().join("store");
    // DTD_DIR, and the parent of `dtd/`, both locate it.
    ok(prep(&store).env("DTD_DIR", dir.path()).args([
        "-p",
        "source=dtd",
        "-p",
        "image_size=16",
        "-p",
        "train=7",
        "-p",
        "val=3",
    ]));
    let id = slot_artifact(&store, "prep");
    let (ids, labels, names, sizes) = read_split(&store, &id, "train");
    let train_lines: Vec<String> = std::fs::read_to_string(dtd.join("labels/train1.txt"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(ids, train_lines[..7].to_vec());
    let mut sorted = CLASSES.to_vec();
    sorted.sort();
    for ((id, label), name) in ids.iter().zip(&labels).zip(&names) {
        assert_eq!(id.split('/').next().unwrap(), name);
        assert_eq!(sorted[*label as usize], name);
    }
    assert!(sizes.iter().all(|&s| s == 16 * 16 * 3));
    assert_eq!(read_split(&store, &id, "val").0.len(), 3);
    assert_eq!(
        read_split(&store, &id, "test").0.len(),
        5,
        "test takes all of test1"
    );
    let desc: serde_json::Value = serde_json::from_slice(
        &std::fs::read(store.join("objects").join(&id).join("dataset.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(desc["classes"], serde_json::json!(sorted));
    assert_eq!(desc["preprocessing"]["interpolation"], "bilinear");

    // The same data elsewhere on disk is the same key: the path is not part of it.
    let moved = dir.path().join("moved");
    std::fs::rename(&dtd, &moved).unwrap();
    let out = ok(prep(&store).args(small_dtd(&moved)));
    assert!(out.contains("fresh"), "{out}");
    // Changing one image's content is a new key.
    let some = std::fs::read_dir(moved.join("images/banded"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
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
    ["source=dtd", "image_size=16", "train=7", "val=3"]
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
    ok(prep(&store).args([
        "-p",
        "source=procedural",
        "-p",
        "image_size=8",
        "-p",
        "train=8",
        "-p",
        "val=4",
        "-p",
        "test=4",
    ]));

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
    // A download cut off inside the headers.
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes.truncate(120);
    std::fs::write(&victim, bytes).unwrap();
    expect_error(&store, &dtd, &[], &["dotted_0001.jpg", "cannot decode"]);

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
    expect_error(&store, &dtd, &["-p", "seed=3"], &["seed", "does not apply"]);
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

#[test]
fn dtd_pipeline_file_runs_on_a_miniature_dtd() {
    let dir = tempfile::tempdir().unwrap();
    mini_dtd(dir.path());
    let store = dir.path().join("store");
    let pipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/dtd.toml");
    // The file's ViT-B/16 on a GPU becomes a tiny 16 px checkpoint on the CPU, made here by
    // the prep and pretrain stages on procedural data.
    let json = |out: String| -> String {
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        v["artifact"].as_str().unwrap().to_owned()
    };
    let data = json(ok(prep(&store).args([
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
    .arg(&store)
    .args(["--json", "-p", "preset=\"vit-cpu-tiny\"", "-p", "epochs=1"])
    .args(["-i", &format!("dataset={data}")])));
    let ckpt = store.join("objects").join(base).join("model.safetensors");
    let ckpt = ckpt.to_str().unwrap();
    let sets = [
        "prep.image_size=16".to_owned(),
        "prep.train=7".into(),
        "prep.val=3".into(),
        format!("probe.checkpoint=\"{ckpt}\""),
        "probe.preset=\"vit-cpu-tiny\"".into(),
        "probe.device=\"cpu\"".into(),
        "probe.batch=4".into(),
        "probe.batches=1".into(),
        "probe.head_epochs=1".into(),
        "propose.budgets=[1, 2]".into(),
        format!("finetune.checkpoint=\"{ckpt}\""),
        "finetune.preset=\"vit-cpu-tiny\"".into(),
        "finetune.device=\"cpu\"".into(),
        "finetune.seeds=[0]".into(),
        "finetune.epochs=1".into(),
        "finetune.batch=8".into(),
    ];
    let small: Vec<String> = sets
        .iter()
        .flat_map(|s| ["-S".to_owned(), s.clone()])
        .collect();
    // Without the data set: a clear error, nothing written.
    let o = run(graft(&store).args(["run", pipe]).args(&small));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("DTD_DIR"), "{}", stderr(&o));
    let out = ok(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("DTD_DIR", dir.path()));
    assert_eq!(status_of(&out, "prep"), "ran", "{out}");
    for stage in ["probe", "propose", "finetune", "report"] {
        assert_eq!(status_of(&out, stage), "ran", "{out}");
    }
    assert!(out.contains("report.html"), "{out}");
    let out = ok(graft(&store)
        .args(["run", pipe])
        .args(&small)
        .env("DTD_DIR", dir.path()));
    for stage in ["prep", "probe", "propose", "finetune", "report"] {
        assert_eq!(status_of(&out, stage), "fresh", "{out}");
    }
}
