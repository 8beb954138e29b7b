//! `gga`: Gradient Guided Adapters, greedy by probe score with a distance discount.
//!
//! The paper is silent on the details; this is the spec's reconstruction. Scores s(e) of
//! the chosen column over all n² edges; take the best edge e*; multiply every remaining
//! score by 1 − γ^d(e, e*), d the Chebyshev distance on the adjacency matrix,
//! max(|i − i*|, |j − j*|); repeat until `budget` edges. A distinct edge has d >= 1, so
//! γ = 0 multiplies by exactly 1 and gives exactly `top-k`. Scores are expected
//! non-negative (every probe column is), so the discount only ever lowers them.
//!
//! "Best" is [`better_first`]: the highest (discounted) score; among equal ones, for the
//! integer `rank`, the highest undiscounted `effective_rank` of the same edge; only then the
//! smaller (i, j). Integer ranks tie under saturation, and without the continuous score the
//! ties would all go to the edges reading node 0.

use graft_graph::{Edge, GraphError, Placement};

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};
use crate::probe::{Score, better_first};

pub const ENTRY: Entry = Entry {
    name: "gga",
    about: "greedy by probe score, discounting edges near each pick by 1 - gamma^distance",
    build,
    example: r#"{ name = "gga", score = "rank", gamma = 0.6 }"#,
};

/// `gga` with its score column and γ in [0, 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gga {
    pub score: Score,
    pub gamma: f64,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(Gga {
        score: f.score("score", "rank")?,
        gamma: f.fraction("gamma", 0.6)?,
    }))
}

/// Chebyshev distance between two cells of the adjacency matrix.
pub fn distance(a: Edge, b: Edge) -> usize {
    a.i.abs_diff(b.i).max(a.j.abs_diff(b.j))
}

impl Heuristic for Gga {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn score(&self) -> Option<Score> {
        Some(self.score)
    }

