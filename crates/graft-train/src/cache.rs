//! The frozen-prefix activation cache (issue 10). With no data augmentation, every node of
//! a frozen backbone below the first node a placement writes, and every node its adapters
//! read there ([`Vit::plain_start`]), has the same value in every epoch and every run on
//! the same base and dataset. A [`NodeCache`] holds the plain network's value at one node
//! for every row of a split, computed once in inference mode; a run then trains from its
//! entry node on, with the nodes it reads beside it ([`CachedNodes`], [`Rows::Node`]), and
//! the linear probe from the class token of the last node.
//!
//! The values are computed in fixed chunks of [`CACHE_CHUNK`] rows, in row order, whoever
//! asks, so a cache (and a run trained from it) does not depend on which runs came before
//! or on the training batch size.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use graft_model::{ModelInput, Vit};

use crate::{Preprocessing, Split, TrainError};

/// Rows per forward pass when a cache is computed.
pub const CACHE_CHUNK: usize = 64;

/// One node's plain value for every row of a split, on the host.
#[derive(Debug, Clone)]
pub struct NodeCache {
    /// The node (0..=2L) the values are at.
    pub node: usize,
    /// Tokens kept per row: all of them, or 1 (the class token, for a model without
    /// adapters, at the last node).
    pub tokens: usize,
    pub dim: usize,
    values: Vec<f32>,
    labels: Vec<i64>,
}

impl NodeCache {
    /// The plain value of `node` for every row of `split`, from images, with `model`'s
    /// backbone (its adapters are ignored) on `device` (not an autodiff device: no graph is
    /// recorded). `class_token_only` keeps token 0 alone, which is all the head reads from
    /// the last node.
    pub fn compute(
        model: &Vit,
        split: &Split,
        pre: &Preprocessing,
        node: usize,
        class_token_only: bool,
        device: &Device,
    ) -> Result<NodeCache, TrainError> {
        let rows: Vec<usize> = (0..split.len()).collect();
        let mut out = NodeCache::empty(node, model, class_token_only, split.labels.clone());
        for chunk in rows.chunks(CACHE_CHUNK) {
            let (images, _) = split.batch(chunk, pre, device);
            out.push(model.plain_node(images, node))?;
        }
        Ok(out)
    }

    /// The plain value of node `to` (`to >= self.node`) from this cache, through the same
    /// chunks as [`NodeCache::compute`], so the result equals computing `to` from images.
    pub fn advance(
        &self,
        model: &Vit,
        to: usize,
        class_token_only: bool,
        device: &Device,
    ) -> Result<NodeCache, TrainError> {
        assert!(
            to >= self.node && self.tokens == model.config.tokens(),
            "advance from a full node below the target"
        );
        let rows: Vec<usize> = (0..self.len()).collect();
        let mut out = NodeCache::empty(to, model, class_token_only, self.labels.clone());
        for chunk in rows.chunks(CACHE_CHUNK) {
            let value = self.gather(chunk, device);
            out.push(model.plain_node_from(self.node, value, to))?;
        }
        Ok(out)
    }

    fn empty(node: usize, model: &Vit, class_token_only: bool, labels: Vec<i64>) -> NodeCache {
        let tokens = if class_token_only {
            1
        } else {
            model.config.tokens()
        };
        NodeCache {
            node,
            tokens,
            dim: model.config.dim,
            values: Vec::with_capacity(labels.len() * tokens * model.config.dim),
            labels,
        }
    }

