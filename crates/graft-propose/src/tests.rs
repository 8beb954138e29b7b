//! Stage-level tests: parameters, the proposals table, and the stage on a temporary store.

use std::collections::BTreeMap;
use std::path::Path;

use graft_graph::{Dims, Edge, Graph, Placement};
use graft_stage::{StageArgs, Status};
use graft_store::{ArtifactId, KeyInput, PublishInfo, Store};
use graft_tables::{ModelInfo, ProbeRow, ProposalRow, Table};

use super::*;
use crate::testing::probe_rows;

fn model(layers: usize) -> ModelInfo {
    ModelInfo {
        preset: "test".into(),
        dims: Dims {
            image_size: 32,
            patch_size: 4,
            channels: 3,
            dim: 64,
            layers,
            mlp_dim: 128,
            classes: 10,
        },
    }
}

/// Scores that rise towards the bottom-right corner, ties nowhere.
fn rows(layers: usize) -> Vec<ProbeRow> {
    let n = Graph::new(layers).nodes() as f64;
    probe_rows(Graph::new(layers), |e| e.i as f64 * n + e.j as f64)
}

fn params(assignments: &[&str]) -> Result<ProposeParams, String> {
    let mut obj = serde_json::Map::new();
    for a in assignments {
        let (k, v) = graft_stage::parse_assignment(a).unwrap();
        obj.insert(k, v);
    }
    let p: ProposeParams = serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    p.validated().map_err(|e| e.to_string())
}

fn param_error(assignments: &[&str]) -> String {
    params(assignments).unwrap_err()
}

