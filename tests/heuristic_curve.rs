//! Issue 13: a heuristic is one file and one registry line, the report included. `step-k`
//! below is defined only here and registered by one line; graft-propose describes its rows
//! from the heuristic itself, and the report draws its budget curve with its label and a
//! colour of its own, with no change to the report crate.

use graft_graph::{Dims, Graph, GraphError, Placement};
use graft_propose::heuristics::{Entry, REGISTRY};
use graft_propose::{Context, Description, Fields, Heuristic, ParamError, ProposeParams};
use graft_tables::{Method, ModelInfo, ProbeRow, ProposalRow, RunRow, RunStatus};

// ---------------------------------------------------------------- the heuristic's file

const ENTRY: Entry = Entry {
    name: "step-k",
    about: "every step-th edge in row-major order, k of them",
    build,
    example: r#"{ name = "step-k", step = 2 }"#,
};

#[derive(Debug)]
struct StepK {
    step: usize,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(StepK {
        step: f.count("step", 2)?,
    }))
}

impl Heuristic for StepK {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        Description::budgeted(format!("step-k (step {})", self.step)).with("step", self.step)
    }

    fn candidates(&self, graph: Graph) -> usize {
        (graph.nodes() * graph.nodes()).div_ceil(self.step)
    }

    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError> {
        if budget > self.candidates(ctx.graph()) {
            return Ok(Vec::new());
        }
        let edges = ctx.graph().edges().step_by(self.step).take(budget);
        Ok(vec![Placement::new(ctx.graph(), edges)?])
    }
}

// ---------------------------------------------------------------- the test

fn model() -> ModelInfo {
    ModelInfo {
        preset: "test".into(),
        dims: Dims {
            image_size: 32,
            patch_size: 4,
            channels: 3,
            dim: 64,
            layers: 2,
            mlp_dim: 128,
            classes: 10,
        },
    }
}

fn probe(graph: Graph) -> Vec<ProbeRow> {
    graph
        .edges()
        .map(|e| {
            let s = 1.0 + ((e.i * 7 + e.j * 3) % 11) as f64;
            ProbeRow {
                i: e.i as i32,
                j: e.j as i32,
                kind: e.kind().name().into(),
                rank: s as i64,
                frobenius: s,
                spectral: s,
                nuclear: s,
                stable_rank: s,
                effective_rank: s,
                singular_values: vec![s],
            }
        })
        .collect()
}

/// Two finished seeds per placement, accuracy rising with the adapters.
fn runs(proposals: &[ProposalRow]) -> Vec<RunRow> {
    let mut out: Vec<RunRow> = Vec::new();
    for p in proposals {
        if out.iter().any(|r| r.placement_id == p.placement_id) {
            continue;
        }
        for seed in 0..2 {
            out.push(RunRow {
                placement_id: p.placement_id.clone(),
                method: p.method,
                protocol: Some("select".into()),
                seed,
                edges: p.edges.clone(),
                adapters: p.adapters,
                trainable_params: p.trainable_params,
                forward_flops: p.forward_flops,
                status: RunStatus::Ok,
                error: None,
                best_epoch: Some(1),
                val_accuracy: Some(0.5 + 0.02 * p.adapters as f64),
                test_accuracy: Some(0.5 + 0.02 * p.adapters as f64 + 0.001 * seed as f64),
                train_loss: Some(1.0),
                backend: "flex".into(),
                device: "cpu".into(),
                run_artifact: "0".repeat(64),
                weights_file: None,
            });
        }
    }
    out
}

#[test]
fn a_heuristic_defined_in_a_test_gets_a_labelled_coloured_budget_curve() {
    // The one registry line.
    let registry = [REGISTRY, &[ENTRY]].concat();

    let params: ProposeParams = serde_json::from_value(serde_json::json!({
        "heuristics": [{ "name": "gga" }, { "name": "step-k" }],
        "budgets": [1, 2, 3],
    }))
    .unwrap();
    // Only the extended registry knows it.
    let err = params.clone().validated().unwrap_err().to_string();
    assert!(err.contains("\"step-k\" is not a heuristic"), "{err}");
    let params = params.validated_in(&registry).unwrap();
    let model = model();
    let proposals =
        graft_propose::propose_in(&registry, &params, &model, probe(model.graph())).unwrap();
    let mine: Vec<&ProposalRow> = proposals
        .rows
        .iter()
        .filter(|r| r.heuristic == "step-k")
        .collect();
    assert_eq!(mine.len(), 3);
    for r in &mine {
        assert_eq!(
            (r.label.as_str(), r.params.as_str(), r.budgeted, r.method),
            ("step-k (step 2)", r#"{"step":2}"#, true, Method::Adapters)
        );
    }

    let data = graft_report::TaskData {
        task: "t".into(),
        probe: probe(model.graph()),
        model: Some(model),
        runs: runs(&proposals.rows),
        proposals: proposals.rows.clone(),
        ..Default::default()
    };
    let a = graft_report::analyse(vec![data.clone()]);
    let curve = a.tasks[0]
        .series
        .iter()
        .find(|s| s.heuristic == "step-k")
        .expect("no budget curve for step-k");
    assert_eq!(curve.label, "step-k (step 2)");
    assert_eq!(
        curve.points.iter().map(|p| p.adapters).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let colours = graft_report::figures::curve_colours(&a);
    let colour_of = |h: &str| {
        colours
            .iter()
            .find(|c| c.heuristic == h)
            .unwrap_or_else(|| panic!("no colour for {h}"))
            .hex()
    };
    let (gga, step) = (colour_of("gga"), colour_of("step-k"));
    assert_ne!(gga, step, "step-k shares gga's colour");

    let files = graft_report::build(vec![data], "t").unwrap();
    let text = |name: &str| {
        &files
            .files
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .1
    };
    let html = text("report.html");
    let start = html.find("id=\"figure-3\"").expect("figure 3");
    let figure = &html[start..start + html[start..].find("</figure>").unwrap()];
    assert!(
        figure.contains("step-k (step 2)"),
        "figure 3 has no legend entry for step-k"
    );
    assert!(
        figure.contains(&format!("stroke=\"{step}\"")),
        "figure 3 draws nothing in step-k's colour {step}"
    );
    let budgets = text("budgets.csv");
    assert_eq!(
        budgets
            .lines()
            .filter(|l| l.contains(",step-k (step 2),"))
            .count(),
        3,
        "{budgets}"
    );
}
