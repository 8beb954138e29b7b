//! Planning: what the stage trains. The proposal rows, the pipeline file's manual
//! placements and the baselines become rows of `proposals.parquet` ([`rows_to_train`]), and
//! the rows times the seeds become one [`RunSpec`] per distinct placement id and seed
//! ([`run_specs`]). Pure: no store, no tensors, no files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use graft_graph::{Dims, EdgeKind, Graph, Placement};
use graft_stage::BoxError;
use graft_store::ArtifactId;
use graft_tables::{ProposalRow, SWEEP_HEURISTIC, edge_rows};
use graft_train::TrainProtocol;

use crate::FinetuneParams;
use crate::run::{Method, Protocol, RunSpec};

/// The rows to train, in order: the proposals (`proposals`, read from `path`, each checked
/// against `graph`), then the manual placements, then the baselines. `r` is the adapters'
/// bottleneck, for the parameter and FLOP counts of the rows made here.
pub fn rows_to_train(
    p: &FinetuneParams,
    graph: Graph,
    dims: &Dims,
    proposals: Option<(&Path, Vec<ProposalRow>)>,
) -> Result<Vec<ProposalRow>, BoxError> {
    let r = p.bottleneck;
    let mut rows: Vec<ProposalRow> = Vec::new();
    if let Some((path, proposals)) = proposals {
        for row in proposals {
            let placement = graft_tables::placement(graph, &row.edges)
                .map_err(|e| format!("{}: placement {}: {e}", path.display(), row.placement_id))?;
            if row.method == Method::Adapters && placement.id() != row.placement_id {
                return Err(format!(
                    "{}: placement_id {} does not match its edges (expected {})",
                    path.display(),
                    row.placement_id,
                    placement.id()
                )
                .into());
            }
            rows.push(row);
        }
    }
    let adapter_row = |heuristic: &str, placement: &Placement| ProposalRow {
        placement_id: placement.id(),
        heuristic: heuristic.to_owned(),
        label: heuristic.to_owned(),
        params: "{}".into(),
        budgeted: false,
        score: None,
        budget: placement.len() as i64,
        draw: 0,
        method: Method::Adapters,
        edges: edge_rows(placement),
        adapters: placement.len() as i64,
        trainable_params: dims.adapter_tuning_params(placement.len(), r) as i64,
        forward_flops: graft_graph::forward_flops(dims, placement, r) as i64,
    };
    for placement in crate::manual_placements(p, graph)? {
        rows.push(adapter_row("manual", &placement));
    }
    for b in &p.baselines {
        let row = match b.as_str() {
            "parallel-all" => adapter_row("parallel-all", &graph.parallel_all()),
            "random-init" => ProposalRow {
                placement_id: format!("random-init-{}", graph.parallel_all().id()),
                method: Method::AdaptersRandomInit,
                label: Method::AdaptersRandomInit.name().into(),
                ..adapter_row("baseline", &graph.parallel_all())
            },
            "lora" => lora_row(p, dims),
            m => ProposalRow {
                placement_id: m.to_owned(),
                heuristic: "baseline".into(),
                label: m.to_owned(),
                params: "{}".into(),
                budgeted: false,
                score: None,
                budget: 0,
                draw: 0,
                method: Method::parse(m)
                    .ok_or_else(|| format!("baselines: {m:?} is not a baseline"))?,
                edges: vec![],
                adapters: 0,
                trainable_params: 0,
                forward_flops: graft_graph::forward_flops(dims, &Placement::empty(), r) as i64,
            },
        };
        rows.push(row);
    }
    Ok(rows)
}

/// The `lora` baseline's row: no adapters, LoRA's factors and the head as its trainable
/// parameters, its rank and alpha as its parameters.
fn lora_row(p: &FinetuneParams, dims: &Dims) -> ProposalRow {
    let r = p.lora_rank;
    ProposalRow {
        placement_id: Method::Lora.name().into(),
        heuristic: "baseline".into(),
        label: Method::Lora.name().into(),
        params: graft_tables::canonical_json(
            &serde_json::json!({ "alpha": p.lora_alpha, "rank": r }),
        ),
        budgeted: false,
        score: None,
        budget: 0,
        draw: 0,
        method: Method::Lora,
        edges: vec![],
        adapters: 0,
        trainable_params: dims.lora_tuning_params(r) as i64,
        forward_flops: (graft_graph::forward_flops(dims, &Placement::empty(), p.bottleneck)
            + dims.lora_flops(r)) as i64,
    }
}

