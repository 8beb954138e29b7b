//! The probe table as the heuristics see it: one row per edge of the graph, checked once.

use std::cmp::Ordering;

use graft_graph::{Edge, Graph};
use graft_tables::ProbeRow;

/// Errors of a probe table that does not cover its graph exactly once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "probe row {row}: edge ({i}, {j}) is outside the graph: nodes are 0..={max} for {layers} blocks"
    )]
    OutOfRange {
        row: usize,
        i: i64,
        j: i64,
        max: usize,
        layers: usize,
    },
    #[error("probe row {row}: edge ({i}, {j}) appears twice")]
    Duplicate { row: usize, i: usize, j: usize },
    #[error(
        "probe table has no row for edge ({i}, {j}): expected all {edges} edges of {layers} blocks"
    )]
    Missing {
        i: usize,
        j: usize,
        edges: usize,
        layers: usize,
    },
}

/// A score column of the probe table ([`ProbeRow::SCORES`]), checked by name once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Score(&'static str);

impl Score {
    /// The column called `name`, or `None` when it is not a score column.
    pub fn parse(name: &str) -> Option<Score> {
        ProbeRow::SCORES
            .iter()
            .find(|s| **s == name)
            .map(|s| Score(s))
    }

    pub fn name(self) -> &'static str {
        self.0
    }
}

/// The probe rows of a graph, one per edge, in row-major order (by i, then j).
#[derive(Debug, Clone)]
pub struct Probe {
    graph: Graph,
    rows: Vec<ProbeRow>,
}

impl Probe {
    /// Checks that `rows` hold every edge of `graph` exactly once, in any order.
    pub fn new(graph: Graph, rows: Vec<ProbeRow>) -> Result<Probe, ProbeError> {
        let n = graph.nodes();
        let mut slots: Vec<Option<ProbeRow>> = vec![None; n * n];
        for (row, r) in rows.into_iter().enumerate() {
            let (i, j) = (i64::from(r.i), i64::from(r.j));
            if i < 0 || j < 0 || i >= n as i64 || j >= n as i64 {
                return Err(ProbeError::OutOfRange {
                    row,
                    i,
                    j,
                    max: n - 1,
                    layers: graph.layers,
                });
            }
            let (i, j) = (i as usize, j as usize);
            let slot = &mut slots[i * n + j];
            if slot.is_some() {
                return Err(ProbeError::Duplicate { row, i, j });
            }
            *slot = Some(r);
        }
        let mut out = Vec::with_capacity(n * n);
        for (index, slot) in slots.into_iter().enumerate() {
            match slot {
                Some(r) => out.push(r),
                None => {
                    return Err(ProbeError::Missing {
                        i: index / n,
                        j: index % n,
                        edges: n * n,
                        layers: graph.layers,
                    });
                }
            }
        }
        Ok(Probe { graph, rows: out })
    }

    pub fn graph(&self) -> Graph {
        self.graph
    }

    /// Rows in row-major order, one per edge.
    pub fn rows(&self) -> &[ProbeRow] {
        &self.rows
    }

    /// Every edge with its value of `score`, row-major. A NaN reads as −∞ (never picked
    /// before a number).
    pub fn scores(&self, score: Score) -> Vec<(Edge, f64)> {
        self.graph
            .edges()
            .zip(&self.rows)
            .map(|(e, r)| {
                let s = r.score(score.name()).unwrap_or(f64::NEG_INFINITY);
                (e, if s.is_nan() { f64::NEG_INFINITY } else { s })
            })
            .collect()
    }
}

/// The order every score-driven heuristic ranks by: higher score first, ties broken by the
/// smaller edge (i, then j), so that the result never depends on input order.
pub fn better_first(a: &(Edge, f64), b: &(Edge, f64)) -> Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}
