//! What a worker keeps between the runs it trains: the dataset splits it has read and the
//! frozen-prefix activation caches ([`graft_train::NodeCache`], issue 10).
//!
//! A run that leaves the backbone frozen (adapters, the linear probe, random-init
//! adapters) trains from the first node its placement writes on, with the plain values of
//! the nodes its adapters read there beside it ([`graft_graph::PlainStart`]); the plain
//! network's value at each of those nodes, for every row of train, val and test, is
//! computed once in inference mode and kept. Runs on the same backbone and dataset share it, and a cache at a lower node is
//! advanced to a higher one instead of starting from the images. The linear probe keeps
//! only the class token of the last node. Caches are held up to a memory budget per worker
//! (least recently used dropped first); a split whose cache would not fit is not cached,
//! and its rows go through the whole network each time, as without the cache.
//!
//! On a GPU a cache is kept in the GPU's memory when it fits the worker's share of
//! `cache_device_memory_mib`, its batches gathered there; otherwise in host memory under
//! `cache_memory_mib`, its batches copied through pinned memory without blocking, one batch
//! ahead ([`graft_train::Residence`], issue 25). On the CPU every cache is in host memory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graft_backend::Device;
use graft_model::Vit;
use graft_train::{DatasetInfo, NodeCache, Preprocessing, Residence, Split};
use serde::{Deserialize, Serialize};

use crate::FinetuneError;

/// The activation cache's settings (location parameters: results do not depend on them
/// beyond float rounding, so they are not in any key).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CacheSettings {
    pub enabled: bool,
    /// Host memory the caches of one worker may take, in MiB.
    pub memory_mib: usize,
    /// GPU memory the caches of one worker may take, in MiB (its share of the GPU's);
    /// unused on the CPU.
    #[serde(default = "default_device_memory_mib")]
    pub device_memory_mib: usize,
}

/// GPU memory for the caches of the workers on one GPU, by default, in MiB.
pub const DEVICE_MEMORY_MIB: usize = 4096;

fn default_device_memory_mib() -> usize {
    DEVICE_MEMORY_MIB
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            enabled: true,
            memory_mib: 4096,
            device_memory_mib: DEVICE_MEMORY_MIB,
        }
    }
}

/// A dataset artifact's splits in memory.
#[derive(Debug)]
pub struct Dataset {
    pub info: DatasetInfo,
    pub train: Split,
    pub val: Split,
    pub test: Split,
}

impl Dataset {
    pub fn split(&self, name: &str) -> &Split {
        match name {
            "train" => &self.train,
            "val" => &self.val,
            _ => &self.test,
        }
    }
}

/// Which node cache: the backbone's identity, the dataset, the split, the node, and
/// whether it keeps the class token alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    backbone: String,
    dataset: PathBuf,
    split: &'static str,
    node: usize,
    class_token_only: bool,
}

#[derive(Debug)]
struct Entry {
    cache: Arc<NodeCache>,
    last_used: u64,
}

/// A worker's datasets and node caches.
#[derive(Debug, Default)]
pub struct Workbench {
    pub settings: CacheSettings,
    datasets: HashMap<PathBuf, Arc<Dataset>>,
    caches: HashMap<CacheKey, Entry>,
    clock: u64,
    /// The clock when the current run began: its caches are not dropped to make room.
    run_start: u64,
    /// The largest total of cache bytes held at once.
    pub peak_cache_bytes: usize,
}

impl Workbench {
    pub fn new(settings: CacheSettings) -> Workbench {
        Workbench {
            settings,
            ..Workbench::default()
        }
    }

    /// The dataset artifact in `dir`, read once.
    pub fn dataset(&mut self, dir: &Path) -> Result<Arc<Dataset>, FinetuneError> {
        if let Some(d) = self.datasets.get(dir) {
            return Ok(d.clone());
        }
        let info = DatasetInfo::read(dir)?;
        let size = info.preprocessing.image_size;
        let d = Arc::new(Dataset {
            train: Split::read(dir, "train", size)?,
            val: Split::read(dir, "val", size)?,
            test: Split::read(dir, "test", size)?,
            info,
        });
        self.datasets.insert(dir.to_path_buf(), d.clone());
        Ok(d)
    }