/// What every run of the stage shares besides the parameters: the base model and the
/// dataset, and where their files are.
#[derive(Debug, Clone, PartialEq)]
pub struct RunContext {
    pub preset: String,
    pub dataset: ArtifactId,
    pub dataset_dir: PathBuf,
    pub base: ArtifactId,
    pub base_path: PathBuf,
}

/// What to train: one spec per distinct placement id of `rows` and seed, in row order then
/// seed order, and how many distinct placements that is.
#[derive(Debug, Clone, PartialEq)]
pub struct RunPlan {
    pub specs: Vec<RunSpec>,
    pub placements: usize,
}

/// The seeds each distinct placement id of `rows` trains at: `p.seeds`, except for the
/// placements that only [`SWEEP_HEURISTIC`] rows propose when `p.sweep_seeds` is set. Those
/// take `sweep_seeds`, and `p.sweep_repeats` of them take the union of both lists: chosen in
/// row order, one edge kind after another (parallel, sequential, long-range, recurrent,
/// then round again), so the repeated edges cover the kinds the sweep has.
pub fn placement_seeds(p: &FinetuneParams, rows: &[ProposalRow]) -> BTreeMap<String, Vec<u64>> {
    let mut sweep_only: Vec<&ProposalRow> = Vec::new();
    let mut others = BTreeSet::new();
    for row in rows {
        if row.heuristic != SWEEP_HEURISTIC {
            others.insert(row.placement_id.as_str());
        }
    }
    let mut seen = BTreeSet::new();
    for row in rows {
        if row.heuristic == SWEEP_HEURISTIC
            && !others.contains(row.placement_id.as_str())
            && seen.insert(row.placement_id.as_str())
        {
            sweep_only.push(row);
        }
    }
    let mut out: BTreeMap<String, Vec<u64>> = rows
        .iter()
        .map(|r| (r.placement_id.clone(), p.seeds.clone()))
        .collect();
    let Some(sweep_seeds) = &p.sweep_seeds else {
        return out;
    };
    for row in &sweep_only {
        out.insert(row.placement_id.clone(), sweep_seeds.clone());
    }
    // Round-robin over kinds in the sweep's order.
    let mut queues: Vec<Vec<&ProposalRow>> = EdgeKind::ALL
        .iter()
        .map(|&k| {
            sweep_only
                .iter()
                .copied()
                .filter(|r| r.edges.first().map(|e| e.edge().kind()) == Some(k))
                .rev()
                .collect()
        })
        .collect();
    // A repeated edge's seeds: the sweep's, then the rest of `seeds`.
    let mut repeated = sweep_seeds.clone();
    for s in &p.seeds {
        if !repeated.contains(s) {
            repeated.push(*s);
        }
    }
    let mut left = p.sweep_repeats;
    while left > 0 && queues.iter().any(|q| !q.is_empty()) {
        for q in &mut queues {
            if left == 0 {
                break;
            }
            if let Some(row) = q.pop() {
                out.insert(row.placement_id.clone(), repeated.clone());
                left -= 1;
            }
        }
    }
    out
}

/// Every seed any run of the stage uses, sorted.
pub fn all_seeds(p: &FinetuneParams) -> Vec<u64> {
    let mut v: BTreeSet<u64> = p.seeds.iter().copied().collect();
    v.extend(p.sweep_seeds.iter().flatten().copied());
    v.into_iter().collect()
}

