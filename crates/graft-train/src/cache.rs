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
//!
//! A cache lives where its caller puts it ([`Residence`], issue 25): in host memory, each
//! batch's rows gathered there and copied to the device ([`graft_backend::upload`]: through
//! pinned memory and without blocking on a GPU), or in the device's memory, each batch's
//! rows gathered there. Both give the same batches, bit for bit.

use std::sync::Arc;

use burn::tensor::{Device, Int, Tensor, TensorData};
use graft_model::{ModelInput, Vit};

use crate::{Preprocessing, Split, TrainError};

/// Rows per forward pass when a cache is computed.
pub const CACHE_CHUNK: usize = 64;

/// Where a cache's values are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residence {
    /// Host memory; a batch's rows are gathered on the host and copied to the device.
    Host,
    /// The memory of the device the cache was computed on; a batch's rows are gathered
    /// there.
    Device,
}

/// The values of a [`NodeCache`], `[rows, tokens, dim]`.
#[derive(Debug, Clone)]
enum Values {
    /// Row-major on the host.
    Host(Vec<f32>),
    /// On the device, without autodiff.
    Device(Box<Tensor<3>>),
}

/// One node's plain value for every row of a split.
#[derive(Debug, Clone)]
pub struct NodeCache {
    /// The node (0..=2L) the values are at.
    pub node: usize,
    /// Tokens kept per row: all of them, or 1 (the class token, for a model without
    /// adapters, at the last node).
    pub tokens: usize,
    pub dim: usize,
    values: Values,
    labels: Vec<i64>,
}

impl NodeCache {
    /// The plain value of `node` for every row of `split`, from images, with `model`'s
    /// backbone (its adapters are ignored) on `device` (not an autodiff device: no graph is
    /// recorded), kept as `residence` says. `class_token_only` keeps the pooled tokens alone
    /// (the class token, and the distillation token where there is one), which is all the
    /// heads read from the last node.
    pub fn compute(
        model: &Vit,
        split: &Split,
        pre: &Preprocessing,
        node: usize,
        class_token_only: bool,
        device: &Device,
        residence: Residence,
    ) -> Result<NodeCache, TrainError> {
        let rows: Vec<usize> = (0..split.len()).collect();
        let chunks = rows.chunks(CACHE_CHUNK).map(|chunk| {
            let (images, _) = split.batch(chunk, pre, device);
            model.plain_node(images, node)
        });
        let shape = CacheShape::of(node, model, class_token_only);
        NodeCache::collect(shape, split.labels.clone(), chunks, device, residence)
    }

    /// The plain value of node `to` (`to >= self.node`) from this cache, through the same
    /// chunks as [`NodeCache::compute`], so the result equals computing `to` from images.
    pub fn advance(
        &self,
        model: &Vit,
        to: usize,
        class_token_only: bool,
        device: &Device,
        residence: Residence,
    ) -> Result<NodeCache, TrainError> {
        assert!(
            to >= self.node && self.tokens == model.config.tokens(),
            "advance from a full node below the target"
        );
        let rows: Vec<usize> = (0..self.len()).collect();
        let chunks = rows
            .chunks(CACHE_CHUNK)
            .map(|chunk| model.plain_node_from(self.node, self.gather(chunk, device), to));
        let shape = CacheShape::of(to, model, class_token_only);
        NodeCache::collect(shape, self.labels.clone(), chunks, device, residence)
    }

    /// A cache from its chunks `[rows, all tokens, dim]` in row order, keeping
    /// `shape.tokens` tokens of each row.
    fn collect(
        shape: CacheShape,
        labels: Vec<i64>,
        chunks: impl Iterator<Item = Tensor<3>>,
        device: &Device,
        residence: Residence,
    ) -> Result<NodeCache, TrainError> {
        let CacheShape { node, tokens, dim } = shape;
        let kept = chunks.map(|x| x.narrow(1, 0, tokens));
        let values = match residence {
            Residence::Host => {
                let mut values = Vec::with_capacity(labels.len() * tokens * dim);
                for x in kept {
                    values.extend_from_slice(&host_values(x, node)?);
                }
                Values::Host(values)
            }
            Residence::Device => {
                let parts: Vec<Tensor<3>> = kept.collect();
                Values::Device(Box::new(match parts.is_empty() {
                    true => Tensor::zeros([0, tokens, dim], device),
                    false => Tensor::cat(parts, 0),
                }))
            }
        };
        Ok(NodeCache {
            node,
            tokens,
            dim,
            values,
            labels,
        })
    }

