//! Checkpoints in timm's names, and adapter-only files.
//!
//! A timm ViT safetensors file loads as it is: keys are checked against what the model's
//! shape requires before anything is applied, and every missing, unexpected or misshapen
//! key is listed in one error. `head` is optional (timm's in21k checkpoints have none, or
//! one of another size): without a matching head the model keeps its fresh head and the
//! [`LoadReport`] says so. Our own checkpoints are written in the same names and layout,
//! so timm loads them.
//!
//! Adapter files hold `adapters.{i}_{j}.{down,up}.{weight,bias}`, LoRA's
//! `lora.{k}.{q_a,q_b,v_a,v_b}.weight` (block k; A `[r, d]`, B `[d, r]`) and `head.*` in
//! PyTorch layout, with the placement, the adapter (and LoRA) hyper-parameters, the preset and
//! the base checkpoint's id in the safetensors metadata.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

use burn::store::{
    ApplyResult, BurnToPyTorchAdapter, ModuleSnapshot, PyTorchToBurnAdapter, SafetensorsStore,
};
use graft_graph::{Edge, Placement};
use serde::{Deserialize, Serialize};

use crate::{AdapterConfig, KeyMismatch, LoraConfig, ModelError, QvLora, Vit, VitConfig};

/// What a load did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub tensors: usize,
    /// `None` when the head was loaded; otherwise why it was kept fresh.
    pub head_kept_fresh: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct HeaderEntry {
    shape: Vec<usize>,
    dtype: String,
}

/// A safetensors header's tensors: key -> (shape, dtype).
pub type HeaderTensors = BTreeMap<String, (Vec<usize>, String)>;

/// Keys, shapes and dtypes of a safetensors file, and its metadata, from the header alone.
pub fn read_header(path: &Path) -> Result<(HeaderTensors, BTreeMap<String, String>), ModelError> {
    let err = |message: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|e| err(format!("not a safetensors file: {e}")))?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err(err(format!("not a safetensors file: header length {len}")));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .map_err(|e| err(format!("truncated safetensors header: {e}")))?;
    let mut map: HashMap<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| err(format!("invalid safetensors header: {e}")))?;
    let metadata: BTreeMap<String, String> = map
        .remove("__metadata__")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| err(format!("invalid safetensors metadata: {e}")))?
        .unwrap_or_default();
    let mut tensors = BTreeMap::new();
    for (k, v) in map {
        let e: HeaderEntry =
            serde_json::from_value(v).map_err(|e| err(format!("tensor {k}: {e}")))?;
        tensors.insert(k, (e.shape, e.dtype));
    }
    Ok((tensors, metadata))
}

/// The keys and shapes a timm checkpoint of this shape has (PyTorch layout).
pub fn timm_keys(c: &VitConfig) -> BTreeMap<String, Vec<usize>> {
    let (d, m, p) = (c.dim, c.mlp_dim(), c.patch_size);
    let mut k = BTreeMap::new();
    k.insert("cls_token".into(), vec![1, 1, d]);
    k.insert("pos_embed".into(), vec![1, c.embedded_tokens(), d]);
    k.insert("patch_embed.proj.weight".into(), vec![d, c.channels, p, p]);
    if !c.pre_norm {
        k.insert("patch_embed.proj.bias".into(), vec![d]);
    }
    if c.dist_token {
        k.insert("dist_token".into(), vec![1, 1, d]);
        k.insert("head_dist.weight".into(), vec![c.classes, d]);
        k.insert("head_dist.bias".into(), vec![c.classes]);
    }
    if c.reg_tokens > 0 {
        k.insert("reg_token".into(), vec![1, c.reg_tokens, d]);
    }
    if c.pre_norm {
        k.insert("norm_pre.weight".into(), vec![d]);
        k.insert("norm_pre.bias".into(), vec![d]);
    }
    for b in 0..c.depth {
        let mut put = |name: &str, shape: Vec<usize>| k.insert(format!("blocks.{b}.{name}"), shape);
        for n in ["norm1", "norm2"] {
            put(&format!("{n}.weight"), vec![d]);
            put(&format!("{n}.bias"), vec![d]);
        }
        put("attn.qkv.weight", vec![3 * d, d]);
        put("attn.qkv.bias", vec![3 * d]);
        put("attn.proj.weight", vec![d, d]);
        put("attn.proj.bias", vec![d]);
        put("mlp.fc1.weight", vec![m, d]);
        put("mlp.fc1.bias", vec![m]);
        put("mlp.fc2.weight", vec![d, m]);
        put("mlp.fc2.bias", vec![d]);
        if c.layer_scale {
            put("ls1.gamma", vec![d]);
            put("ls2.gamma", vec![d]);
        }
    }
    k.insert("norm.weight".into(), vec![d]);
    k.insert("norm.bias".into(), vec![d]);
    k.insert("head.weight".into(), vec![c.classes, d]);
    k.insert("head.bias".into(), vec![c.classes]);
    k
}

