//! The placement proposal stage: turns a probe artifact and a list of budgets into adapter
//! placements, one row each in `proposals.parquet` ([`graft_tables::ProposalRow`]).
//!
//! [`Propose`] is the [`graft_stage::Stage`]; its parameters are [`ProposeParams`]; the
//! work is the pure function [`propose`] (no I/O: the stage reads and writes around it).
//! Each placement heuristic implements the [`Heuristic`] trait in its own file under
//! `src/heuristics/` and is registered by one line in [`heuristics::REGISTRY`]; the
//! registry's property test runs every entry, so a new heuristic is tested without touching
//! a test (a test may also run the stage with an entry of its own: [`propose_in`]). A
//! heuristic reads a [`Context`]: the [`Probe`] table (every edge of the graph exactly once)
//! and the seed, and describes itself ([`Heuristic::describe`]: label, parameters with
//! defaults filled in, whether it is budgeted) in every row it proposes, which is all the
//! report knows of it. Its parameter table is read through [`Fields`], which names
//! the field in every error and fills in defaults, so that writing a default explicitly
//! leaves the stage key unchanged.
//!
//! | heuristic | budget | placements |
//! |---|---|---|
//! | `gga` (score, gamma) | per budget | greedy by score, discounting neighbours of each pick by 1 − γ^d |
//! | `top-k` (score) | per budget | the k best edges by score |
//! | `first-k`, `last-k` | per budget | the k lowest / highest parallel edges |
//! | `random-k` (draws) | per budget | `draws` uniform draws of k distinct edges of all n² |
//! | `parallel-all` | none | the 2L parallel edges |
//! | `single-sweep` (kinds, per_kind, seed) | none | one single-edge placement per edge: every parallel edge, `per_kind` seeded draws of each other kind |
//! | `manual` (edges) | none | the listed edges |
//!
//! Order. `gga` and `top-k` rank edges by [`better_first`]: the higher score; among equal
//! scores, the higher tie-breaking column ([`Score::tie_break`]: `effective_rank` for the
//! integer `rank`, which ties under saturation); only then the smaller (i, j). Without the
//! continuous score, saturated ranks would hand every tie to the edges reading node 0.
//!
//! Budgets. A budgeted heuristic is asked once per budget in `budgets` (sorted ascending).
//! A budget larger than the edges the heuristic chooses from (n² for `gga`, `top-k` and
//! `random-k`; the 2L parallel edges for `first-k` and `last-k`) is skipped for that
//! heuristic: no row, and an entry in the manifest's `skipped` list and the summary. Rows
//! therefore always have `budget == adapters` for budgeted heuristics. Budget-independent
//! heuristics are asked once; their budget column is their adapter count.
//!
//! Rows come in a fixed order: heuristics in parameter order, then budget, then draw (for
//! `single-sweep`, edges in row-major order). Identical placements from different
//! heuristics keep their own rows and share one `placement_id` ([`Placement::id`]), which
//! the fine-tune stage trains once.