    /// `self`'s rows followed by `other`'s (train + val for the final protocol): on the
    /// device when both are there, else on the host.
    pub fn concat(&self, other: &NodeCache) -> Result<NodeCache, TrainError> {
        assert_eq!(
            (self.node, self.tokens, self.dim),
            (other.node, other.tokens, other.dim),
            "caches of one node"
        );
        let values = match (&self.values, &other.values) {
            (Values::Device(a), Values::Device(b)) => {
                let (a, b) = (a.as_ref().clone(), b.as_ref().clone());
                Values::Device(Box::new(Tensor::cat(vec![a, b], 0)))
            }
            _ => {
                let mut values = self.to_host()?;
                values.extend_from_slice(&other.to_host()?);
                Values::Host(values)
            }
        };
        let mut labels = self.labels.clone();
        labels.extend_from_slice(&other.labels);
        Ok(NodeCache {
            values,
            labels,
            ..*self
        })
    }

    /// The values on the host, row-major.
    fn to_host(&self) -> Result<Vec<f32>, TrainError> {
        match &self.values {
            Values::Host(v) => Ok(v.clone()),
            Values::Device(t) => host_values(t.as_ref().clone(), self.node),
        }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Where the values are.
    pub fn residence(&self) -> Residence {
        match self.values {
            Values::Host(_) => Residence::Host,
            Values::Device(_) => Residence::Device,
        }
    }

    /// Memory the values and labels take (the values where [`NodeCache::residence`] says,
    /// the labels on the host).
    pub fn bytes(&self) -> usize {
        NodeCache::bytes_for(self.len(), self.tokens, self.dim)
    }

    /// Bytes a cache of `rows` rows at `tokens` x `dim` would take.
    pub fn bytes_for(rows: usize, tokens: usize, dim: usize) -> usize {
        rows * (tokens * dim * std::mem::size_of::<f32>() + 8)
    }

    /// The values of rows `idx` on `device` (in its autodiff context).
    ///
    /// # Shapes
    /// -> `[batch, tokens, dim]`
    pub fn gather(&self, idx: &[usize], device: &Device) -> Tensor<3> {
        match &self.values {
            Values::Host(values) => {
                let row = self.tokens * self.dim;
                let mut out = Vec::with_capacity(idx.len() * row);
                for &r in idx {
                    out.extend_from_slice(&values[r * row..(r + 1) * row]);
                }
                let shape = [idx.len(), self.tokens, self.dim];
                graft_backend::upload(TensorData::new(out, shape), device)
            }
            Values::Device(values) => {
                let rows: Vec<i64> = idx.iter().map(|&r| r as i64).collect();
                let rows = TensorData::new(rows, [idx.len()]);
                let rows = graft_backend::upload_int(rows, &values.device());
                let rows = values.as_ref().clone().select(0, rows);
                graft_backend::transfer::with_context_of(rows, device)
            }
        }
    }

    /// # Shapes
    /// -> `[batch]`
    fn labels(&self, idx: &[usize], device: &Device) -> Tensor<1, Int> {
        let labels: Vec<i64> = idx.iter().map(|&r| self.labels[r]).collect();
        graft_backend::upload_int(TensorData::new(labels, [idx.len()]), device)
    }
}

/// What a [`NodeCache`] holds per row.
#[derive(Debug, Clone, Copy)]
struct CacheShape {
    node: usize,
    tokens: usize,
    dim: usize,
}

impl CacheShape {
    fn of(node: usize, model: &Vit, class_token_only: bool) -> CacheShape {
        let tokens = match class_token_only {
            true => model.config.pooled_tokens(),
            false => model.config.tokens(),
        };
        CacheShape {
            node,
            tokens,
            dim: model.config.dim,
        }
    }
}

/// A tensor's values read back to the host, row-major.
fn host_values(x: Tensor<3>, node: usize) -> Result<Vec<f32>, TrainError> {
    x.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| TrainError::Cache(format!("node {node}: {e:?}")))
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
    pub fn concat(&self, other: &CachedNodes) -> Result<CachedNodes, TrainError> {
        assert_eq!(self.reads.len(), other.reads.len(), "caches of one start");
        let reads = self.reads.iter().zip(&other.reads);
        Ok(CachedNodes {
            entry: Arc::new(self.entry.concat(&other.entry)?),
            reads: reads
                .map(|(a, b)| a.concat(b).map(Arc::new))
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn len(&self) -> usize {
        self.entry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entry.is_empty()
    }

    /// Memory the values take.
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