/// Applies a store to the model, mapping a failure to an error naming the file.
fn apply(
    vit: &mut Vit,
    store: &mut SafetensorsStore,
    path: &Path,
) -> Result<ApplyResult, ModelError> {
    vit.load_from(store).map_err(|e| ModelError::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes the model through a store, then makes the file's header canonical.
fn save(vit: &Vit, store: &mut SafetensorsStore, path: &Path) -> Result<(), ModelError> {
    vit.save_into(store).map_err(|e| ModelError::Checkpoint {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    canonicalize(path)
}

/// Whether a parameter path is an adapter's or LoRA's (what the base checkpoint lacks).
fn is_adapter(path: &str) -> bool {
    path.starts_with("adapters.") || path.starts_with("lora.")
}

fn not_adapter(path: &str, _container: &str) -> bool {
    !is_adapter(path)
}

/// Whether a parameter path is one of the heads (`head`, DeiT's `head_dist`).
fn is_head(path: &str) -> bool {
    path.starts_with("head.") || path.starts_with("head_dist.")
}

fn backbone_only(path: &str, _container: &str) -> bool {
    !is_adapter(path) && !is_head(path)
}

fn adapters_and_head(path: &str, _container: &str) -> bool {
    is_adapter(path) || is_head(path)
}

/// The first of a file's keys that no family graft knows ([`crate::FAMILIES`]) has, whatever
/// its shape: the keys known are those of [`timm_keys`] with every family's option on (and
/// off, for the patch embedding's bias, which the pre-norm drops), block indices aside.
fn unknown_key(tensors: &HeaderTensors) -> Option<&String> {
    let every = VitConfig::new(16, 4, 8, 1, 1, 1)
        .with_dist_token(true)
        .with_reg_tokens(1)
        .with_layer_scale(true);
    let known: BTreeSet<String> = [every.clone(), every.with_pre_norm(true)]
        .iter()
        .flat_map(|c| timm_keys(c).into_keys())
        .collect();
    // `blocks.{n}.{name}` is known as block 0's.
    let as_block_0 = |key: &str| {
        let (n, name) = key.strip_prefix("blocks.")?.split_once('.')?;
        n.parse::<usize>().ok().map(|_| format!("blocks.0.{name}"))
    };
    tensors.keys().find(|key| {
        let key = as_block_0(key).unwrap_or_else(|| key.to_string());
        !known.contains(&key)
    })
}

/// The family options a checkpoint's keys show (what its state dict alone can tell:
/// not QuickGELU nor the LayerNorm epsilon), as "family (options)" for messages.
fn layout_of(keys: &HeaderTensors) -> String {
    let has = |k: &str| keys.contains_key(k);
    let registers = keys
        .get("reg_token")
        .map_or(0, |(shape, _)| shape.get(1).copied().unwrap_or(0));
    let shown = VitConfig::new(16, 4, 8, 1, 1, 1)
        .with_dist_token(has("dist_token"))
        .with_reg_tokens(registers)
        .with_layer_scale(has("blocks.0.ls1.gamma"))
        .with_pre_norm(has("norm_pre.weight"));
    let mut options = Vec::new();
    if shown.dist_token {
        options.push("distillation token".to_owned());
    }
    if has("reg_token") {
        options.push(format!("{registers} register tokens"));
    }
    if shown.layer_scale {
        options.push("layer scale".to_owned());
    }
    if shown.pre_norm {
        options.push("pre-norm".to_owned());
    }
    if has("cls_token") && !has("patch_embed.proj.bias") {
        options.push("no patch-embedding bias".to_owned());
    }
    let family = shown.family();
    if options.is_empty() {
        family.to_owned()
    } else {
        format!("{family} ({})", options.join(", "))
    }
}

/// The presets whose timm keys and shapes are the file's, heads aside (several when they
/// differ only where a state dict cannot show it: QuickGELU, DeiT's weights in ViT's layout).
pub(crate) fn fitting_presets(tensors: &HeaderTensors) -> Vec<&'static str> {
    let body = |k: &&String| !is_head(k);
    let file: BTreeMap<&String, &Vec<usize>> = tensors
        .iter()
        .filter(|(k, _)| body(k))
        .map(|(k, (s, _))| (k, s))
        .collect();
    crate::PRESETS
        .iter()
        .copied()
        .filter(|name| {
            let Some(c) = VitConfig::preset(name, 1) else {
                return false;
            };
            let keys = timm_keys(&c);
            let ours: BTreeMap<&String, &Vec<usize>> =
                keys.iter().filter(|(k, _)| body(k)).collect();
            ours == file
        })
        .collect()
}

/// Every key of `config`'s timm layout against the file's, all differences in one error; the
/// layout's keys when they fit.
fn check_keys(
    config: &VitConfig,
    tensors: &HeaderTensors,
    path: &Path,
) -> Result<BTreeMap<String, Vec<usize>>, ModelError> {
    let expected = timm_keys(config);
    let mut missing = Vec::new();
    let mut shapes = Vec::new();
    for (key, shape) in &expected {
        match tensors.get(key) {
            None if is_head(key) => {}
            None => missing.push(key.clone()),
            Some((found, dtype)) => {
                if found != shape && !is_head(key) {
                    shapes.push(format!("{key} {found:?} (expected {shape:?})"));
                }
                if dtype != "F32" {
                    shapes.push(format!("{key} has dtype {dtype} (expected F32)"));
                }
            }
        }
    }
    let unexpected: Vec<String> = tensors
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .cloned()
        .collect();
    if missing.is_empty() && unexpected.is_empty() && shapes.is_empty() {
        return Ok(expected);
    }
    let c = config;
    Err(ModelError::Mismatch(Box::new(KeyMismatch {
        path: path.display().to_string(),
        model: format!(
            "{} d={} L={} patch={} image={}",
            c.family(),
            c.dim,
            c.depth,
            c.patch_size,
            c.image_size
        ),
        layout: layout_of(tensors),
        fits: fitting_presets(tensors),
        missing,
        unexpected,
        shapes,
    })))
}

/// Loads a timm ViT safetensors file into `vit` (its adapters are left as they are).
pub fn load_timm(vit: &mut Vit, path: &Path) -> Result<LoadReport, ModelError> {
    let shown = path.display().to_string();
    let (tensors, metadata) = read_header(path)?;
    if let Some(key) = unknown_key(&tensors) {
        return Err(ModelError::UnknownFamily {
            path: shown,
            key: key.clone(),
        });
    }
    let expected = check_keys(&vit.config, &tensors, path)?;
    let head_fits = expected
        .keys()
        .filter(|k| is_head(k))
        .all(|k| tensors.get(k).map(|t| &t.0) == expected.get(k));
    let head_kept_fresh = if head_fits {
        None
    } else if let Some((shape, _)) = tensors.get("head.weight") {
        Some(format!(
            "the file's head has {} classes, the model {}",
            shape.first().copied().unwrap_or(0),
            vit.config.classes
        ))
    } else {
        Some("the file has no head".to_owned())
    };
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_predicate(if head_fits {
            not_adapter
        } else {
            backbone_only
        })
        .allow_partial(true)
        .validate(false);
    let result = apply(vit, &mut store, path)?;
    if !result.errors.is_empty() {
        let msgs: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        return Err(ModelError::Checkpoint {
            path: shown,
            message: msgs.join("; "),
        });
    }
    Ok(LoadReport {
        tensors: result.applied.len(),
        head_kept_fresh,
        metadata,
    })
}

/// Rewrites a safetensors file's JSON header with sorted keys, so equal tensors give equal
/// bytes: burn-store writes its metadata from a `HashMap`, whose order changes per process.
fn canonicalize(path: &Path) -> Result<(), ModelError> {
    let err = |message: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| err("truncated".into()))?,
    ) as usize;
    let header = bytes
        .get(8..8 + n)
        .ok_or_else(|| err("truncated header".into()))?;
    let value: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| err(e.to_string()))?;
    let mut text = serde_json::to_string(&value).map_err(|e| err(e.to_string()))?;
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(path, out).map_err(|e| err(e.to_string()))
}

