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

    /// The smaller of the node it reads and the node it writes.
    pub fn lower_node(self) -> usize {
        self.i.min(self.j)
    }

    /// The smallest node any of `edges` reads or writes (recurrent ones included), or
    /// `None` for none: below it, and at it before adapters add, the network is the plain
    /// one (the fine-tune stage's activation cache starts there).
    pub fn first_touched_node(edges: impl IntoIterator<Item = Edge>) -> Option<usize> {
        edges.into_iter().map(Edge::lower_node).min()
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
