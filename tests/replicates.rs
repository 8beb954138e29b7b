//! `pipelines/replicates.toml` shrunk to a miniature: two backbones and both targets
//! expand from its two-axis matrix, every chain runs, and the report pools each claim over
//! the backbones, per target, with C6 per backbone.

use crate::common::*;
use crate::dtd::overrides;

/// Shrinks every stage of the file to seconds on the CPU, two backbones.
fn mini() -> Vec<String> {
    overrides(&[
        "vars.backbones=[0, 1]".to_owned(),
        "prep-source.image_size=16".into(),
        "prep-source.train=256".into(),
        "prep-source.val=32".into(),
        "prep-source.test=32".into(),
        "pretrain.preset=\"vit-cpu-tiny\"".into(),
        "pretrain.epochs=1".into(),
        "pretrain.warmup_epochs=0.0".into(),
        "pretrain.batch=32".into(),
        "pretrain.min_test_accuracy=0.0".into(),
        "prep.image_size=16".into(),
        "prep.train=64".into(),
        "prep.val=16".into(),
        "prep.test=48".into(),
        "probe.batch=16".into(),
        "probe.batches=1".into(),
        "probe.head_epochs=1".into(),
        "propose.budgets=[1, 2]".into(),
        "propose.heuristics=[{ name = \"gga\", score = \"rank\", gamma = 0.6 }, { name = \"top-k\", score = \"rank\" }, { name = \"parallel-all\" }, { name = \"single-sweep\", per_kind = 2, seed = 0 }]".into(),
        "finetune.seeds=[0, 1]".into(),
        "finetune.sweep_repeats=2".into(),
        "finetune.epochs=1".into(),
        "finetune.batch=16".into(),
    ])
}

#[test]
fn the_replicates_file_pools_claims_over_backbones() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let pipe = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/replicates.toml");
    let out = ok(graft(&store).args(["run", pipe]).args(mini()));
    for b in ["0", "1"] {
        assert_eq!(status_of(&out, &format!("pretrain@{b}")), "ran", "{out}");
        for t in ["textures", "colours"] {
            for stage in ["probe", "propose", "finetune"] {
                assert_eq!(status_of(&out, &format!("{stage}@{b}-{t}")), "ran", "{out}");
            }
        }
    }
    assert_eq!(status_of(&out, "report"), "ran", "{out}");
    let report = store
        .join("objects")
        .join(slot_artifact(&store, "replicates/report"));
    let summary = std::fs::read_to_string(report.join("summary.md")).unwrap();
    let claims_at = summary.find("## Claims").expect("no claims section");
    assert!(
        claims_at < summary.find("## Findings").unwrap(),
        "claims come first"
    );
    assert!(
        summary.contains("The replicate is the backbone"),
        "{summary}"
    );
    // Backbones are the columns; every claim row is per target, C6 per pair of targets.
    for col in ["backbone 0", "backbone 1"] {
        assert!(summary.contains(col), "{col}: {summary}");
    }
    let csv = std::fs::read_to_string(report.join("claims.csv")).unwrap();
    for needle in [
        "C4,gga beats parallel-all,textures,\"gga γ=0.6 vs parallel-all, 1 adapter\"",
        "C6,",
        "textures vs colours",
        ",pooled,",
    ] {
        assert!(csv.contains(needle), "{needle}: {csv}");
    }
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<figure class=\"forest\">"), "no forest plot");
    let again = ok(graft(&store).args(["run", pipe]).args(mini()));
    let reran: Vec<&str> = again
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ran"))
        .collect();
    assert!(reran.is_empty(), "{again}");
}