    /// `gga γ=0.6`, with `by <score>` before γ when the score is not `rank`.
    fn describe(&self) -> Description {
        let by = match self.score.name() {
            "rank" => String::new(),
            s => format!(" by {s}"),
        };
        Description::budgeted(format!("{}{by} γ={}", ENTRY.name, self.gamma))
            .with("score", self.score.name())
            .with("gamma", self.gamma)
    }

    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError> {
        let mut left = ctx.probe.scores(self.score);
        if budget > left.len() {
            return Ok(Vec::new());
        }
        let mut picked = Vec::with_capacity(budget);
        while picked.len() < budget {
            let Some(best) = left
                .iter()
                .enumerate()
                .min_by(|a, b| better_first(a.1, b.1))
                .map(|(index, _)| index)
            else {
                break;
            };
            let chosen = left.swap_remove(best).edge;
            picked.push(chosen);
            for e in &mut left {
                let d = distance(e.edge, chosen) as i32;
                e.score *= 1.0 - self.gamma.powi(d);
            }
        }
        Ok(vec![Placement::new(ctx.graph(), picked)?])
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::{Edge, Graph};
    use proptest::prelude::*;

    use super::*;
    use crate::heuristics::TopK;
    use crate::probe::Probe;
    use crate::testing::{edges_of, probe_table, random_probe};
    use graft_tables::ProbeRow;

    fn scored(edges: &[((usize, usize), f64)]) -> Probe {
        probe_table(Graph::new(2), |e| {
            edges
                .iter()
                .find(|((i, j), _)| Edge::new(*i, *j) == e)
                .map_or(1.0, |(_, s)| *s)
        })
    }

    #[test]
    fn gamma_spreads_the_picks_that_top_k_puts_side_by_side() {
        // A hot corner of four neighbours and one good edge far from it.
        let probe = scored(&[
            ((0, 1), 10.0),
            ((0, 2), 9.9),
            ((1, 1), 9.8),
            ((1, 2), 9.7),
            ((4, 3), 5.0),
        ]);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let score = Score::parse("frobenius").unwrap();
        let top = TopK { score }.propose(&ctx, 2).unwrap();
        let gga = Gga { score, gamma: 0.6 }.propose(&ctx, 2).unwrap();
        assert_eq!(top[0].edges(), [Edge::new(0, 1), Edge::new(0, 2)]);
        // (0, 2) at distance 1 drops to 9.9 * 0.4; (4, 3) at distance 4 keeps 5 * (1 - 0.6^4).
        assert_eq!(gga[0].edges(), [Edge::new(0, 1), Edge::new(4, 3)]);
        let spread = |p: &Placement| distance(p.edges()[0], p.edges()[1]);
        assert!(spread(&gga[0]) > spread(&top[0]));
    }

    /// Under saturation every edge has the same integer rank; the edge's effective rank,
    /// not its index, decides. (0, 1) and (0, 0) read node 0 and come first in row-major
    /// order: they must not win by that.
    #[test]
    fn rank_ties_are_broken_by_effective_rank_not_by_index() {
        let effective = |e: Edge| match (e.i, e.j) {
            (3, 2) => 7.5,
            (1, 4) => 7.25,
            (4, 4) => 6.0,
            (0, 1) => 7.0,
            (0, 0) => 6.9,
            _ => 1.0 + 0.01 * (e.i + e.j) as f64,
        };
        let graph = Graph::new(2);
        let rows = graph
            .edges()
            .map(|e| ProbeRow {
                rank: 8,
                effective_rank: effective(e),
                ..crate::testing::probe_row(e, 1.0)
            })
            .collect();
        let probe = Probe::new(graph, rows).unwrap();
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let rank = Score::parse("rank").unwrap();
        assert_eq!(rank.tie_break(), Score::parse("effective_rank"));
        let top = |k| edges_of(&TopK { score: rank }.propose(&ctx, k).unwrap());
        // Placements list their edges sorted; the first pick is the single best.
        assert_eq!(top(1), [vec![Edge::new(3, 2)]]);
        assert_eq!(
            top(3),
            [vec![Edge::new(0, 1), Edge::new(1, 4), Edge::new(3, 2)]]
        );
        let gga = |gamma, k| edges_of(&Gga { score: rank, gamma }.propose(&ctx, k).unwrap());
        assert_eq!(gga(0.6, 1), [vec![Edge::new(3, 2)]]);
        // After (3, 2) every other rank is discounted by its distance: the farthest edges,
        // row 0 at distance 3, keep the most, and among them (0, 1)'s effective rank beats
        // (0, 0), which would win by index. γ = 0 is top-k: (1, 4) next.
        assert_eq!(gga(0.6, 2), [vec![Edge::new(0, 1), Edge::new(3, 2)]]);
        assert_eq!(gga(0.0, 2), [vec![Edge::new(1, 4), Edge::new(3, 2)]]);
        // With every rank equal and the effective rank constant, the index decides last.
        let flat = probe_table(graph, |_| 3.0);
        let ctx = Context {
            probe: &flat,
            seed: 0,
        };
        let picked = edges_of(&TopK { score: rank }.propose(&ctx, 1).unwrap());
        assert_eq!(picked, [vec![Edge::new(0, 0)]]);
    }

    #[test]
    fn distance_is_chebyshev() {
        assert_eq!(distance(Edge::new(0, 1), Edge::new(0, 1)), 0);
        assert_eq!(distance(Edge::new(0, 1), Edge::new(4, 3)), 4);
        assert_eq!(distance(Edge::new(2, 0), Edge::new(1, 3)), 3);
    }

    proptest! {
        #[test]
        fn gamma_zero_is_exactly_top_k(
            (probe, score) in random_probe(),
            budget in 1usize..=12,
        ) {
            let ctx = Context { probe: &probe, seed: 0 };
            let gga = Gga { score, gamma: 0.0 }.propose(&ctx, budget).unwrap();
            let top = TopK { score }.propose(&ctx, budget).unwrap();
            prop_assert_eq!(gga, top);
        }
    }
}
