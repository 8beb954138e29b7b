//! The residual graph of a ViT with L blocks, knowing nothing about tensors.
//!
//! Nodes are numbered 0..=2L: node 0 is the token sequence entering block 1, node 2l-1
//! follows the attention sub-layer of block l, node 2l its MLP sub-layer. An [`Edge`]
//! (i, j) is an adapter reading node i and adding into node j; its [`EdgeKind`] follows
//! from i and j. A [`Placement`] is a validated, sorted set of distinct edges.
//! [`Dims`] and [`forward_flops`] count the multiply-adds of a forward pass analytically.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Errors of graph construction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    #[error("edge ({i}, {j}) is outside the graph: nodes are 0..={max} for {layers} blocks")]
    OutOfRange {
        i: usize,
        j: usize,
        max: usize,
        layers: usize,
    },
    #[error("edge ({i}, {j}) appears twice in the placement")]
    Duplicate { i: usize, j: usize },
    #[error("cannot read {text:?} as an edge: expected \"i-j\", \"(i, j)\" or \"i,j\"")]
    Parse { text: String },
}

/// What an edge does, from its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeKind {
    /// j = i + 1: beside one sub-layer.
    Parallel,
    /// i = j: after node j.
    Sequential,
    /// j > i + 1: skips one or more sub-layers.
    LongRange,
    /// i > j: feeds a later node back to an earlier one (second forward pass).
    Recurrent,
}

impl EdgeKind {
    pub const ALL: [EdgeKind; 4] = [
        EdgeKind::Parallel,
        EdgeKind::Sequential,
        EdgeKind::LongRange,
        EdgeKind::Recurrent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::Parallel => "parallel",
            EdgeKind::Sequential => "sequential",
            EdgeKind::LongRange => "long-range",
            EdgeKind::Recurrent => "recurrent",
        }
    }
}

/// An adapter position: reads node `i`, adds into node `j`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Edge {
    pub i: usize,
    pub j: usize,
}

impl Edge {
    pub const fn new(i: usize, j: usize) -> Edge {
        Edge { i, j }
    }

    pub fn kind(self) -> EdgeKind {
        if self.j == self.i + 1 {
            EdgeKind::Parallel
        } else if self.i == self.j {
            EdgeKind::Sequential
        } else if self.j > self.i {
            EdgeKind::LongRange
        } else {
            EdgeKind::Recurrent
        }
    }

    /// Parses `"3-5"`, `"(3, 5)"`, `"3,5"` or `"3_5"`.
    pub fn parse(text: &str) -> Result<Edge, GraphError> {
        let t = text.trim().trim_start_matches('(').trim_end_matches(')');
        let parts: Vec<&str> = t.split(['-', ',', '_']).map(str::trim).collect();
        match parts.as_slice() {
            [a, b] => match (a.parse(), b.parse()) {
                (Ok(i), Ok(j)) => Ok(Edge { i, j }),
                _ => Err(GraphError::Parse {
                    text: text.to_owned(),
                }),
            },
            _ => Err(GraphError::Parse {
                text: text.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({}, {})", self.i, self.j)
    }
}

/// The graph of a ViT with `layers` blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Graph {
    pub layers: usize,
}

impl Graph {
    pub const fn new(layers: usize) -> Graph {
        Graph { layers }
    }

    /// n = 2L + 1.
    pub const fn nodes(self) -> usize {
        2 * self.layers + 1
    }

    pub fn check(self, e: Edge) -> Result<Edge, GraphError> {
        let max = 2 * self.layers;
        if e.i > max || e.j > max {
            return Err(GraphError::OutOfRange {
                i: e.i,
                j: e.j,
                max,
                layers: self.layers,
            });
        }
        Ok(e)
    }

    /// All n² edges, row-major (by i, then j).
    pub fn edges(self) -> impl Iterator<Item = Edge> {
        let n = self.nodes();
        (0..n).flat_map(move |i| (0..n).map(move |j| Edge { i, j }))
    }

    pub fn edges_of(self, kind: EdgeKind) -> impl Iterator<Item = Edge> {
        self.edges().filter(move |e| e.kind() == kind)
    }

    /// The 2L parallel edges: "adapters in every block".
    pub fn parallel_all(self) -> Placement {
        Placement {
            edges: self.edges_of(EdgeKind::Parallel).collect(),
        }
    }
}

/// A set of distinct, valid edges, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    edges: Vec<Edge>,
}

impl Placement {
    pub fn new(
        graph: Graph,
        edges: impl IntoIterator<Item = Edge>,
    ) -> Result<Placement, GraphError> {
        let mut seen = BTreeSet::new();
        for e in edges {
            graph.check(e)?;
            if !seen.insert(e) {
                return Err(GraphError::Duplicate { i: e.i, j: e.j });
            }
        }
        Ok(Placement {
            edges: seen.into_iter().collect(),
        })
    }