/// One [`RunSpec`] per distinct placement id of `rows` and each of its seeds
/// ([`placement_seeds`]); `full` runs at `p.full_lr`, the others at `p.train.lr`. An unknown
/// method is an error naming the placement.
pub fn run_specs(
    p: &FinetuneParams,
    rows: &[ProposalRow],
    ctx: &RunContext,
) -> Result<RunPlan, BoxError> {
    let protocol = |lr: f64| Protocol {
        kind: p.protocol,
        train: TrainProtocol {
            lr,
            ..p.train.clone()
        },
        bottleneck: p.bottleneck,
        adapter_act: p.adapter_act,
        adapter_scale: p.adapter_scale,
        lora: None,
        precision: p.precision,
    };
    let lora = graft_model::LoraConfig::new()
        .with_rank(p.lora_rank)
        .with_alpha(p.lora_alpha);
    let seeds = placement_seeds(p, rows);
    let mut seen = BTreeSet::new();
    let mut specs = Vec::new();
    for row in rows {
        if !seen.insert(row.placement_id.clone()) {
            continue;
        }
        let method = row.method;
        let lr = if method == Method::Full {
            p.full_lr
        } else {
            p.train.lr
        };
        for &seed in &seeds[&row.placement_id] {
            specs.push(RunSpec {
                placement_id: row.placement_id.clone(),
                method,
                edges: row.edges.iter().map(|e| e.edge()).collect(),
                seed,
                preset: ctx.preset.clone(),
                protocol: Protocol {
                    lora: (method == Method::Lora).then(|| lora.clone()),
                    ..protocol(lr)
                },
                dataset: ctx.dataset.clone(),
                base: ctx.base.clone(),
                base_path: ctx.base_path.clone(),
                dataset_dir: ctx.dataset_dir.clone(),
                device: p.device.clone(),
                cache: crate::workbench::CacheSettings {
                    enabled: p.activation_cache,
                    memory_mib: p.cache_memory_mib,
                    device_memory_mib: p.cache_device_memory_mib,
                },
                loss_every: (p.loss_every > 0).then_some(p.loss_every),
            });
        }
    }
    Ok(RunPlan {
        specs,
        placements: seen.len(),
    })
}

#[cfg(test)]
mod tests {
    use graft_graph::Edge;
    use graft_model::VitConfig;

    use super::*;

    fn params(toml_like: serde_json::Value) -> FinetuneParams {
        serde_json::from_value(toml_like).unwrap()
    }

    fn ctx() -> RunContext {
        RunContext {
            preset: "vit-cpu-tiny".into(),
            dataset: ArtifactId::parse(&"a".repeat(64)).unwrap(),
            dataset_dir: "data".into(),
            base: ArtifactId::parse(&"b".repeat(64)).unwrap(),
            base_path: "base.safetensors".into(),
        }
    }

    fn graph_dims() -> (Graph, Dims) {
        let c = VitConfig::preset("vit-cpu-tiny", 4).unwrap();
        (c.graph(), c.dims())
    }

