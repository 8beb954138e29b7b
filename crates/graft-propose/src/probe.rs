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

    /// The continuous column that breaks ties of this one, if it needs one: `rank`, an
    /// integer that ties under saturation, is broken by `effective_rank`, the continuous
    /// count of directions of the same spectrum (exp of the entropy of the normalised
    /// singular values; scale-invariant like the rank, and unlike the stable rank not
    /// dominated by the largest few). A continuous column breaks no ties.
    pub fn tie_break(self) -> Option<Score> {
        match self.0 {
            "rank" => Score::parse("effective_rank"),
            _ => None,
        }
    }
}

/// An edge with what a score-driven heuristic orders it by: its `score` (which `gga`
/// discounts) and the `tie` that breaks equal scores ([`Score::tie_break`]; 0 when the score
/// has none).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub edge: Edge,
    pub score: f64,
    pub tie: f64,
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

    /// Every edge with its value of `score` and of the column breaking its ties
    /// ([`Score::tie_break`]), row-major. A NaN reads as −∞ (never picked before a number).
    pub fn scores(&self, score: Score) -> Vec<Scored> {
        let value = |r: &ProbeRow, s: Score| {
            let v = r.score(s.name()).unwrap_or(f64::NEG_INFINITY);
            if v.is_nan() { f64::NEG_INFINITY } else { v }
        };
        let tie = score.tie_break();
        self.graph
            .edges()
            .zip(&self.rows)
            .map(|(edge, r)| Scored {
                edge,
                score: value(r, score),
                tie: tie.map_or(0.0, |t| value(r, t)),
            })
            .collect()
    }
}

/// The order every score-driven heuristic ranks by: higher score first; equal scores by the
/// higher tie-breaking column (`effective_rank` for `rank`, [`Score::tie_break`]); only then
/// by the smaller edge (i, then j), so that the result never depends on input order and an
/// edge never wins by its index while the probe tells the two apart.
pub fn better_first(a: &Scored, b: &Scored) -> Ordering {
    b.score
        .total_cmp(&a.score)
        .then(b.tie.total_cmp(&a.tie))
        .then(a.edge.cmp(&b.edge))
}