    pub fn empty() -> Placement {
        Placement::default()
    }

    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    pub fn len(&self) -> usize {
        self.edges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.edges.is_empty()
    }

    /// The placement's id: 12 hex digits of blake3 over its sorted edges. Two heuristics
    /// that propose the same edges propose the same id; the empty placement (a linear
    /// probe's backbone) has one too.
    pub fn id(&self) -> String {
        let mut h = blake3::Hasher::new();
        h.update(b"graft-placement-v1");
        h.update(&(self.edges.len() as u64).to_le_bytes());
        for e in &self.edges {
            h.update(&(e.i as u64).to_le_bytes());
            h.update(&(e.j as u64).to_le_bytes());
        }
        h.finalize().to_hex()[..12].to_owned()
    }

    pub fn has_recurrent(&self) -> bool {
        self.edges.iter().any(|e| e.kind() == EdgeKind::Recurrent)
    }

    /// Where the second pass starts: the smallest output node of a recurrent edge.
    pub fn second_pass_start(&self) -> Option<usize> {
        self.edges
            .iter()
            .filter(|e| e.kind() == EdgeKind::Recurrent)
            .map(|e| e.j)
            .min()
    }
}

/// Where a forward pass with a set of adapters on a frozen backbone can start from the plain
/// (adapter-free) network's values, which the fine-tune stage's activation cache keeps.
///
/// Only the node an adapter writes changes the network: every node below the smallest such
/// node (`entry`), and `entry`'s own value before the adapters add to it, is the plain
/// network's. What an adapter reads from below `entry` is a plain value too, and so is what
/// a recurrent edge (i, j) reads from pass 1 when i lies below every node a non-recurrent
/// edge writes: pass 1 is then the plain network at every node it is read, and need not be
/// computed. So a pass starts at `entry` from cached plain values at `entry` and at `reads`,
/// not at the smallest node any adapter touches: a long-range edge (i, j) trains from j with
/// x_i beside it, a single recurrent edge (i, j) from j with x_i as pass 1's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlainStart {
    /// The smallest node any adapter writes (a recurrent edge (i, j) writes j).
    pub entry: usize,
    /// The nodes, other than `entry`, whose plain values the pass reads without computing
    /// them: the sources below `entry` of parallel and long-range edges, and with
    /// `skip_first_pass` the sources of the recurrent edges. Sorted, distinct.
    pub reads: Vec<usize>,
    /// Whether pass 1 is skipped: there are recurrent edges, and each reads a node below
    /// every node a non-recurrent edge writes.
    pub skip_first_pass: bool,
}

impl PlainStart {
    /// The start for `edges` (any set: duplicates and order do not matter), `None` without
    /// edges.
    pub fn of(edges: impl IntoIterator<Item = Edge>) -> Option<PlainStart> {
        let edges: BTreeSet<Edge> = edges.into_iter().collect();
        let entry = edges.iter().map(|e| e.j).min()?;
        let first_written = first_forward_write(&edges);
        let recurrent: Vec<&Edge> = edges
            .iter()
            .filter(|e| e.kind() == EdgeKind::Recurrent)
            .collect();
        let skip_first_pass =
            !recurrent.is_empty() && recurrent.iter().all(|e| e.i < first_written);
        let mut reads: BTreeSet<usize> = edges
            .iter()
            .filter(|e| matches!(e.kind(), EdgeKind::Parallel | EdgeKind::LongRange))
            .filter(|e| e.i < entry)
            .map(|e| e.i)
            .collect();
        if skip_first_pass {
            reads.extend(recurrent.iter().map(|e| e.i));
        }
        Some(PlainStart {
            entry,
            reads: reads.into_iter().collect(),
            skip_first_pass,
        })
    }

