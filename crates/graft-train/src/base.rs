//! The base model a stage adapts: a pretrain artifact (its `model.safetensors`, preset
//! from its parameters) or a user's timm safetensors file (keyed by its content).

use std::path::{Path, PathBuf};

use graft_store::{Artifact, ArtifactId};
use serde_json::Value;

/// A resolved base model.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModel {
    /// The artifact id, or the blake3 of the file's content.
    pub id: ArtifactId,
    pub path: PathBuf,
    pub preset: String,
}

/// Resolves the base from a `checkpoint` file (which needs `preset`) or a base artifact
/// (whose recorded preset must agree with `preset` when both are given).
pub fn resolve_base(
    checkpoint: Option<&str>,
    preset: Option<&str>,
    artifact: Option<&Artifact>,
) -> Result<BaseModel, String> {
    if let Some(path) = checkpoint {
        let preset = preset.ok_or("checkpoint needs preset (the model the file holds)")?;
        return Ok(BaseModel {
            id: file_fingerprint(Path::new(path))?,
            path: PathBuf::from(path),
            preset: preset.to_owned(),
        });
    }
    let base = artifact.ok_or("no base: give a base input artifact or a checkpoint file")?;
    let path = base.file("model.safetensors");
    if !path.exists() {
        return Err(format!(
            "base artifact {} has no model.safetensors (is it a pretrain artifact?)",
            base.id().short()
        ));
    }
    let recorded = base.manifest().params.get("preset").and_then(Value::as_str);
    let preset = match (preset, recorded) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "preset = {a:?} but the base artifact was trained as {b:?}"
            ));
        }
        (Some(a), _) | (None, Some(a)) => a.to_owned(),
        (None, None) => return Err("the base artifact does not say its preset: set preset".into()),
    };
    Ok(BaseModel {
        id: base.id().clone(),
        path,
        preset,
    })
}

/// blake3 of a file's content: the key input of an external checkpoint.
pub fn file_fingerprint(path: &Path) -> Result<ArtifactId, String> {
    graft_store::hash_file(path)
        .map(|h| h.id())
        .map_err(|e| format!("checkpoint {e}"))
}

/// Checks the `preset` and `checkpoint` parameters of a stage that takes a base model.
pub fn check_base_params(preset: Option<&str>, checkpoint: Option<&str>) -> Result<(), String> {
    if let Some(preset) = preset
        && graft_model::VitConfig::preset(preset, 1).is_none()
    {
        return Err(format!(
            "preset = {preset:?} is not a preset (known: {})",
            graft_model::PRESETS.join(", ")
        ));
    }
    if checkpoint.is_some() && preset.is_none() {
        return Err("checkpoint needs preset (the model the file holds)".into());
    }
    // Said at `--check`, before a pipeline runs anything.
    if let Some(path) = checkpoint
        && !Path::new(path).is_file()
    {
        let preset = preset.unwrap_or("?");
        return Err(format!(
            "checkpoint = {path:?}: no such file (a relative path is read from the directory \
             the pipeline runs in). Put a timm ViT safetensors file of preset {preset} there \
             or point checkpoint at one; README.md, section \"Checkpoints\", says which timm \
             checkpoint reproduces which published baseline and how to save it"
        ));
    }
    Ok(())
}

/// The key inputs a base model adds besides the input artifacts: the content fingerprint
/// of a `checkpoint` file, under the name `base`.
pub fn base_fingerprints(
    checkpoint: Option<&str>,
) -> Result<std::collections::BTreeMap<String, ArtifactId>, String> {
    let Some(path) = checkpoint else {
        return Ok(Default::default());
    };
    Ok([("base".to_owned(), file_fingerprint(Path::new(path))?)].into())
}