    /// Marks the start of a run: the caches it asks for from now on are kept until it ends.
    pub fn begin_run(&mut self) {
        self.clock += 1;
        self.run_start = self.clock;
    }

    /// Bytes the caches hold now, wherever they are.
    pub fn cache_bytes(&self) -> usize {
        self.caches.values().map(|e| e.cache.bytes()).sum()
    }

    /// Bytes the caches kept in `residence` hold now.
    fn held(&self, residence: Residence) -> usize {
        let kept = self
            .caches
            .values()
            .filter(|e| e.cache.residence() == residence);
        kept.map(|e| e.cache.bytes()).sum()
    }

    /// The memory the caches kept in `residence` may take, in bytes.
    fn budget(&self, residence: Residence) -> usize {
        match residence {
            Residence::Host => self.settings.memory_mib << 20,
            Residence::Device => self.settings.device_memory_mib << 20,
        }
    }

    /// Makes room for `bytes` more in `residence` by dropping the least recently used caches
    /// there of runs before this one; whether they fit.
    fn make_room(&mut self, residence: Residence, bytes: usize) -> bool {
        let budget = self.budget(residence);
        if bytes > budget {
            return false;
        }
        while self.held(residence) + bytes > budget {
            let victim = self
                .caches
                .iter()
                .filter(|(_, e)| e.last_used < self.run_start && e.cache.residence() == residence)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match victim {
                Some(k) => self.caches.remove(&k),
                None => return false,
            };
        }
        true
    }

    /// Where a new cache of `bytes` goes, room made: with `gpu`, the GPU's memory when the
    /// worker's share has room, else host memory; `None` when neither has.
    pub(crate) fn place(&mut self, bytes: usize, gpu: bool) -> Option<Residence> {
        if gpu && self.make_room(Residence::Device, bytes) {
            return Some(Residence::Device);
        }
        self.make_room(Residence::Host, bytes)
            .then_some(Residence::Host)
    }

    /// The plain value of `node` for every row of `split` of the dataset in `dir`, for the
    /// backbone `backbone` names (`model`'s), from the cache, advanced from a lower cached
    /// node, or computed from the images; `None` when caching is off or it would not fit.
    #[allow(clippy::too_many_arguments)]
    pub fn node_cache(
        &mut self,
        backbone: &str,
        dir: &Path,
        split_name: &'static str,
        split: &Split,
        pre: &Preprocessing,
        node: usize,
        class_token_only: bool,
        model: &Vit,
        device: &Device,
    ) -> Result<Option<Arc<NodeCache>>, FinetuneError> {
        if !self.settings.enabled {
            return Ok(None);
        }
        self.clock += 1;
        let key = CacheKey {
            backbone: backbone.to_owned(),
            dataset: dir.to_path_buf(),
            split: split_name,
            node,
            class_token_only,
        };
        if let Some(e) = self.caches.get_mut(&key) {
            e.last_used = self.clock;
            return Ok(Some(e.cache.clone()));
        }
        let tokens = if class_token_only {
            model.config.pooled_tokens()
        } else {
            model.config.tokens()
        };
        let bytes = NodeCache::bytes_for(split.len(), tokens, model.config.dim);
        let stamp = self.clock;
        let Some(residence) = self.place(bytes, graft_backend::is_gpu(device)) else {
            return Ok(None);
        };
        // The highest full cache of this backbone, dataset and split at or below `node`.
        let below = self
            .caches
            .iter()
            .filter(|(k, _)| {
                k.backbone == key.backbone
                    && k.dataset == key.dataset
                    && k.split == key.split
                    && !k.class_token_only
                    && k.node <= node
            })
            .max_by_key(|(k, _)| k.node)
            .map(|(_, e)| e.cache.clone());
        let cache = match below {
            Some(from) => from.advance(model, node, class_token_only, device, residence)?,
            None => {
                NodeCache::compute(model, split, pre, node, class_token_only, device, residence)?
            }
        };
        let cache = Arc::new(cache);
        self.caches.insert(
            key,
            Entry {
                cache: cache.clone(),
                last_used: stamp,
            },
        );
        self.peak_cache_bytes = self.peak_cache_bytes.max(self.cache_bytes());
        Ok(Some(cache))
    }
}
