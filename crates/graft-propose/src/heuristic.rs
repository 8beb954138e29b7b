//! The [`Heuristic`] trait every placement heuristic implements, the [`Context`] it reads,
//! and [`Fields`], the reader of a heuristic's parameter table that names the field in
//! every error and records the table with its defaults filled in.

use std::collections::BTreeMap;
use std::fmt;

use graft_graph::{Edge, EdgeKind, Graph, GraphError, Placement};
use graft_tables::ProbeRow;
use serde_json::Value;

use crate::probe::{Probe, Score};

/// A heuristic's parameter table as written in the pipeline: `{ name = "gga", ... }`.
pub type HeuristicTable = BTreeMap<String, Value>;

/// A bad parameter, naming the field: `heuristics[2].gamma = 1.5 must be in [0, 1)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {message}")]
pub struct ParamError {
    /// Path of the field: `budgets[3]`, `heuristics[2].gamma`.
    pub field: String,
    /// The rest of the sentence: `= 1.5 must be in [0, 1)`, `is missing`.
    pub message: String,
}

impl ParamError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> ParamError {
        ParamError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix.` in front of the field.
    pub fn within(self, prefix: &str) -> ParamError {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        ParamError { field, ..self }
    }
}

/// What a heuristic reads: the graph and its probe table, and the stage's seed.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub probe: &'a Probe,
    pub seed: u64,
}

impl Context<'_> {
    pub fn graph(&self) -> Graph {
        self.probe.graph()
    }
}

/// What a heuristic says about itself: the `label`, `params` and `budgeted` columns of the
/// proposals table.
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    /// For legends and tables: `gga γ=0.6`, `top-k by frobenius`; the name when nothing
    /// distinguishes two uses of it.
    pub label: String,
    /// The parameters with their defaults filled in, `name` left out.
    pub params: HeuristicTable,
    /// `true`: asked once per budget, each placement has exactly `budget` edges, and its rows
    /// form a curve against the budget. `false`: asked once with the budget ignored
    /// (`parallel-all`, `single-sweep`, `manual`; their budget column is their adapter
    /// count).
    pub budgeted: bool,
}

impl Description {
    /// A heuristic asked once per budget, labelled `label`, with no parameters yet.
    pub fn budgeted(label: impl Into<String>) -> Description {
        Description {
            label: label.into(),
            params: HeuristicTable::new(),
            budgeted: true,
        }
    }

    /// A heuristic asked once whatever the budget.
    pub fn once(label: impl Into<String>) -> Description {
        Description {
            budgeted: false,
            ..Description::budgeted(label)
        }
    }

    /// The same with parameter `key` = `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Description {
        self.params.insert(key.to_owned(), value.into());
        self
    }

    /// `params` as canonical JSON text (the `params` column, [`graft_tables::canonical_json`]).
    pub fn params_json(&self) -> String {
        let object = self.params.iter().map(|(k, v)| (k.clone(), v.clone()));
        graft_tables::canonical_json(&Value::Object(object.collect()))
    }
}

/// A placement heuristic: the probe table and a budget in, placements out.
///
/// One file per heuristic under `src/heuristics/`, registered by one line in
/// `heuristics::REGISTRY`; the registry's property test then checks it on random probe
/// tables (deterministic, within budget, valid and distinct edges).
pub trait Heuristic: fmt::Debug + Send + Sync {
    /// The registry name, the `heuristic` column of the proposals table.
    fn name(&self) -> &'static str;

    /// The probe column that drives it (the `score` column), if one does.
    fn score(&self) -> Option<Score> {
        None
    }

    /// How it describes itself in the proposals table: its label, its parameters with every
    /// default filled in (the same table [`Fields`] records, less `name`), and whether it is
    /// asked once per budget. The report draws curves, labels and colours from this alone.
    fn describe(&self) -> Description;

    /// How many edges it chooses from in `graph`: a budget above this is skipped.
    fn candidates(&self, graph: Graph) -> usize {
        graph.nodes() * graph.nodes()
    }

