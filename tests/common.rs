use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Directory of the built binaries (`target/<profile>`), found from this test's own path.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    for b in [
        "graft",
        "graft-prep",
        "graft-pretrain",
        "graft-probe",
        "graft-propose",
        "graft-finetune",
        "graft-report",
        "graft-command",
    ] {
        assert!(
            dir.join(b).exists(),
            "{} is not built: run `cargo build --workspace --bins` first (`make test` does)",
            dir.join(b).display()
        );
    }
    dir
}

pub fn graft(store: &Path) -> Command {
    let mut c = Command::new(bin_dir().join("graft"));
    c.arg("--store")
        .arg(store)
        .env_remove("GRAFT_STORE")
        .env_remove("DTD_DIR")
        .env_remove("VTAB_DIR");
    c
}

pub fn prep(store: &Path) -> Command {
    let mut c = Command::new(bin_dir().join("graft-prep"));
    c.arg("--store")
        .arg(store)
        .env_remove("GRAFT_STORE")
        .env_remove("DTD_DIR")
        .env_remove("VTAB_DIR");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and asserts success, returning stdout.
pub fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{:?} failed\nstdout:\n{}\nstderr:\n{}",
        cmd,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Every file under the store's durable parts (objects, keys, slots) with its content hash,
/// plus anything left in tmp: two snapshots are equal when nothing was written.
pub fn snapshot(store: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for sub in ["objects", "keys", "slots", "tmp"] {
        walk(&store.join(sub), store, &mut out);
    }
    out
}

fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, root, out);
        } else {
            let bytes = std::fs::read(&p).unwrap_or_default();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            out.insert(rel, blake3::hash(&bytes).to_hex().to_string());
        }
    }
}

/// A small two-stage pipeline file (two procedural prep stages), returned as its path.
pub fn small_pipeline(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        r#"
description = "test pipeline"
[stages.src]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 64, val = 16, test = 16 }
[stages.tgt]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 16, seed = 1, train = 48, val = 12, test = 24 }
"#,
    )
    .unwrap();
    path
}

/// Artifact id printed for `stage` in a runner's output (`-> <12 hex>`), as a prefix.
pub fn short_id(out: &str, stage: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no line for {stage} in\n{out}"));
    line.rsplit("-> ").next().unwrap().trim().to_owned()
}

pub fn status_of(out: &str, stage: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no line for {stage} in\n{out}"));
    line.split_whitespace().nth(1).unwrap().to_owned()
}

/// The full id of a slot's last artifact.
pub fn slot_artifact(store: &Path, slot: &str) -> String {
    let text = std::fs::read_to_string(
        store
            .join("slots")
            .join(format!("{}.json", slot.replace('/', "--"))),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["artifact"].as_str().unwrap().to_owned()
}

/// A tiny procedural dataset (8 px; 8 train, 4 val, 4 test) prepared into `store`, so the
/// store holds something a bad-input test must leave unchanged.
pub fn tiny_prep(store: &Path) {
    ok(prep(store).args([
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
}

/// Writes `<dir>/<name>.toml`: a small procedural source and target, a one-epoch
/// `vit-cpu-tiny` pretrain and a fine-tune stage with the linear probe, parallel-all and
/// `placements` (a TOML array), seed 0, two jobs. Pipeline files of the fine-tune tests.
pub fn small_finetune_pipeline(dir: &Path, name: &str, placements: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"
description = "fine-tune test"
[stages.src]
kind = "prep"
params = {{ source = "procedural", task = "source", image_size = 16, train = 128, val = 32, test = 32 }}
[stages.tgt]
kind = "prep"
params = {{ source = "procedural", task = "textures", image_size = 16, seed = 1, train = 64, val = 32, test = 32 }}
[stages.pretrain]
kind = "pretrain"
inputs = {{ dataset = "src" }}
params = {{ preset = "vit-cpu-tiny", epochs = 1, batch = 32 }}
[stages.finetune]
kind = "finetune"
inputs = {{ dataset = "tgt", base = "pretrain" }}
[stages.finetune.params]
baselines = ["linear-probe", "parallel-all"]
seeds = [0]
epochs = 1
batch = 32
jobs = 2
placements = {placements}
"#
        ),
    )
    .unwrap();
    path
}
