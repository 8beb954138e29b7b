//! `single-sweep`: one placement per edge, each a single adapter, for a map of what one
//! adapter alone does. Budget-independent: the budget column is 1.
//!
//! `kinds` keeps only some edge kinds (default all four). Every parallel edge is in the
//! sweep whenever `parallel` is among `kinds` (there are only 2L of them, and they are the
//! usual baseline's edges). From each other kind in `kinds`, `per_kind` edges (default
//! `"all"`; all of a kind when it has fewer) are drawn without replacement: kind K uses its
//! own ChaCha8 generator seeded with blake3 over (`graft-single-sweep-v1`, `seed`, K's name),
//! and its edges are the first `per_kind` of a partial Fisher–Yates shuffle of K's edges in
//! row-major order. So raising `per_kind` only adds edges, and a kind's draw does not depend
//! on which other kinds are swept. The placements are listed in row-major order (by i, then
//! j). `seed` is the sweep's own (default 0), not the stage's: the proposals table's
//! `params` (`kinds`, `per_kind`, `seed`) say exactly how the sweep was drawn.
//!
//! There is no row-major stride: every s-th edge of the row-major list keeps only edges
//! with i + j in a few classes mod s (on n = 13, s = 6 keeps i + j ≡ 0 mod 6: no parallel
//! edge at all), so a pipeline that still writes `stride` is refused with a pointer to
//! `per_kind`.

use graft_graph::{Edge, EdgeKind, GraphError, Placement};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::Entry;
use crate::heuristic::{Context, Description, Fields, Heuristic, ParamError};

pub const ENTRY: Entry = Entry {
    name: graft_tables::SWEEP_HEURISTIC,
    about: "one single-adapter placement per edge: every parallel edge, and per_kind seeded draws of each other kind",
    build,
    example: r#"{ name = "single-sweep", kinds = ["parallel", "long-range", "recurrent"], per_kind = 2, seed = 1 }"#,
};

/// `single-sweep` over the edges of some kinds: all parallel ones, and `per_kind` drawn from
/// each other kind (`None`: all of them) with `seed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SingleSweep {
    pub kinds: Vec<EdgeKind>,
    pub per_kind: Option<usize>,
    pub seed: u64,
}

fn build(f: &mut Fields) -> Result<Box<dyn Heuristic>, ParamError> {
    f.retired(
        "stride",
        "a row-major stride aliases (on n = 13 a stride of 6 keeps only edges with \
         i + j ≡ 0 mod 6 and no parallel edge); use per_kind = N to draw N edges of each \
         non-parallel kind, seeded by seed, beside every parallel edge",
    )?;
    Ok(Box::new(SingleSweep {
        kinds: f.kinds("kinds")?,
        per_kind: f.count_or_all("per_kind")?,
        seed: f.whole("seed", 0)?,
    }))
}