    #[test]
    fn proposals_then_manual_then_baselines_one_spec_per_placement_and_seed() {
        let (graph, dims) = graph_dims();
        let p = params(serde_json::json!({
            "proposals": true,
            "placements": [{ "name": "mine", "edges": [[0, 1], [2, 3]] }],
            "baselines": ["linear-probe", "full", "parallel-all", "random-init"],
            "seeds": [0, 1],
            "lr": 0.001,
            "full_lr": 0.0001,
        }));
        let a = Placement::new(graph, [Edge::new(0, 1), Edge::new(2, 3)]).unwrap();
        let b = Placement::new(graph, [Edge::new(1, 1)]).unwrap();
        let proposal = |pl: &Placement, heuristic: &str| ProposalRow {
            placement_id: pl.id(),
            heuristic: heuristic.into(),
            score: Some("rank".into()),
            label: heuristic.into(),
            params: "{}".into(),
            budgeted: true,
            budget: pl.len() as i64,
            draw: 0,
            method: Method::Adapters,
            edges: edge_rows(pl),
            adapters: pl.len() as i64,
            trainable_params: 1,
            forward_flops: 2,
        };
        // The manual placement repeats the first proposal: one placement, trained once.
        let proposals = vec![proposal(&a, "top-k"), proposal(&b, "gga")];
        let rows =
            rows_to_train(&p, graph, &dims, Some((Path::new("p.parquet"), proposals))).unwrap();
        let names: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.heuristic.as_str(), r.method.name()))
            .collect();
        assert_eq!(
            names,
            [
                ("top-k", "adapters"),
                ("gga", "adapters"),
                ("manual", "adapters"),
                ("baseline", "linear-probe"),
                ("baseline", "full"),
                ("parallel-all", "adapters"),
                ("baseline", "adapters-random-init"),
            ]
        );
        assert_eq!(rows[2].placement_id, a.id());
        assert_eq!(
            rows[2].trainable_params,
            dims.adapter_tuning_params(2, 8) as i64
        );
        assert_eq!(rows[3].placement_id, "linear-probe");
        assert_eq!(
            rows[6].placement_id,
            format!("random-init-{}", graph.parallel_all().id())
        );

        let plan = run_specs(&p, &rows, &ctx()).unwrap();
        assert_eq!(plan.placements, 6);
        assert_eq!(plan.specs.len(), 12);
        let order: Vec<(String, u64)> = plan
            .specs
            .iter()
            .map(|s| (s.placement_id.clone(), s.seed))
            .collect();
        assert_eq!(order[0], (a.id(), 0));
        assert_eq!(order[1], (a.id(), 1));
        assert_eq!(order[2], (b.id(), 0));
        let full = plan
            .specs
            .iter()
            .find(|s| s.method == Method::Full)
            .unwrap();
        assert_eq!(full.protocol.train.lr, 1e-4);
        assert!(full.edges.is_empty());
        let adapters = &plan.specs[0];
        assert_eq!(adapters.protocol.train.lr, 1e-3);
        assert_eq!(adapters.edges, vec![Edge::new(0, 1), Edge::new(2, 3)]);
        assert_eq!(adapters.preset, "vit-cpu-tiny");
        assert_eq!(adapters.device, "cpu");
        // The spec's key does not depend on where the files are.
        let moved = RunContext {
            dataset_dir: "elsewhere".into(),
            base_path: "other.safetensors".into(),
            ..ctx()
        };
        let again = run_specs(&p, &rows, &moved).unwrap();
        assert_eq!(again.specs[0].key(), plan.specs[0].key());
    }

    /// A one-seed sweep: sweep-only edges at `sweep_seeds`, `sweep_repeats` of them at every
    /// seed too (one edge kind after another), and a sweep edge another heuristic also chose
    /// at `seeds` like every other placement.
    #[test]
    fn a_sweep_at_its_own_seeds_repeats_edges_round_the_kinds() {
        let (graph, dims) = graph_dims();
        let p = params(serde_json::json!({
            "proposals": true,
            "baselines": ["linear-probe"],
            "seeds": [0, 1, 2],
            "sweep_seeds": [0],
            "sweep_repeats": 3,
        }));
        let single = |i: usize, j: usize, heuristic: &str| {
            let pl = Placement::new(graph, [Edge::new(i, j)]).unwrap();
            ProposalRow {
                placement_id: pl.id(),
                heuristic: heuristic.into(),
                score: None,
                label: heuristic.into(),
                params: "{}".into(),
                budgeted: false,
                budget: 1,
                draw: 0,
                method: Method::Adapters,
                edges: edge_rows(&pl),
                adapters: 1,
                trainable_params: 1,
                forward_flops: 2,
            }
        };
        let proposals = vec![
            single(0, 1, "gga"),
            single(0, 1, SWEEP_HEURISTIC),
            single(1, 2, SWEEP_HEURISTIC),
            single(2, 3, SWEEP_HEURISTIC),
            single(0, 3, SWEEP_HEURISTIC),
            single(3, 0, SWEEP_HEURISTIC),
            single(2, 2, SWEEP_HEURISTIC),
            single(4, 1, SWEEP_HEURISTIC),
        ];
        let rows =
            rows_to_train(&p, graph, &dims, Some((Path::new("p.parquet"), proposals))).unwrap();
        let plan = run_specs(&p, &rows, &ctx()).unwrap();
        let seeds_of = |i: usize, j: usize| -> Vec<u64> {
            let id = Placement::new(graph, [Edge::new(i, j)]).unwrap().id();
            plan.specs
                .iter()
                .filter(|s| s.placement_id == id)
                .map(|s| s.seed)
                .collect()
        };
        // (0,1) is also gga's: all seeds. Repeats: the first parallel sweep-only edge (1,2),
        // the first sequential (2,2), the first long-range (0,3); none left for recurrent.
        assert_eq!(seeds_of(0, 1), [0, 1, 2]);
        assert_eq!(seeds_of(1, 2), [0, 1, 2]);
        assert_eq!(seeds_of(2, 2), [0, 1, 2]);
        assert_eq!(seeds_of(0, 3), [0, 1, 2]);
        assert_eq!(seeds_of(2, 3), [0]);
        assert_eq!(seeds_of(3, 0), [0]);
        assert_eq!(seeds_of(4, 1), [0]);
        let lp: Vec<u64> = plan
            .specs
            .iter()
            .filter(|s| s.placement_id == "linear-probe")
            .map(|s| s.seed)
            .collect();
        assert_eq!(lp, [0, 1, 2]);
        assert_eq!(plan.placements, 8);
        assert_eq!(plan.specs.len(), 5 * 3 + 3);
        assert_eq!(all_seeds(&p), [0, 1, 2]);

        // More repeats than sweep-only edges: every one of them at every seed.
        let all = FinetuneParams {
            sweep_repeats: 99,
            ..p.clone()
        };
        assert!(placement_seeds(&all, &rows).values().all(|s| s.len() == 3));
        // Without sweep_seeds the sweep trains at `seeds`, and the key-relevant JSON of
        // params without the new fields is what it was (existing keys unchanged).
        let plain = params(serde_json::json!({ "proposals": true, "seeds": [0, 1] }));
        assert!(
            placement_seeds(&plain, &rows)
                .values()
                .all(|s| s == &[0, 1])
        );
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("sweep_seeds").is_none() && json.get("sweep_repeats").is_none());
    }

    /// The `lora` baseline: one row with LoRA's parameter count and its rank and alpha, runs
    /// at `lr` whose protocol carries them; no other run's protocol does, and the stage's
    /// params leave `lora_rank` and `lora_alpha` out at their defaults (existing stage keys
    /// unchanged).
    #[test]
    fn the_lora_baseline_is_one_row_and_only_its_runs_carry_its_rank() {
        let (graph, dims) = graph_dims();
        let p = params(serde_json::json!({
            "baselines": ["parallel-all", "lora"],
            "seeds": [0, 1],
            "lr": 0.003,
            "lora_rank": 4,
        }));
        let rows = rows_to_train(&p, graph, &dims, None).unwrap();
        let lora = &rows[1];
        assert_eq!(
            (lora.placement_id.as_str(), lora.method, lora.adapters),
            ("lora", Method::Lora, 0)
        );
        // 2 blocks x q and v x (4 x 64 + 64 x 4), and the head of 4 classes.
        assert_eq!(lora.trainable_params, 2 * 2 * 2 * 4 * 64 + 64 * 4 + 4);
        assert_eq!(lora.params, r#"{"alpha":8.0,"rank":4}"#);
        let plain = graft_graph::forward_flops(&dims, &Placement::empty(), 8);
        assert_eq!(lora.forward_flops as u64, plain + dims.lora_flops(4));
        let plan = run_specs(&p, &rows, &ctx()).unwrap();
        assert_eq!(plan.specs.len(), 4);
        for s in &plan.specs {
            assert_eq!(s.protocol.train.lr, 3e-3);
            let want = (s.method == Method::Lora)
                .then(|| graft_model::LoraConfig::new().with_rank(4).with_alpha(8.0));
            assert_eq!(s.protocol.lora, want, "{}", s.placement_id);
        }
        assert!(plan.specs.iter().all(|s| s.protocol.precision.is_f32()));
        let bf16 = FinetuneParams {
            precision: graft_model::Precision::Bf16,
            ..p.clone()
        };
        let plan = run_specs(&bf16, &rows, &ctx()).unwrap();
        assert!(
            plan.specs
                .iter()
                .all(|s| s.protocol.precision == graft_model::Precision::Bf16)
        );
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["lora_rank"], 4);
        assert!(json.get("lora_alpha").is_none());
        let plain = serde_json::to_value(params(serde_json::json!({}))).unwrap();
        assert!(plain.get("lora_rank").is_none() && plain.get("lora_alpha").is_none());
    }

    #[test]
    fn bad_proposals_are_named() {
        let (graph, dims) = graph_dims();
        let p = params(serde_json::json!({ "proposals": true, "baselines": [] }));
        let a = Placement::new(graph, [Edge::new(0, 1)]).unwrap();
        let row = ProposalRow {
            placement_id: "not-its-id".into(),
            heuristic: "x".into(),
            score: None,
            label: "x".into(),
            params: "{}".into(),
            budgeted: false,
            budget: 1,
            draw: 0,
            method: Method::Adapters,
            edges: edge_rows(&a),
            adapters: 1,
            trainable_params: 0,
            forward_flops: 0,
        };
        let path = Path::new("in/proposals.parquet");
        let err = rows_to_train(&p, graph, &dims, Some((path, vec![row.clone()])))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("in/proposals.parquet") && err.contains("does not match its edges"),
            "{err}"
        );
        let outside = ProposalRow {
            edges: vec![graft_tables::EdgeRow { i: 0, j: 99 }],
            ..row.clone()
        };
        let err = rows_to_train(&p, graph, &dims, Some((path, vec![outside])))
            .unwrap_err()
            .to_string();
        assert!(err.contains("placement not-its-id"), "{err}");
    }
}