#[test]
fn default_parameters_on_two_blocks() {
    let p = params(&[]).unwrap();
    assert_eq!(p, ProposeParams::default().validated().unwrap());
    let out = propose(&p, &model(2), rows(2)).unwrap();
    // gga and top-k: 5 budgets; first-k and last-k: budgets 1, 2, 3 (6 and 12 exceed the
    // 4 parallel edges); random-k: 5 budgets x 3 draws; parallel-all: one.
    assert_eq!(out.per_entry, [5, 5, 3, 3, 15, 1]);
    let skipped: Vec<(usize, usize, usize)> = out
        .skipped
        .iter()
        .map(|s| (s.index, s.budget, s.candidates))
        .collect();
    assert_eq!(skipped, [(2, 6, 4), (2, 12, 4), (3, 6, 4), (3, 12, 4)]);
    let budgets: Vec<i64> = out.rows.iter().map(|r| r.budget).collect();
    assert_eq!(budgets[..10], [1, 2, 3, 6, 12, 1, 2, 3, 6, 12]);
    for r in &out.rows {
        assert_eq!(r.budget, r.adapters, "{r:?}");
        assert_eq!(r.method, graft_tables::Method::Adapters);
        let p = graft_tables::placement(Graph::new(2), &r.edges).unwrap();
        assert_eq!(r.placement_id, p.id());
        let d = model(2).dims;
        assert_eq!(
            r.trainable_params as usize,
            d.adapter_tuning_params(p.len(), 8)
        );
        assert_eq!(
            r.forward_flops as u64,
            graft_graph::forward_flops(&d, &p, 8)
        );
        let scored = matches!(r.heuristic.as_str(), "gga" | "top-k");
        assert_eq!(r.score.is_some(), scored);
        // Every row describes its heuristic: gga's label and params carry γ.
        assert_eq!(r.budgeted, r.heuristic != "parallel-all", "{r:?}");
        assert!(r.label.starts_with(&r.heuristic), "{r:?}");
        if r.heuristic == "gga" {
            assert_eq!(r.label, "gga γ=0.6");
            assert_eq!(r.params, r#"{"gamma":0.6,"score":"rank"}"#);
        }
        if r.heuristic == "random-k" {
            assert_eq!(r.params, r#"{"draws":3}"#);
        }
    }
    let draws: Vec<i64> = out
        .rows
        .iter()
        .filter(|r| r.heuristic == "random-k")
        .map(|r| r.draw)
        .collect();
    assert_eq!(draws[..6], [0, 1, 2, 0, 1, 2]);
    // The scores rise to the corner (4, 4): top-1 is it, and gga and top-k agree at k = 1.
    assert_eq!(out.rows[0].edges, [Edge::new(4, 4).into()]);
    assert_eq!(out.rows[0].placement_id, out.rows[5].placement_id);
    let summary = summary(&p, &model(2), &out);
    assert!(summary.contains("skipped budgets 6, 12"), "{summary}");
}

#[test]
fn identical_placements_share_an_id_and_keep_their_rows() {
    let p = params(&["budgets=[4]"]).unwrap();
    let out = propose(&p, &model(2), rows(2)).unwrap();
    let all = Graph::new(2).parallel_all().id();
    let same: Vec<&str> = out
        .rows
        .iter()
        .filter(|r| r.placement_id == all)
        .map(|r| r.heuristic.as_str())
        .collect();
    assert_eq!(same, ["first-k", "last-k", "parallel-all"]);
    assert!(out.distinct() < out.rows.len());
}

#[test]
fn budget_independent_heuristics_emit_once() {
    let p = params(&[
        r#"heuristics=[{name="parallel-all"}, {name="single-sweep", kinds=["sequential"]}, {name="manual", edges=[[4, 2], [0, 1]]}]"#,
        "budgets=[1, 2, 3]",
    ])
    .unwrap();
    let out = propose(&p, &model(2), rows(2)).unwrap();
    assert_eq!(out.per_entry, [1, 5, 1]);
    let manual = out.rows.last().unwrap();
    assert_eq!(manual.budget, 2);
    assert_eq!(
        manual.edges,
        [Edge::new(0, 1).into(), Edge::new(4, 2).into()]
    );
    let g = Graph::new(2);
    let want = Placement::new(g, [Edge::new(4, 2), Edge::new(0, 1)]).unwrap();
    assert_eq!(manual.placement_id, want.id());
    // A second pass from node 2: more FLOPs than the same number of forward adapters.
    let forward = Placement::new(g, [Edge::new(0, 1), Edge::new(1, 2)]).unwrap();
    let d = model(2).dims;
    assert!(manual.forward_flops as u64 > graft_graph::forward_flops(&d, &forward, 8));
}

#[test]
fn defaults_written_out_are_the_defaults() {
    let explicit = params(&[
        r#"heuristics=[{name="gga"}, {name="top-k", score="rank"}, {name="first-k"}, {name="last-k"}, {name="random-k"}, {name="parallel-all"}]"#,
        "budgets=[12, 6, 3, 2, 1]",
        "seed=0",
        "bottleneck=8",
    ])
    .unwrap();
    assert_eq!(explicit, params(&[]).unwrap());
    // γ written as an integer is the same number.
    let a = params(&[r#"heuristics=[{name="gga", gamma=0}]"#]).unwrap();
    let b = params(&[r#"heuristics=[{name="gga", gamma=0.0, score="rank"}]"#]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn bad_parameters_name_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[r#"heuristics=[{name="gga"}, {name="top-k"}, {name="gga", gamma=1.5}]"#],
            "heuristics[2].gamma = 1.5 must be in [0, 1)",
        ),
        (
            &[r#"heuristics=[{name="gag"}]"#],
            "heuristics[0].name = \"gag\" is not a heuristic (known: gga, top-k, first-k, \
             last-k, random-k, parallel-all, single-sweep, manual)",
        ),
        (
            &[r#"heuristics=[{score="rank"}]"#],
            "heuristics[0].name is missing (known: gga,",
        ),
        (
            &[r#"heuristics=[{name="top-k", score="ranks"}]"#],
            "heuristics[0].score = \"ranks\" is not a score column (known: rank, frobenius, \
             spectral, nuclear, stable_rank, effective_rank)",
        ),
        (
            &[r#"heuristics=[{name="top-k", gamma=0.5}]"#],
            "heuristics[0].gamma is not a field of top-k (top-k takes: score)",
        ),
        (
            &[r#"heuristics=[{name="first-k", score="rank"}]"#],
            "heuristics[0].score is not a field of first-k (first-k takes no fields besides name)",
        ),
        (
            &[r#"heuristics=[{name="random-k", draws=0}]"#],
            "heuristics[0].draws = 0 must be a whole number >= 1",
        ),
        (
            &[r#"heuristics=[{name="single-sweep", kinds=["parallel", "diagonal"]}]"#],
            "heuristics[0].kinds[1] = \"diagonal\" is not an edge kind (known: parallel, \
             sequential, long-range, recurrent)",
        ),
        (
            &[r#"heuristics=[{name="parallel-all"}, {name="single-sweep", stride=6}]"#],
            "heuristics[1].stride is no longer a field of single-sweep: a row-major stride \
             aliases",
        ),
        (
            &[r#"heuristics=[{name="single-sweep", per_kind=0}]"#],
            "heuristics[0].per_kind = 0 must be a whole number >= 1 or \"all\"",
        ),
        (
            &[r#"heuristics=[{name="manual", edges=[[0, 1], [0, 1]]}]"#],
            "heuristics[0].edges[1] = [0,1] repeats edges[0]",
        ),
        (
            &[r#"heuristics=[{name="manual", edges=[[0, -1]]}]"#],
            "heuristics[0].edges[0] = [0,-1] must be [i, j] with node numbers i, j >= 0",
        ),
        (
            &[r#"heuristics=[{name="manual"}]"#],
            "heuristics[0].edges is missing",
        ),
        (
            &[r#"heuristics=[{name="gga"}, {name="gga", gamma=0.6}]"#],
            "heuristics[1] repeats heuristics[0]",
        ),
        (&["heuristics=[]"], "heuristics is empty"),
        (&["budgets=[1, 0]"], "budgets[1] = 0 must be at least 1"),
        (&["budgets=[2, 3, 2]"], "budgets[2] = 2 repeats budgets[0]"),
        (
            &["budgets=[]"],
            "budgets is empty but heuristics[0] (gga) needs a budget",
        ),
        (&["bottleneck=0"], "bottleneck = 0 must be at least 1"),
        (&["budget=3"], "unknown field `budget`"),
    ];
    for (assignments, want) in cases {
        let got = param_error(assignments);
        assert!(
            got.starts_with(want) || got.contains(want),
            "{assignments:?}:\n  got  {got}\n  want {want}"
        );
    }
    // Budget-independent heuristics need no budgets.
    params(&["budgets=[]", r#"heuristics=[{name="parallel-all"}]"#]).unwrap();
}

#[test]
fn a_probe_that_misses_an_edge_is_named() {
    let p = params(&[]).unwrap();
    let mut r = rows(2);
    r.retain(|row| (row.i, row.j) != (3, 1));
    let err = propose(&p, &model(2), r).unwrap_err().to_string();
    assert_eq!(
        err,
        "probe.parquet: probe table has no row for edge (3, 1): expected all 25 edges of 2 blocks"
    );
    let mut r = rows(2);
    r[7].j = 9;
    let err = propose(&p, &model(2), r).unwrap_err().to_string();
    assert!(
        err.contains("probe row 7: edge (1, 9) is outside the graph"),
        "{err}"
    );
}

fn publish_probe(store: &Store, layers: usize) -> ArtifactId {
    let publisher = store.begin().unwrap();
    ProbeRow::write(&publisher.file(ProbeRow::FILE), &rows(layers)).unwrap();
    model(layers)
        .write(&publisher.file(ModelInfo::FILE))
        .unwrap();
    let (params, inputs) = (BTreeMap::new(), BTreeMap::new());
    let key = KeyInput {
        stage: "probe",
        stage_version: 1,
        params: &params,
        inputs: &inputs,
    }
    .key();
    publisher
        .publish(PublishInfo {
            stage: "probe",
            stage_version: 1,
            key: &key,
            params: &params,
            inputs: &inputs,
            extra: BTreeMap::new(),
            wall_seconds: 0.0,
        })
        .unwrap()
        .id
}

/// Stage arguments parsed the way the binary parses them (`--store`, `-i`, `-p`), so the
/// test keeps working when the shared command line grows.
fn args(store: &Path, probe: &ArtifactId, params: &[&str]) -> StageArgs {
    use clap::{Args, FromArgMatches};
    let mut argv = vec![
        "graft-propose".to_owned(),
        "--store".to_owned(),
        store.display().to_string(),
        "--input".to_owned(),
        format!("probe={probe}"),
    ];
    for p in params {
        argv.push("--param".to_owned());
        argv.push(p.to_string());
    }
    let matches = StageArgs::augment_args(clap::Command::new("graft-propose"))
        .try_get_matches_from(argv)
        .unwrap();
    StageArgs::from_arg_matches(&matches).unwrap()
}

#[test]
fn the_stage_publishes_the_proposals_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let probe = publish_probe(&store, 2);

    let outcome = graft_stage::execute::<Propose>(&args(dir.path(), &probe, &[])).unwrap();
    assert_eq!(outcome.status, Status::Ran);
    let id = outcome.artifact.unwrap();
    let artifact = store.artifact(&id).unwrap();
    let table = ProposalRow::read(&artifact.file(ProposalRow::FILE)).unwrap();
    let want = propose(&params(&[]).unwrap(), &model(2), rows(2)).unwrap();
    assert_eq!(table, want.rows);
    let extra = &artifact.manifest().extra;
    assert_eq!(extra["rows"], json!(32));
    assert_eq!(extra["placements"], json!(want.distinct()));
    assert_eq!(extra["per_heuristic"]["random-k"], json!(15));
    assert_eq!(extra["skipped"].as_array().unwrap().len(), 4);

    // The defaults written out are the same key: fresh.
    let explicit = args(
        dir.path(),
        &probe,
        &["budgets=[12, 6, 3, 2, 1]", "bottleneck=8", "seed=0"],
    );
    let again = graft_stage::execute::<Propose>(&explicit).unwrap();
    assert_eq!(again.status, Status::Fresh);
    assert_eq!(again.artifact, Some(id.clone()));

    // A new seed moves random-k only, and says so.
    let seeded = graft_stage::execute::<Propose>(&args(dir.path(), &probe, &["seed=3"])).unwrap();
    assert_eq!(seeded.status, Status::Ran);
    assert!(
        seeded.reasons.iter().any(|r| r.contains("seed")),
        "{:?}",
        seeded.reasons
    );
    assert_ne!(seeded.artifact, Some(id));
}

#[test]
fn the_stage_rejects_bad_parameters_and_edges_outside_the_graph() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let probe = publish_probe(&store, 2);

    let mut check = args(
        dir.path(),
        &probe,
        &[r#"heuristics=[{name="gga", gamma=1.5}]"#],
    );
    check.check = true;
    let err = graft_stage::execute::<Propose>(&check)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "propose: bad parameter: heuristics[0].gamma = 1.5 must be in [0, 1)"
    );

    let outside = args(
        dir.path(),
        &probe,
        &[r#"heuristics=[{name="manual", edges=[[0, 1], [0, 9]]}]"#],
    );
    let err = graft_stage::execute::<Propose>(&outside)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "propose: heuristics[0] (manual): edge (0, 9) is outside the graph: nodes are 0..=4 for 2 blocks"
    );
    // Nothing was published: the store holds the probe only.
    assert_eq!(store.objects().unwrap(), [probe]);
}
