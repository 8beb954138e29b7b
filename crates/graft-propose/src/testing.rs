//! Probe tables for the tests.

use graft_graph::{Edge, Graph, Placement};
use graft_tables::ProbeRow;
use proptest::prelude::*;

use crate::probe::{Probe, Score};

/// A probe row whose every score column is `s` (rank: `s` rounded down).
pub fn probe_row(e: Edge, s: f64) -> ProbeRow {
    ProbeRow {
        i: e.i as i32,
        j: e.j as i32,
        kind: e.kind().name().to_owned(),
        rank: s as i64,
        frobenius: s,
        spectral: s,
        nuclear: s,
        stable_rank: s,
        effective_rank: s,
        singular_values: vec![s],
    }
}

/// The rows of `graph` scored by `score`, row-major.
pub fn probe_rows(graph: Graph, score: impl Fn(Edge) -> f64) -> Vec<ProbeRow> {
    graph.edges().map(|e| probe_row(e, score(e))).collect()
}

/// The probe of `graph` scored by `score`.
pub fn probe_table(graph: Graph, score: impl Fn(Edge) -> f64) -> Probe {
    Probe::new(graph, probe_rows(graph, score)).unwrap()
}

/// A random probe table (L in 1..=4; small integer ranks so that ties happen, other
/// columns independent floats) and a score column to rank by.
pub fn random_probe() -> impl Strategy<Value = (Probe, Score)> {
    (1usize..=4, 0..ProbeRow::SCORES.len()).prop_flat_map(|(layers, score)| {
        let graph = Graph::new(layers);
        let n2 = graph.nodes() * graph.nodes();
        let row = (0i64..6, prop::array::uniform5(0.0f64..10.0));
        prop::collection::vec(row, n2).prop_map(move |values| {
            let rows = graph
                .edges()
                .zip(values)
                .map(|(e, (rank, f))| ProbeRow {
                    rank,
                    frobenius: f[0],
                    spectral: f[1],
                    nuclear: f[2],
                    stable_rank: f[3],
                    effective_rank: f[4],
                    ..probe_row(e, 0.0)
                })
                .collect();
            let score = Score::parse(ProbeRow::SCORES[score]).unwrap();
            (Probe::new(graph, rows).unwrap(), score)
        })
    })
}

/// The edges of each placement.
pub fn edges_of(placements: &[Placement]) -> Vec<Vec<Edge>> {
    placements.iter().map(|p| p.edges().to_vec()).collect()
}
