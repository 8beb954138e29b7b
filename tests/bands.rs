//! Issue 9: the CI pipeline's regression bands (`pipelines/bands/ci.toml`, checked by
//! `graft-bands` in `.ci/run`) catch a broken setup. The CI pipeline itself, with full
//! fine-tuning at a learning rate so small that nothing moves, crosses "full above linear
//! probe", and the check names the band and the numbers. (The healthy run is `.ci/run`'s own
//! check; the band logic on doctored tables, a heuristic that stops following its score
//! among them, is tested in graft-report.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn bands(store: &Path) -> Command {
    let mut c = Command::new(bin_dir().join("graft-bands"));
    c.arg("--store")
        .arg(store)
        .arg(root().join("pipelines").join("bands").join("ci.toml"))
        .env_remove("GRAFT_STORE");
    c
}

#[test]
fn a_frozen_full_fine_tuning_crosses_the_ci_band() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");

    // Before the pipeline ran, the check says what is missing instead of passing.
    let o = run(&mut bands(&store));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no slot ci/probe: run pipeline ci on this store first"),
        "{}",
        stderr(&o)
    );

    // The CI pipeline with its baselines and the two heuristics the picks bands check (the
    // propose stage proposes parallel-all, gga and top-k, no placements by hand: the sweep
    // is not what is tested here), full fine-tuning at lr 1e-9: its weights (backbone and
    // head) stay where they started. Every other run is the healthy CI pipeline's, seed for
    // seed.
    let ci = root().join("pipelines").join("ci.toml");
    let out = ok(graft(&store).current_dir(root()).args([
        "run",
        ci.to_str().unwrap(),
        "-S",
        "finetune.full_lr=1e-9",
        "-S",
        r#"propose.heuristics=[{ name = "gga", score = "rank", gamma = 0.6 }, { name = "top-k", score = "rank" }, { name = "parallel-all" }]"#,
        "-S",
        "finetune.placements=[]",
    ]));
    assert_eq!(status_of(&out, "finetune"), "ran", "{out}");

    let o = run(&mut bands(&store));
    let text = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{text}\n{}", stderr(&o));
    let line = text
        .lines()
        .find(|l| l.starts_with("CROSSED full above linear probe: full fine-tuning "))
        .unwrap_or_else(|| panic!("the full-above-linear-probe band held:\n{text}"));
    // The numbers: both means with each seed's accuracy, the difference and the band.
    for part in [
        "(seed 0: ",
        "seed 1: ",
        "− linear probe ",
        " points, below the band's +",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    // Only that band: the adapters, the probe and the heuristics were not broken, their
    // bands hold.
    for held in [
        "held    parallel-all above linear probe: ",
        "held    pretrained above random-init: ",
        "held    probe ranks within [1, d]: 25 edges",
        "held    gga picks high-rank edges: ",
        "held    top-k picks high-rank edges: ",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(held)),
            "{held:?} not in\n{text}"
        );
    }
    assert!(text.contains("bands: 1 of 6 crossed"), "{text}");
}