    /// The lowest node whose plain value the pass needs: where a cache of this start is
    /// computed from, and the order a worker takes runs in.
    pub fn lowest(&self) -> usize {
        self.reads
            .first()
            .map_or(self.entry, |&r| r.min(self.entry))
    }
}

/// The first node pass 1 changes, the smallest node a non-recurrent edge writes
/// (`usize::MAX` for none): below it pass 1 is the plain network.
fn first_forward_write<'a>(edges: impl IntoIterator<Item = &'a Edge>) -> usize {
    edges
        .into_iter()
        .filter(|e| e.kind() != EdgeKind::Recurrent)
        .map(|e| e.j)
        .min()
        .unwrap_or(usize::MAX)
}

/// The shapes that decide a ViT's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    pub image_size: usize,
    pub patch_size: usize,
    pub channels: usize,
    pub dim: usize,
    pub layers: usize,
    pub mlp_dim: usize,
    pub classes: usize,
}

impl Dims {
    /// Tokens per image: patches plus the class token.
    pub fn tokens(&self) -> usize {
        (self.image_size / self.patch_size).pow(2) + 1
    }

    /// Multiply-add FLOPs (2 per multiply-add) of one sub-layer k (1..=2L) per image:
    /// odd k attention (qkv, scores, weighted sum, projection), even k MLP.
    pub fn sublayer_flops(&self, k: usize) -> u64 {
        let (t, d, m) = (self.tokens() as u64, self.dim as u64, self.mlp_dim as u64);
        if k % 2 == 1 {
            2 * (t * d * 3 * d + 2 * t * t * d + t * d * d)
        } else {
            2 * (2 * t * d * m)
        }
    }

    /// Patch embedding per image.
    pub fn embed_flops(&self) -> u64 {
        let n = (self.tokens() - 1) as u64;
        2 * n * (self.channels * self.patch_size * self.patch_size) as u64 * self.dim as u64
    }

    pub fn head_flops(&self) -> u64 {
        2 * (self.dim * self.classes) as u64
    }

    /// One adapter of bottleneck r on every token.
    pub fn adapter_flops(&self, r: usize) -> u64 {
        2 * (self.tokens() * 2 * self.dim * r) as u64
    }

    /// Parameters of the linear head: d·classes + classes.
    pub fn head_params(&self) -> usize {
        self.dim * self.classes + self.classes
    }

    /// Trainable parameters of adapter fine-tuning with `adapters` adapters of
    /// bottleneck r: the adapters and the head.
    pub fn adapter_tuning_params(&self, adapters: usize, r: usize) -> usize {
        adapters * self.adapter_params(r) + self.head_params()
    }

    /// Trainable parameters of one adapter: 2dr + r + d.
    pub fn adapter_params(&self, r: usize) -> usize {
        2 * self.dim * r + r + self.dim
    }

    /// Parameters of LoRA of rank r on the query and value projections of every block
    /// (A: r x d and B: d x r for each, no biases): L · 2 · 2dr.
    pub fn lora_params(&self, r: usize) -> usize {
        self.layers * 2 * 2 * self.dim * r
    }

    /// Trainable parameters of LoRA fine-tuning at rank r: the low-rank factors and the head.
    pub fn lora_tuning_params(&self, r: usize) -> usize {
        self.lora_params(r) + self.head_params()
    }

    /// Forward FLOPs per image that LoRA of rank r on the query and value projections adds:
    /// x -> A x -> B A x on every token, twice per block.
    pub fn lora_flops(&self, r: usize) -> u64 {
        (self.layers as u64) * 2 * 2 * (self.tokens() * 2 * self.dim * r) as u64
    }
}