/// The generator of the draw from `kind` for `seed`.
pub fn kind_rng(seed: u64, kind: EdgeKind) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"graft-single-sweep-v1");
    h.update(&seed.to_le_bytes());
    h.update(&(kind.name().len() as u64).to_le_bytes());
    h.update(kind.name().as_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

impl SingleSweep {
    /// The swept edges of `kind` in `graph`, row-major.
    fn edges_of(&self, graph: graft_graph::Graph, kind: EdgeKind) -> Vec<Edge> {
        let mut edges: Vec<Edge> = graph.edges_of(kind).collect();
        let take = match self.per_kind {
            Some(k) if kind != EdgeKind::Parallel => k.min(edges.len()),
            _ => return edges,
        };
        let mut rng = kind_rng(self.seed, kind);
        for k in 0..take {
            let pick = rng.random_range(k..edges.len());
            edges.swap(k, pick);
        }
        edges.truncate(take);
        edges.sort();
        edges
    }
}

impl Heuristic for SingleSweep {
    fn name(&self) -> &'static str {
        ENTRY.name
    }

    fn describe(&self) -> Description {
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.name()).collect();
        let per_kind = match self.per_kind {
            Some(k) => serde_json::Value::from(k),
            None => serde_json::Value::from("all"),
        };
        Description::once(ENTRY.name)
            .with("kinds", kinds)
            .with("per_kind", per_kind)
            .with("seed", self.seed)
    }

    fn propose(&self, ctx: &Context<'_>, _budget: usize) -> Result<Vec<Placement>, GraphError> {
        let graph = ctx.graph();
        let mut edges: Vec<Edge> = self
            .kinds
            .iter()
            .flat_map(|&kind| self.edges_of(graph, kind))
            .collect();
        edges.sort();
        edges
            .into_iter()
            .map(|e| Placement::new(graph, [e]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use graft_graph::{Edge, Graph};
    use proptest::prelude::*;

    use super::*;
    use crate::heuristic::HeuristicTable;
    use crate::heuristics::build;
    use crate::testing::probe_table;

    fn singles(edges: &[(usize, usize)]) -> Vec<Vec<Edge>> {
        edges.iter().map(|&(i, j)| vec![Edge::new(i, j)]).collect()
    }

    fn sweep(graph: Graph, h: &SingleSweep) -> Vec<Edge> {
        let probe = probe_table(graph, |_| 1.0);
        let ctx = Context {
            probe: &probe,
            seed: 0,
        };
        let placements = h.propose(&ctx, 0).unwrap();
        assert!(placements.iter().all(|p| p.len() == 1));
        placements.iter().map(|p| p.edges()[0]).collect()
    }

    #[test]
    fn single_sweep_on_two_blocks() {
        let all = |kinds: &[EdgeKind]| {
            let h = SingleSweep {
                kinds: kinds.to_vec(),
                per_kind: None,
                seed: 0,
            };
            sweep(Graph::new(2), &h)
                .into_iter()
                .map(|e| vec![e])
                .collect::<Vec<_>>()
        };
        let both = [EdgeKind::Parallel, EdgeKind::Recurrent];
        assert_eq!(
            all(&both),
            singles(&[
                (0, 1),
                (1, 0),
                (1, 2),
                (2, 0),
                (2, 1),
                (2, 3),
                (3, 0),
                (3, 1),
                (3, 2),
                (3, 4),
                (4, 0),
                (4, 1),
                (4, 2),
                (4, 3),
            ])
        );
        assert_eq!(all(&EdgeKind::ALL).len(), 25);
        assert_eq!(
            all(&[EdgeKind::Sequential]),
            singles(&[(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)])
        );
        // One of each other kind beside the four parallel edges, row-major.
        let one = SingleSweep {
            kinds: EdgeKind::ALL.to_vec(),
            per_kind: Some(1),
            seed: 0,
        };
        let edges = sweep(Graph::new(2), &one);
        assert_eq!(edges.len(), 4 + 3);
        assert!(edges.windows(2).all(|w| w[0] < w[1]));
    }

    /// The default pipeline's sweep on n = 13 (6 blocks): every parallel edge and ten of
    /// each other kind, where the old stride of 6 kept no parallel edge.
    #[test]
    fn default_sweep_on_six_blocks_covers_every_kind() {
        let h = SingleSweep {
            kinds: EdgeKind::ALL.to_vec(),
            per_kind: Some(10),
            seed: 0,
        };
        let edges = sweep(Graph::new(6), &h);
        assert_eq!(edges.len(), 12 + 10 + 10 + 10);
        let count = |k: EdgeKind| edges.iter().filter(|e| e.kind() == k).count();
        assert_eq!(count(EdgeKind::Parallel), 12);
        assert_eq!(count(EdgeKind::Sequential), 10);
        assert_eq!(count(EdgeKind::LongRange), 10);
        assert_eq!(count(EdgeKind::Recurrent), 10);
        // Not one residue class of i + j: the draw does not alias.
        let residues: BTreeSet<usize> = edges.iter().map(|e| (e.i + e.j) % 6).collect();
        assert_eq!(residues.len(), 6);
    }

    #[test]
    fn a_larger_per_kind_only_adds_edges() {
        let of = |per_kind| {
            let h = SingleSweep {
                kinds: EdgeKind::ALL.to_vec(),
                per_kind: Some(per_kind),
                seed: 3,
            };
            sweep(Graph::new(4), &h)
                .into_iter()
                .collect::<BTreeSet<_>>()
        };
        for k in 1..12 {
            assert!(of(k).is_subset(&of(k + 1)), "per_kind {k}");
        }
    }

    /// The draw covers its kind: over many seeds every edge of every kind is drawn at
    /// least once, so no edge is unreachable (the stride's failure).
    #[test]
    fn every_edge_is_reachable_by_some_seed() {
        for layers in 1..=6 {
            let graph = Graph::new(layers);
            let mut seen = BTreeSet::new();
            for seed in 0..400 {
                let h = SingleSweep {
                    kinds: EdgeKind::ALL.to_vec(),
                    per_kind: Some(3),
                    seed,
                };
                seen.extend(sweep(graph, &h));
            }
            assert_eq!(seen.len(), graph.nodes() * graph.nodes(), "L = {layers}");
        }
    }

    fn table(fields: serde_json::Value) -> HeuristicTable {
        match fields {
            serde_json::Value::Object(m) => m.into_iter().collect(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn stride_is_refused_with_a_pointer_to_per_kind() {
        let err = build(&table(
            serde_json::json!({ "name": "single-sweep", "stride": 6 }),
        ))
        .unwrap_err();
        assert_eq!(err.field, "stride");
        let text = err.to_string();
        assert!(
            text.starts_with("stride is no longer a field of single-sweep"),
            "{text}"
        );
        assert!(text.contains("use per_kind"), "{text}");
        for bad in [
            serde_json::json!({ "name": "single-sweep", "per_kind": 0 }),
            serde_json::json!({ "name": "single-sweep", "per_kind": "some" }),
            serde_json::json!({ "name": "single-sweep", "per_kind": 2.5 }),
        ] {
            let err = build(&table(bad)).unwrap_err();
            assert_eq!(err.field, "per_kind");
            assert!(err.message.contains(r#"or "all""#), "{err}");
        }
        let err = build(&table(
            serde_json::json!({ "name": "single-sweep", "seed": -1 }),
        ))
        .unwrap_err();
        assert_eq!(err.field, "seed");
    }

    #[test]
    fn the_description_says_how_the_sweep_was_drawn() {
        let (h, normal) = build(&table(serde_json::json!({ "name": "single-sweep" }))).unwrap();
        assert_eq!(
            h.describe().params_json(),
            r#"{"kinds":["parallel","sequential","long-range","recurrent"],"per_kind":"all","seed":0}"#
        );
        assert_eq!(normal["per_kind"], serde_json::json!("all"));
        let (h, _) = build(&table(
            serde_json::json!({ "name": "single-sweep", "per_kind": 10, "seed": 7 }),
        ))
        .unwrap();
        let d = h.describe();
        assert!(!d.budgeted);
        assert_eq!(d.params["per_kind"], serde_json::json!(10));
        assert_eq!(d.params["seed"], serde_json::json!(7));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// On graphs of several sizes, for several seeds, kind sets and draw sizes: every
        /// parallel edge is swept, each other kind has exactly min(per_kind, count) edges,
        /// no edge twice, row-major order, the same seed gives the same sweep, and every
        /// kind asked for is present (none is lost to aliasing).
        #[test]
        fn a_sweep_draws_per_kind(
            layers in 1usize..=8,
            per_kind in prop::option::of(1usize..=20),
            seed in 0u64..1000,
            mask in 1u8..16,
        ) {
            let graph = Graph::new(layers);
            let kinds: Vec<EdgeKind> = EdgeKind::ALL
                .into_iter()
                .enumerate()
                .filter(|(b, _)| mask & (1 << b) != 0)
                .map(|(_, k)| k)
                .collect();
            let h = SingleSweep { kinds: kinds.clone(), per_kind, seed };
            let edges = sweep(graph, &h);
            prop_assert!(edges.windows(2).all(|w| w[0] < w[1]), "not row-major or repeated");
            let mut by_kind: BTreeMap<EdgeKind, usize> = BTreeMap::new();
            for e in &edges {
                prop_assert!(graph.check(*e).is_ok());
                *by_kind.entry(e.kind()).or_default() += 1;
            }
            for kind in EdgeKind::ALL {
                let total = graph.edges_of(kind).count();
                let want = if !kinds.contains(&kind) {
                    0
                } else if kind == EdgeKind::Parallel {
                    total
                } else {
                    per_kind.map_or(total, |k| k.min(total))
                };
                prop_assert_eq!(by_kind.get(&kind).copied().unwrap_or(0), want, "{:?}", kind);
                if kinds.contains(&kind) {
                    prop_assert!(want >= 1, "{:?} left out", kind);
                }
            }
            prop_assert_eq!(sweep(graph, &h.clone()), edges.clone());
            // A different seed draws differently somewhere when there is a choice to make.
            let choice = kinds.iter().any(|&k| {
                k != EdgeKind::Parallel
                    && per_kind.is_some_and(|p| p < graph.edges_of(k).count())
            });
            if !choice {
                let other = SingleSweep { seed: seed + 1, ..h.clone() };
                prop_assert_eq!(sweep(graph, &other), edges);
            }
        }

    }
}