/// Writes the backbone and head in timm's names and layout (adapters left out).
pub fn save_timm(vit: &Vit, path: &Path) -> Result<(), ModelError> {
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_predicate(not_adapter)
        .metadata("format", "pt")
        .overwrite(true);
    save(vit, &mut store, path)
}

/// What an adapter file says about itself (its safetensors metadata).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterMeta {
    pub placement: Vec<Edge>,
    pub adapter: AdapterConfig,
    /// LoRA on every block's query and value projections, when the file has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora: Option<LoraConfig>,
    pub preset: String,
    /// Id of the base checkpoint the adapters were trained on.
    pub base: String,
}

/// Writes the adapters (as `adapters.{i}_{j}.*`), LoRA (`lora.{k}.*`) and the head: what
/// adapter or LoRA fine-tuning trained, without the frozen base (PEFT style).
pub fn save_adapters(vit: &Vit, path: &Path, preset: &str, base: &str) -> Result<(), ModelError> {
    // A model without adapters (a linear probe) saves its head alone.
    let adapter = match vit.adapters.first() {
        Some(first) => AdapterConfig {
            rank: first.down.weight.val().dims()[1],
            act: first.act,
            scale: first.scale,
        },
        None => AdapterConfig::new(),
    };
    let meta = AdapterMeta {
        placement: vit.adapters.iter().map(|a| a.edge()).collect(),
        adapter,
        lora: vit.lora.first().map(QvLora::config),
        preset: preset.to_owned(),
        base: base.to_owned(),
    };
    let mut store = SafetensorsStore::from_file(path)
        .with_to_adapter(BurnToPyTorchAdapter)
        .with_predicate(adapters_and_head)
        .metadata(
            "graft.adapters",
            serde_json::to_string(&meta).unwrap_or_default(),
        )
        .overwrite(true);
    for (idx, a) in vit.adapters.iter().enumerate() {
        store = store.with_key_remapping(
            format!(r"^adapters\.{idx}\."),
            format!("adapters.{}_{}.", a.src, a.dst),
        );
    }
    save(vit, &mut store, path)
}