mod heuristic;
pub mod heuristics;
mod probe;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use graft_graph::{GraphError, Placement};
use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, Publisher};
use graft_tables::{Method, ModelInfo, ProbeRow, ProposalRow, Table, TableError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use heuristic::{Context, Description, Fields, Heuristic, HeuristicTable, ParamError};
pub use heuristics::Entry;
pub use probe::{Probe, ProbeError, Score, Scored, better_first};

/// Errors of the proposal stage.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error(transparent)]
    Param(#[from] ParamError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("probe.parquet: {0}")]
    Probe(#[from] ProbeError),
    #[error("model.json: the model has no blocks (layers = 0), so there is nothing to place")]
    NoBlocks,
    #[error("heuristics[{index}] ({name}): {source}")]
    Heuristic {
        index: usize,
        name: &'static str,
        source: GraphError,
    },
}

/// Parameters of the propose stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposeParams {
    /// Heuristic tables, `{ name = "gga", score = "rank", gamma = 0.6 }`; see
    /// [`heuristics::REGISTRY`] for the names and fields.
    #[serde(default = "default_heuristics")]
    pub heuristics: Vec<HeuristicTable>,
    /// Adapter counts for the budgeted heuristics; sorted ascending by validation.
    #[serde(default = "default_budgets")]
    pub budgets: Vec<usize>,
    /// Seed of `random-k`.
    #[serde(default)]
    pub seed: u64,
    /// Adapter bottleneck r, for trainable parameters and FLOPs.
    #[serde(default = "default_bottleneck")]
    pub bottleneck: usize,
}

fn table(value: Value) -> HeuristicTable {
    match value {
        Value::Object(m) => m.into_iter().collect(),
        _ => HeuristicTable::new(),
    }
}

fn default_heuristics() -> Vec<HeuristicTable> {
    [
        json!({ "name": "gga", "score": "rank", "gamma": 0.6 }),
        json!({ "name": "top-k", "score": "rank" }),
        json!({ "name": "first-k" }),
        json!({ "name": "last-k" }),
        json!({ "name": "random-k", "draws": 3 }),
        json!({ "name": "parallel-all" }),
    ]
    .into_iter()
    .map(table)
    .collect()
}

fn default_budgets() -> Vec<usize> {
    vec![1, 2, 3, 6, 12]
}

fn default_bottleneck() -> usize {
    8
}

impl Default for ProposeParams {
    fn default() -> ProposeParams {
        ProposeParams {
            heuristics: default_heuristics(),
            budgets: default_budgets(),
            seed: 0,
            bottleneck: default_bottleneck(),
        }
    }
}

impl ProposeParams {
    /// Checks every field and fills in every default: heuristic tables with all their
    /// fields, budgets sorted.
    pub fn validated(self) -> Result<ProposeParams, ParamError> {
        self.validated_in(heuristics::REGISTRY)
    }

    /// [`ProposeParams::validated`] with the heuristics of `registry`.
    pub fn validated_in(mut self, registry: &[Entry]) -> Result<ProposeParams, ParamError> {
        if self.bottleneck == 0 {
            return Err(ParamError::new("bottleneck", "= 0 must be at least 1"));
        }
        for (index, &b) in self.budgets.iter().enumerate() {
            if b == 0 {
                return Err(ParamError::new(
                    format!("budgets[{index}]"),
                    "= 0 must be at least 1",
                ));
            }
            if let Some(first) = self.budgets[..index].iter().position(|&x| x == b) {
                return Err(ParamError::new(
                    format!("budgets[{index}]"),
                    format!("= {b} repeats budgets[{first}]"),
                ));
            }
        }
        self.budgets.sort_unstable();
        if self.heuristics.is_empty() {
            return Err(ParamError::new(
                "heuristics",
                format!(
                    "is empty: list at least one (known: {})",
                    heuristics::known_in(registry)
                ),
            ));
        }
        let mut normal: Vec<HeuristicTable> = Vec::with_capacity(self.heuristics.len());
        for (index, t) in self.heuristics.iter().enumerate() {
            let at = format!("heuristics[{index}]");
            let (h, t) = heuristics::build_in(registry, t).map_err(|e| e.within(&at))?;
            if let Some(first) = normal.iter().position(|x| *x == t) {
                return Err(ParamError::new(at, format!("repeats heuristics[{first}]")));
            }
            if h.describe().budgeted && self.budgets.is_empty() {
                return Err(ParamError::new(
                    "budgets",
                    format!("is empty but {at} ({}) needs a budget", h.name()),
                ));
            }
            normal.push(t);
        }
        self.heuristics = normal;
        Ok(self)
    }

    /// The heuristics, built from their tables.
    pub fn build(&self) -> Result<Vec<Box<dyn Heuristic>>, ParamError> {
        self.build_in(heuristics::REGISTRY)
    }

    /// [`ProposeParams::build`] with the heuristics of `registry`.
    pub fn build_in(&self, registry: &[Entry]) -> Result<Vec<Box<dyn Heuristic>>, ParamError> {
        self.heuristics
            .iter()
            .enumerate()
            .map(|(index, t)| {
                heuristics::build_in(registry, t)
                    .map(|(h, _)| h)
                    .map_err(|e| e.within(&format!("heuristics[{index}]")))
            })
            .collect()
    }
}

/// A budget a heuristic could not fill: more adapters than the edges it chooses from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// Position in `heuristics`.
    pub index: usize,
    pub heuristic: String,
    pub budget: usize,
    pub candidates: usize,
}

/// What [`propose`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposals {
    pub rows: Vec<ProposalRow>,
    /// Rows per entry of `heuristics`, in parameter order.
    pub per_entry: Vec<usize>,
    pub skipped: Vec<Skipped>,
}