/// Forward FLOPs per image of the backbone with `placement` (bottleneck r): matrix
/// multiplications only (LayerNorm, softmax, GELU and additions are left out). A recurrent
/// edge adds a second pass over the sub-layers after its output node, with every adapter
/// into those nodes evaluated again.
pub fn forward_flops(dims: &Dims, placement: &Placement, r: usize) -> u64 {
    let two_l = 2 * dims.layers;
    let blocks: u64 = (1..=two_l).map(|k| dims.sublayer_flops(k)).sum();
    let mut total = dims.embed_flops() + blocks + dims.head_flops();
    let forward: Vec<&Edge> = placement
        .edges()
        .iter()
        .filter(|e| e.kind() != EdgeKind::Recurrent)
        .collect();
    total += forward.len() as u64 * dims.adapter_flops(r);
    if let Some(start) = placement.second_pass_start() {
        total += (start + 1..=two_l)
            .map(|k| dims.sublayer_flops(k))
            .sum::<u64>();
        let again = forward.iter().filter(|e| e.j >= start).count() as u64;
        let recurrent = (placement.len() - forward.len()) as u64;
        total += (again + recurrent) * dims.adapter_flops(r);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_id_depends_on_edges_only() {
        let g = Graph::new(2);
        let a = Placement::new(g, [Edge::new(0, 1), Edge::new(3, 1)]).unwrap();
        let b = Placement::new(g, [Edge::new(3, 1), Edge::new(0, 1)]).unwrap();
        let c = Placement::new(g, [Edge::new(0, 1)]).unwrap();
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), c.id());
        assert_ne!(c.id(), Placement::empty().id());
        assert_eq!(a.id().len(), 12);
    }

    #[test]
    fn vit_b_counts() {
        let g = Graph::new(12);
        assert_eq!(g.nodes(), 25);
        assert_eq!(g.edges().count(), 625);
        let counts: Vec<usize> = EdgeKind::ALL
            .iter()
            .map(|k| g.edges_of(*k).count())
            .collect();
        assert_eq!(counts, [24, 25, 276, 300]);
        assert_eq!(g.parallel_all().len(), 24);
    }

    /// LoRA of rank 8 on q and v of ViT-B/16: 12 blocks x 2 projections x (8 x 768 + 768 x 8).
    #[test]
    fn lora_counts_on_vit_b() {
        let d = Dims {
            image_size: 224,
            patch_size: 16,
            channels: 3,
            dim: 768,
            layers: 12,
            mlp_dim: 3072,
            classes: 100,
        };
        assert_eq!(d.lora_params(8), 294_912);
        assert_eq!(d.lora_tuning_params(8), 294_912 + 76_900);
        // 197 tokens through d x r, then r x d (2 FLOPs per multiply-add), for q and v, in
        // 12 blocks.
        assert_eq!(d.lora_flops(8), 116_195_328);
    }

    #[test]
    fn bad_edges_are_rejected_by_name() {
        let g = Graph::new(2);
        let e = Placement::new(g, [Edge::new(0, 5)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "edge (0, 5) is outside the graph: nodes are 0..=4 for 2 blocks"
        );
        assert!(Placement::new(g, [Edge::new(1, 2), Edge::new(1, 2)]).is_err());
        assert_eq!(Edge::parse("(3, 5)").unwrap(), Edge::new(3, 5));
        assert_eq!(Edge::parse("3-5").unwrap(), Edge::new(3, 5));
        assert!(Edge::parse("3").is_err());
    }

    #[test]
    fn plain_start_of_each_edge_kind() {
        let start = |edges: &[(usize, usize)]| {
            PlainStart::of(edges.iter().map(|&(i, j)| Edge::new(i, j))).unwrap()
        };
        let s = |entry, reads: &[usize], skip| PlainStart {
            entry,
            reads: reads.to_vec(),
            skip_first_pass: skip,
        };
        assert_eq!(PlainStart::of([]), None);
        assert_eq!(start(&[(2, 3)]), s(3, &[2], false));
        assert_eq!(start(&[(3, 3)]), s(3, &[], false));
        assert_eq!(start(&[(1, 6)]), s(6, &[1], false));
        // A single recurrent edge: pass 2 from node 1, pass 1's node 4 is plain.
        assert_eq!(start(&[(4, 1)]), s(1, &[4], true));
        // Pass 1 changes node 3 before the recurrent edge reads node 4: computed.
        assert_eq!(start(&[(4, 1), (2, 3)]), s(1, &[], false));
        assert_eq!(start(&[(4, 2), (1, 3)]), s(2, &[1], false));
        // Pass 1 changes node 4 only after the recurrent edge's node 3: skipped.
        assert_eq!(start(&[(3, 2), (0, 4)]), s(2, &[0, 3], true));
        // A source at the entry itself is computed in the pass.
        assert_eq!(start(&[(3, 3), (3, 5)]), s(3, &[], false));
        assert_eq!(start(&[(0, 1), (1, 2), (2, 3)]), s(1, &[0], false));
        assert_eq!(s(3, &[1], false).lowest(), 1);
        assert_eq!(s(1, &[4], true).lowest(), 1);
    }

    proptest::proptest! {
        /// Every node below the entry is written by no adapter; each read is below the entry
        /// or a recurrent source; the entry is written.
        #[test]
        fn plain_start_reads_only_plain_nodes(
            edges in proptest::collection::vec((0usize..9, 0usize..9), 1..6)
        ) {
            let edges: Vec<Edge> = edges.into_iter().map(|(i, j)| Edge::new(i, j)).collect();
            let p = PlainStart::of(edges.iter().copied()).unwrap();
            proptest::prop_assert!(edges.iter().all(|e| e.j >= p.entry));
            proptest::prop_assert!(edges.iter().any(|e| e.j == p.entry));
            let first_written = first_forward_write(&edges);
            for &r in &p.reads {
                proptest::prop_assert!(r < p.entry || (p.skip_first_pass && r < first_written));
                proptest::prop_assert!(edges.iter().any(|e| e.i == r));
            }
            for e in &edges {
                let forward = matches!(e.kind(), EdgeKind::Parallel | EdgeKind::LongRange);
                if forward && e.i < p.entry {
                    proptest::prop_assert!(p.reads.contains(&e.i));
                }
                if e.kind() == EdgeKind::Recurrent && p.skip_first_pass {
                    proptest::prop_assert!(p.reads.contains(&e.i));
                }
            }
        }
    }

    fn dims() -> Dims {
        Dims {
            image_size: 224,
            patch_size: 16,
            channels: 3,
            dim: 768,
            layers: 12,
            mlp_dim: 3072,
            classes: 47,
        }
    }

    #[test]
    fn recurrent_edge_from_the_top_to_the_input_doubles_the_blocks() {
        let d = dims();
        let g = Graph::new(12);
        let plain = forward_flops(&d, &Placement::empty(), 8);
        let rec = forward_flops(&d, &Placement::new(g, [Edge::new(24, 0)]).unwrap(), 8);
        let blocks: u64 = (1..=24).map(|k| d.sublayer_flops(k)).sum();
        assert_eq!(rec - plain, blocks + d.adapter_flops(8));
        let ratio = rec as f64 / plain as f64;
        assert!((1.95..2.0).contains(&ratio), "{ratio}");
        // ViT-B/16 at 224 px: 17.6 G multiply-adds (the "17.6 GFLOPs" of fvcore and timm).
        assert!((35.0e9..35.3e9).contains(&(plain as f64)), "{plain}");
    }

    #[test]
    fn forward_adapters_cost_one_evaluation_each() {
        let d = dims();
        let g = Graph::new(12);
        let plain = forward_flops(&d, &Placement::empty(), 8);
        assert_eq!(
            forward_flops(&d, &g.parallel_all(), 8),
            plain + 24 * d.adapter_flops(8)
        );
    }
}
