//! `random-k`: `draws` placements of k distinct edges drawn uniformly from all n² edges.
//!
//! Draw d of budget k uses its own ChaCha8 generator seeded with blake3 over
//! (`graft-random-k-v1`, seed, k, d), so adding a budget or a draw leaves the other
//! placements unchanged; the edges are the first k of a partial Fisher–Yates shuffle of
//! the row-major edge list.

use graft_graph::{Edge, GraphError, Placement};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: "random-k",
    about: "k distinct edges drawn uniformly from all n^2, several seeded draws",
    build,
    example: r#"{ name = "random-k", draws = 3 }"#,
};

/// `random-k` with its number of draws per budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomK {
    pub draws: usize,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    Ok(Box::new(RandomK {
        draws: f.count("draws", 3)?,
    }))
}

/// The generator of draw `draw` of budget `k`.
pub fn draw_rng(seed: u64, k: usize, draw: usize) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"graft-random-k-v1");
    h.update(&seed.to_le_bytes());
    h.update(&(k as u64).to_le_bytes());
    h.update(&(draw as u64).to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

impl Heuristic for RandomK {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    /// Draws are pooled into one curve, so they stay out of the label.
    fn describe(&self) -> Description {
        Description::budgeted(ENTRY.name).with("draws", self.draws)
    }

    fn propose(&self, ctx: &Context<'_>, budget: usize) -> Result<Vec<Placement>, GraphError> {
        let all: Vec<Edge> = ctx.graph().edges().collect();
        if budget > all.len() {
            return Ok(Vec::new());
        }
        (0..self.draws)
            .map(|draw| {
                let mut rng = draw_rng(ctx.seed, budget, draw);
                let mut edges = all.clone();
                for k in 0..budget {
                    let pick = rng.random_range(k..edges.len());
                    edges.swap(k, pick);
                }
                edges.truncate(budget);
                Placement::new(ctx.graph(), edges)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use graft_graph::Graph;

    use super::*;
    use crate::testing::probe_table;

    #[test]
    fn draws_differ_and_follow_the_seed() {
        let probe = probe_table(Graph::new(4), |_| 1.0);
        let h = RandomK { draws: 3 };
        let a = h
            .propose(
                &Context {
                    probe: &probe,
                    seed: 0,
                },
                6,
            )
            .unwrap();
        let b = h
            .propose(
                &Context {
                    probe: &probe,
                    seed: 1,
                },
                6,
            )
            .unwrap();
        assert_eq!(a.len(), 3);
        assert_ne!(a[0], a[1]);
        assert_ne!(a, b);
        // More draws extend the list without changing the first ones.
        let more = RandomK { draws: 5 }
            .propose(
                &Context {
                    probe: &probe,
                    seed: 0,
                },
                6,
            )
            .unwrap();
        assert_eq!(more[..3], a[..]);
    }
}