impl Proposals {
    /// Distinct placement ids.
    pub fn distinct(&self) -> usize {
        self.rows
            .iter()
            .map(|r| r.placement_id.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// Rows per heuristic name.
    pub fn per_heuristic(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for r in &self.rows {
            *counts.entry(r.heuristic.clone()).or_insert(0) += 1;
        }
        counts
    }
}

/// Proposes placements for the probed model with every heuristic of `params` (validated).
pub fn propose(
    params: &ProposeParams,
    model: &ModelInfo,
    probe_rows: Vec<ProbeRow>,
) -> Result<Proposals, ProposeError> {
    propose_in(heuristics::REGISTRY, params, model, probe_rows)
}

/// [`propose`] with the heuristics of `registry` (validated with
/// [`ProposeParams::validated_in`] against the same registry).
pub fn propose_in(
    registry: &[Entry],
    params: &ProposeParams,
    model: &ModelInfo,
    probe_rows: Vec<ProbeRow>,
) -> Result<Proposals, ProposeError> {
    let graph = model.graph();
    if graph.layers == 0 {
        return Err(ProposeError::NoBlocks);
    }
    let probe = Probe::new(graph, probe_rows)?;
    let ctx = Context {
        probe: &probe,
        seed: params.seed,
    };
    let r = params.bottleneck;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut per_entry = Vec::new();
    for (index, h) in params.build_in(registry)?.iter().enumerate() {
        let about = h.describe();
        let params_json = about.params_json();
        let err = |source| ProposeError::Heuristic {
            index,
            name: h.name(),
            source,
        };
        let row = |budget: usize, draw: usize, p: Placement| ProposalRow {
            placement_id: p.id(),
            heuristic: h.name().to_owned(),
            label: about.label.clone(),
            params: params_json.clone(),
            budgeted: about.budgeted,
            score: h.score().map(|s| s.name().to_owned()),
            budget: budget as i64,
            draw: draw as i64,
            method: Method::Adapters,
            edges: graft_tables::edge_rows(&p),
            adapters: p.len() as i64,
            trainable_params: model.dims.adapter_tuning_params(p.len(), r) as i64,
            forward_flops: graft_graph::forward_flops(&model.dims, &p, r) as i64,
        };
        if about.budgeted {
            let candidates = h.candidates(graph);
            for &budget in &params.budgets {
                if budget > candidates {
                    skipped.push(Skipped {
                        index,
                        heuristic: h.name().to_owned(),
                        budget,
                        candidates,
                    });
                    continue;
                }
                let placements = h.propose(&ctx, budget).map_err(err)?;
                rows.extend(
                    placements
                        .into_iter()
                        .enumerate()
                        .map(|(draw, p)| row(budget, draw, p)),
                );
            }
        } else {
            let placements = h.propose(&ctx, 0).map_err(err)?;
            rows.extend(placements.into_iter().map(|p| row(p.len(), 0, p)));
        }
        per_entry.push(rows.len() - per_entry.iter().sum::<usize>());
    }
    Ok(Proposals {
        rows,
        per_entry,
        skipped,
    })
}

/// The short human summary printed to stderr: one line per heuristic entry.
pub fn summary(params: &ProposeParams, model: &ModelInfo, proposals: &Proposals) -> String {
    let graph = model.graph();
    let mut s = format!(
        "propose: {} distinct placements in {} rows for {} ({} blocks, {} edges), bottleneck {}\n",
        proposals.distinct(),
        proposals.rows.len(),
        model.preset,
        graph.layers,
        graph.nodes() * graph.nodes(),
        params.bottleneck
    );
    for (index, t) in params.heuristics.iter().enumerate() {
        let name = t.get("name").and_then(Value::as_str).unwrap_or("?");
        let fields: Vec<String> = t
            .iter()
            .filter(|(k, _)| k.as_str() != "name")
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        let rows = proposals.per_entry.get(index).copied().unwrap_or(0);
        let plural = if rows == 1 { "" } else { "s" };
        let _ = write!(s, "  {name:<13} {rows:>4} row{plural:<1}");
        if !fields.is_empty() {
            let _ = write!(s, "  {}", fields.join(", "));
        }
        let skipped: Vec<String> = proposals
            .skipped
            .iter()
            .filter(|k| k.index == index)
            .map(|k| k.budget.to_string())
            .collect();
        if let Some(k) = proposals.skipped.iter().find(|k| k.index == index) {
            let _ = write!(
                s,
                "  (skipped budgets {}: it chooses from {} edges)",
                skipped.join(", "),
                k.candidates
            );
        }
        s.push('\n');
    }
    s
}

/// The stage.
pub struct Propose;

impl Stage for Propose {
    const NAME: &'static str = "propose";
    // 2: rows carry the heuristic's own description (label, params, budgeted); no gamma.
    // 3: `single-sweep` draws per edge kind (`per_kind`, `seed`) instead of a stride; rank
    //    ties in `gga` and `top-k` are broken by `effective_rank` before (i, j).
    const VERSION: u32 = 3;
    type Params = ProposeParams;

    fn input_names(_: &ProposeParams) -> Vec<String> {
        vec!["probe".into()]
    }

    fn validate(p: ProposeParams) -> Result<ProposeParams, BoxError> {
        Ok(p.validated()?)
    }

    fn run(
        params: &ProposeParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        let probe = &inputs["probe"];
        let model = ModelInfo::read(&probe.file(ModelInfo::FILE)).map_err(ProposeError::from)?;
        let rows = ProbeRow::read(&probe.file(ProbeRow::FILE)).map_err(ProposeError::from)?;
        let proposals = propose(params, &model, rows)?;
        ProposalRow::write(&out.file(ProposalRow::FILE), &proposals.rows)
            .map_err(ProposeError::from)?;
        eprint!("{}", summary(params, &model, &proposals));
        Ok([
            ("rows".to_owned(), json!(proposals.rows.len())),
            ("placements".to_owned(), json!(proposals.distinct())),
            ("per_heuristic".to_owned(), json!(proposals.per_heuristic())),
            ("skipped".to_owned(), json!(proposals.skipped)),
        ]
        .into())
    }
}

#[cfg(test)]
mod testing;

#[cfg(test)]
mod tests;