    /// The placements for `budget` adapters (draw d is element d). A budgeted heuristic
    /// returns placements of exactly `budget` edges, or none when `budget` exceeds
    /// [`Heuristic::candidates`]. The same context and budget give the same placements.
    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError>;
}

/// Reads one heuristic's parameter table field by field. Each read records the value with
/// its default filled in; [`Fields::finish`] rejects fields nobody read.
#[derive(Debug)]
pub struct Fields {
    heuristic: &'static str,
    table: HeuristicTable,
    known: Vec<&'static str>,
    normal: HeuristicTable,
}

impl Fields {
    /// The fields of `table` besides `name`, for heuristic `heuristic`.
    pub fn new(heuristic: &'static str, mut table: HeuristicTable) -> Fields {
        table.remove("name");
        let mut normal = HeuristicTable::new();
        normal.insert("name".into(), Value::from(heuristic));
        Fields {
            heuristic,
            table,
            known: Vec::new(),
            normal,
        }
    }

    fn take(&mut self, field: &'static str) -> Option<Value> {
        self.known.push(field);
        self.table.remove(field)
    }

    /// A score column of the probe table ([`ProbeRow::SCORES`]).
    pub fn score(&mut self, field: &'static str, default: &str) -> Result<Score, ParamError> {
        let v = self.take(field).unwrap_or_else(|| Value::from(default));
        let s = v.as_str().and_then(Score::parse).ok_or_else(|| {
            ParamError::new(
                field,
                format!(
                    "= {v} is not a score column (known: {})",
                    ProbeRow::SCORES.join(", ")
                ),
            )
        })?;
        self.normal.insert(field.into(), Value::from(s.name()));
        Ok(s)
    }

    /// A number in [0, 1).
    pub fn fraction(&mut self, field: &'static str, default: f64) -> Result<f64, ParamError> {
        let v = self.take(field).unwrap_or_else(|| Value::from(default));
        let x = v
            .as_f64()
            .filter(|x| (0.0..1.0).contains(x))
            .ok_or_else(|| ParamError::new(field, format!("= {v} must be in [0, 1)")))?;
        self.normal.insert(field.into(), Value::from(x));
        Ok(x)
    }