/// Reads an adapter file's metadata.
pub fn adapter_meta(path: &Path) -> Result<AdapterMeta, ModelError> {
    let (_, metadata) = read_header(path)?;
    let err = |message: String| ModelError::Checkpoint {
        path: path.display().to_string(),
        message,
    };
    let text = metadata
        .get("graft.adapters")
        .ok_or_else(|| err("no graft.adapters metadata: not a graft adapter file".into()))?;
    serde_json::from_str(text).map_err(|e| err(format!("invalid graft.adapters metadata: {e}")))
}

/// Replaces `vit`'s adapters, LoRA and head with those of an adapter file.
pub fn load_adapters(vit: Vit, path: &Path) -> Result<(Vit, AdapterMeta), ModelError> {
    let meta = adapter_meta(path)?;
    let shown = path.display().to_string();
    let placement = Placement::new(vit.graph(), meta.placement.iter().copied())?;
    let mut vit = vit.with_placement(&placement, &meta.adapter)?;
    vit = match &meta.lora {
        Some(lora) => vit.with_lora(lora),
        None => Vit {
            lora: Vec::new(),
            ..vit
        },
    };
    let mut store = SafetensorsStore::from_file(path)
        .with_from_adapter(PyTorchToBurnAdapter)
        .with_predicate(adapters_and_head)
        .allow_partial(true)
        .validate(false);
    for (idx, e) in placement.edges().iter().enumerate() {
        store = store.with_key_remapping(
            format!(r"^adapters\.{}_{}\.", e.i, e.j),
            format!("adapters.{idx}."),
        );
    }
    let result = apply(&mut vit, &mut store, path)?;
    let missing: Vec<String> = result
        .missing
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| is_adapter(p) || is_head(p))
        .collect();
    if !result.errors.is_empty() || !missing.is_empty() || !result.unused.is_empty() {
        let mut msgs: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
        if !missing.is_empty() {
            msgs.push(format!("missing: {}", missing.join(", ")));
        }
        if !result.unused.is_empty() {
            msgs.push(format!("unexpected: {}", result.unused.join(", ")));
        }
        return Err(ModelError::Checkpoint {
            path: shown,
            message: msgs.join("; "),
        });
    }
    Ok((vit, meta))
}