    /// Appends a chunk `[rows, tokens, dim]`, keeping the first `self.tokens` tokens.
    fn push(&mut self, x: Tensor<3>) -> Result<(), TrainError> {
        let [b, _, d] = x.dims();
        let x = x.narrow(1, 0, self.tokens);
        let values = x
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| TrainError::Cache(format!("node {}: {e:?}", self.node)))?;
        debug_assert_eq!(values.len(), b * self.tokens * d);
        self.values.extend_from_slice(&values);
        Ok(())
    }

    /// `self`'s rows followed by `other`'s (train + val for the final protocol).
    pub fn concat(&self, other: &NodeCache) -> NodeCache {
        assert_eq!(
            (self.node, self.tokens, self.dim),
            (other.node, other.tokens, other.dim),
            "caches of one node"
        );
        let mut values = self.values.clone();
        values.extend_from_slice(&other.values);
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        NodeCache {
            values,
            labels,
            ..*self
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Host memory the values take.
    pub fn bytes(&self) -> usize {
        self.values.len() * std::mem::size_of::<f32>() + self.labels.len() * 8
    }

    /// Bytes a cache of `rows` rows at `tokens` x `dim` would take.
    pub fn bytes_for(rows: usize, tokens: usize, dim: usize) -> usize {
        rows * (tokens * dim * std::mem::size_of::<f32>() + 8)
    }

    /// The values of rows `idx`.
    ///
    /// # Shapes
    /// -> `[batch, tokens, dim]`
    pub fn gather(&self, idx: &[usize], device: &Device) -> Tensor<3> {
        let row = self.tokens * self.dim;
        let mut out = Vec::with_capacity(idx.len() * row);
        for &r in idx {
            out.extend_from_slice(&self.values[r * row..(r + 1) * row]);
        }
        Tensor::from_data(
            TensorData::new(out, [idx.len(), self.tokens, self.dim]),
            device,
        )
    }

    /// # Shapes
    /// -> `[batch]`
    fn labels(&self, idx: &[usize], device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = idx.iter().map(|&r| self.labels[r]).collect();
        Tensor::from_data(TensorData::new(labels, [idx.len()]), device)
    }
}

/// The cached plain values a run starts from, for the same rows of one split: its entry
/// node and the nodes its adapters read without the pass computing them
/// ([`graft_graph::PlainStart`]).
#[derive(Debug, Clone)]
pub struct CachedNodes {
    pub entry: Arc<NodeCache>,
    /// In the order of [`graft_graph::PlainStart::reads`].
    pub reads: Vec<Arc<NodeCache>>,
}

impl CachedNodes {
    /// `entry` and `reads`, caches of the same rows (same labels).
    pub fn new(entry: Arc<NodeCache>, reads: Vec<Arc<NodeCache>>) -> CachedNodes {
        assert!(
            reads.iter().all(|r| r.labels == entry.labels),
            "caches of one split"
        );
        CachedNodes { entry, reads }
    }

    /// `self`'s rows followed by `other`'s (train + val for the final protocol).
    pub fn concat(&self, other: &CachedNodes) -> CachedNodes {
        assert_eq!(self.reads.len(), other.reads.len(), "caches of one start");
        CachedNodes {
            entry: Arc::new(self.entry.concat(&other.entry)),
            reads: self
                .reads
                .iter()
                .zip(&other.reads)
                .map(|(a, b)| Arc::new(a.concat(b)))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.entry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entry.is_empty()
    }

    /// Host memory the values take.
    pub fn bytes(&self) -> usize {
        self.entry.bytes() + self.reads.iter().map(|r| r.bytes()).sum::<usize>()
    }

    /// The rows `idx` as a node input with its reads, and labels.
    ///
    /// # Shapes
    /// -> entry value and reads `[batch, tokens, dim]`, labels `[batch]`
    pub fn batch(&self, idx: &[usize], device: &Device) -> (ModelInput, Tensor<1, Int>) {
        (
            ModelInput::Node {
                node: self.entry.node,
                value: self.entry.gather(idx, device),
                reads: self
                    .reads
                    .iter()
                    .map(|r| (r.node, r.gather(idx, device)))
                    .collect(),
            },
            self.entry.labels(idx, device),
        )
    }
}

/// The rows a run trains on or is measured on: images, or a node's cached values.
#[derive(Debug, Clone, Copy)]
pub enum Rows<'a> {
    Images {
        split: &'a Split,
        pre: &'a Preprocessing,
    },
    Node(&'a CachedNodes),
}

impl Rows<'_> {
    pub fn len(&self) -> usize {
        match self {
            Rows::Images { split, .. } => split.len(),
            Rows::Node(cache) => cache.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows `idx` as model input and labels.
    pub fn batch(&self, idx: &[usize], device: &Device) -> (ModelInput, Tensor<1, Int>) {
        match self {
            Rows::Images { split, pre } => {
                let (x, y) = split.batch(idx, pre, device);
                (ModelInput::Images(x), y)
            }
            Rows::Node(cache) => cache.batch(idx, device),
        }
    }
}