    /// A whole number of at least 1.
    pub fn count(&mut self, field: &'static str, default: usize) -> Result<usize, ParamError> {
        let v = self.take(field).unwrap_or_else(|| Value::from(default));
        let x = v
            .as_u64()
            .filter(|&x| x >= 1)
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| ParamError::new(field, format!("= {v} must be a whole number >= 1")))?;
        self.normal.insert(field.into(), Value::from(x));
        Ok(x)
    }

    /// A whole number of at least 0 (a seed).
    pub fn whole(&mut self, field: &'static str, default: u64) -> Result<u64, ParamError> {
        let v = self.take(field).unwrap_or_else(|| Value::from(default));
        let x = v
            .as_u64()
            .ok_or_else(|| ParamError::new(field, format!("= {v} must be a whole number >= 0")))?;
        self.normal.insert(field.into(), Value::from(x));
        Ok(x)
    }

    /// A whole number of at least 1, or `"all"` (`None`, the default).
    pub fn count_or_all(&mut self, field: &'static str) -> Result<Option<usize>, ParamError> {
        let v = self.take(field).unwrap_or_else(|| Value::from("all"));
        let x = match &v {
            Value::String(s) if s == "all" => None,
            _ => Some(
                v.as_u64()
                    .filter(|&x| x >= 1)
                    .and_then(|x| usize::try_from(x).ok())
                    .ok_or_else(|| {
                        ParamError::new(
                            field,
                            format!("= {v} must be a whole number >= 1 or \"all\""),
                        )
                    })?,
            ),
        };
        let normal = x.map_or_else(|| Value::from("all"), Value::from);
        self.normal.insert(field.into(), normal);
        Ok(x)
    }

    /// Refuses `field`, a parameter this heuristic no longer takes, with `instead` saying
    /// what to write: `stride is no longer a field of single-sweep: ...`.
    pub fn retired(&mut self, field: &'static str, instead: &str) -> Result<(), ParamError> {
        match self.table.remove(field) {
            Some(_) => Err(ParamError::new(
                field,
                format!("is no longer a field of {}: {instead}", self.heuristic),
            )),
            None => Ok(()),
        }
    }

    /// A list of edge kinds by name (`parallel`, `sequential`, `long-range`, `recurrent`);
    /// absent means all four. Returned and recorded in [`EdgeKind::ALL`] order, once each.
    pub fn kinds(&mut self, field: &'static str) -> Result<Vec<EdgeKind>, ParamError> {
        let names: Vec<&str> = EdgeKind::ALL.iter().map(|k| k.name()).collect();
        let mut kinds = Vec::new();
        match self.take(field) {
            None => kinds.extend(EdgeKind::ALL),
            Some(Value::Array(items)) if !items.is_empty() => {
                for (index, item) in items.iter().enumerate() {
                    let kind = item
                        .as_str()
                        .and_then(|s| EdgeKind::ALL.into_iter().find(|k| k.name() == s))
                        .ok_or_else(|| {
                            ParamError::new(
                                format!("{field}[{index}]"),
                                format!(
                                    "= {item} is not an edge kind (known: {})",
                                    names.join(", ")
                                ),
                            )
                        })?;
                    kinds.push(kind);
                }
            }
            Some(v) => {
                return Err(ParamError::new(
                    field,
                    format!(
                        "= {v} must be a non-empty list of edge kinds ({})",
                        names.join(", ")
                    ),
                ));
            }
        }
        kinds.sort();
        kinds.dedup();
        let list = kinds.iter().map(|k| Value::from(k.name())).collect();
        self.normal.insert(field.into(), Value::Array(list));
        Ok(kinds)
    }

    /// A required, non-empty list of distinct edges `[[i, j], ...]`; recorded sorted. Whether
    /// they fit the graph is only known with the probe, so that is checked when proposing.
    pub fn edges(&mut self, field: &'static str) -> Result<Vec<Edge>, ParamError> {
        let items = match self.take(field) {
            Some(Value::Array(items)) if !items.is_empty() => items,
            Some(v) => {
                return Err(ParamError::new(
                    field,
                    format!("= {v} must be a non-empty list of edges [[i, j], ...]"),
                ));
            }
            None => {
                return Err(ParamError::new(
                    field,
                    "is missing: list edges as [[i, j], ...]",
                ));
            }
        };
        let mut edges: Vec<Edge> = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let pair = item.as_array().and_then(|a| match a.as_slice() {
                [i, j] => Some((i.as_u64()?, j.as_u64()?)),
                _ => None,
            });
            let edge = pair
                .and_then(|(i, j)| {
                    Some(Edge::new(
                        usize::try_from(i).ok()?,
                        usize::try_from(j).ok()?,
                    ))
                })
                .ok_or_else(|| {
                    ParamError::new(
                        format!("{field}[{index}]"),
                        format!("= {item} must be [i, j] with node numbers i, j >= 0"),
                    )
                })?;
            if let Some(first) = edges.iter().position(|e| *e == edge) {
                return Err(ParamError::new(
                    format!("{field}[{index}]"),
                    format!("= {item} repeats {field}[{first}]"),
                ));
            }
            edges.push(edge);
        }
        let mut sorted = edges.clone();
        sorted.sort();
        let list = sorted.iter().map(|e| Value::from(vec![e.i, e.j])).collect();
        self.normal.insert(field.into(), Value::Array(list));
        Ok(edges)
    }

    /// The table with every default filled in, or an error for a field nobody read.
    pub fn finish(self) -> Result<HeuristicTable, ParamError> {
        if let Some(field) = self.table.keys().next() {
            let takes = if self.known.is_empty() {
                format!("{} takes no fields besides name", self.heuristic)
            } else {
                format!("{} takes: {}", self.heuristic, self.known.join(", "))
            };
            return Err(ParamError::new(
                field.clone(),
                format!("is not a field of {} ({takes})", self.heuristic),
            ));
        }
        Ok(self.normal)
    }
}
