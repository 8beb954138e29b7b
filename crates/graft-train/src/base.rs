//! The base model a stage adapts: a pretrain artifact (its `model.safetensors`, preset
//! from its parameters) or a user's timm safetensors file (keyed by its content), named
//! by its path or, as `timm/<model>`, found in the Hugging Face cache ([`crate::hub`]).

use std::path::{Path, PathBuf};

use graft_store::{Artifact, ArtifactId};
use serde_json::Value;

use crate::hub::{HubEnv, HubName};

/// A resolved base model.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseModel {
    /// The artifact id, or the blake3 of the file's content.
    pub id: ArtifactId,
    pub path: PathBuf,
    pub preset: String,
}

/// The file a `checkpoint` value names: a path as it is, or a timm model's
/// `model.safetensors` in the Hugging Face cache that `env` places.
pub fn checkpoint_file(checkpoint: &str, env: &HubEnv) -> Result<PathBuf, String> {
    match HubName::parse(checkpoint) {
        None => Ok(PathBuf::from(checkpoint)),
        Some(name) => name?.locate(env),
    }
}

/// Resolves the base from a `checkpoint` file (which needs `preset`) or a base artifact
/// (whose recorded preset must agree with `preset` when both are given).
pub fn resolve_base(
    checkpoint: Option<&str>,
    preset: Option<&str>,
    artifact: Option<&Artifact>,
) -> Result<BaseModel, String> {
    resolve_base_in(checkpoint, preset, artifact, &HubEnv::from_process())
}

/// [`resolve_base`] with the Hugging Face cache that `env` places.
fn resolve_base_in(
    checkpoint: Option<&str>,
    preset: Option<&str>,
    artifact: Option<&Artifact>,
    env: &HubEnv,
) -> Result<BaseModel, String> {
    if let Some(checkpoint) = checkpoint {
        let preset = preset.ok_or("checkpoint needs preset (the model the file holds)")?;
        let path = checkpoint_file(checkpoint, env)?;
        return Ok(BaseModel {
            id: file_fingerprint(&path)?,
            path,
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

/// Checks the `preset` and `checkpoint` parameters of a stage that takes a base model: a
/// checkpoint file must be there, and so must a named model in the Hugging Face cache.
pub fn check_base_params(preset: Option<&str>, checkpoint: Option<&str>) -> Result<(), String> {
    check_base_params_in(preset, checkpoint, &HubEnv::from_process())
}

/// [`check_base_params`] with the Hugging Face cache that `env` places.
fn check_base_params_in(
    preset: Option<&str>,
    checkpoint: Option<&str>,
    env: &HubEnv,
) -> Result<(), String> {
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
    let Some(checkpoint) = checkpoint else {
        return Ok(());
    };
    if let Some(name) = HubName::parse(checkpoint) {
        return name?.locate(env).map(|_| ());
    }
    if !Path::new(checkpoint).is_file() {
        let preset = preset.unwrap_or("?");
        return Err(format!(
            "checkpoint = {checkpoint:?}: no such file (a relative path is read from the \
             directory the pipeline runs in). Put a timm ViT safetensors file of preset \
             {preset} there or point checkpoint at one, or name a timm model in the Hugging \
             Face cache (timm/<model>); README.md, section \"Checkpoints\", says which timm \
             checkpoint reproduces which published baseline and how to get it"
        ));
    }
    Ok(())
}

/// The key inputs a base model adds besides the input artifacts: the content fingerprint
/// of a `checkpoint` file, under the name `base` (the same for a path and a name that reach
/// the same bytes).
pub fn base_fingerprints(
    checkpoint: Option<&str>,
) -> Result<std::collections::BTreeMap<String, ArtifactId>, String> {
    base_fingerprints_in(checkpoint, &HubEnv::from_process())
}

/// [`base_fingerprints`] with the Hugging Face cache that `env` places.
fn base_fingerprints_in(
    checkpoint: Option<&str>,
    env: &HubEnv,
) -> Result<std::collections::BTreeMap<String, ArtifactId>, String> {
    let Some(checkpoint) = checkpoint else {
        return Ok(Default::default());
    };
    let path = checkpoint_file(checkpoint, env)?;
    Ok([("base".to_owned(), file_fingerprint(&path)?)].into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::tests::{TempDir, cache_model, env};

    const MODEL: &str = "vit_base_patch16_224.augreg_in21k";
    const COMMIT: &str = "5d6b0bb4c1a8b2e1f0ac3f5b9f2f0d6c1e7a9b3c";

    #[test]
    fn a_name_and_a_path_to_the_same_bytes_give_the_same_key() {
        let dir = TempDir::new("base-key");
        let cache = dir.0.join("hub");
        let cached = cache_model(&cache, MODEL, COMMIT, b"the weights", true);
        let plain = dir.0.join("vit.safetensors");
        std::fs::write(&plain, b"the weights").unwrap();
        let env = env(&[("HF_HOME", dir.0.to_str().unwrap())]);
        let name = format!("timm/{MODEL}");
        let by_name = base_fingerprints_in(Some(&name), &env).unwrap();
        let by_path = base_fingerprints_in(plain.to_str(), &env).unwrap();
        assert_eq!(by_name, by_path);
        assert_eq!(by_name["base"], file_fingerprint(&plain).unwrap());
        let other = dir.0.join("other.safetensors");
        std::fs::write(&other, b"other weights").unwrap();
        assert_ne!(by_name, base_fingerprints_in(other.to_str(), &env).unwrap());
        // The base reads the snapshot's file, keyed by its content.
        let base = resolve_base_in(Some(&name), Some("vit-b16"), None, &env).unwrap();
        assert_eq!(base.path, cached);
        assert_eq!(base.id, by_path["base"]);
        assert_eq!(base.preset, "vit-b16");
        assert!(base_fingerprints_in(None, &env).unwrap().is_empty());
    }

    #[test]
    fn a_named_checkpoint_is_checked_like_a_file() {
        let dir = TempDir::new("base-check");
        let env = env(&[("HF_HUB_CACHE", dir.0.to_str().unwrap())]);
        let name = format!("timm/{MODEL}");
        // Not cached: the error names the field, where it looked and the command.
        let e = check_base_params_in(Some("vit-b16"), Some(&name), &env).unwrap_err();
        let repo = dir.0.join(format!("models--timm--{MODEL}"));
        assert!(e.starts_with(&format!("checkpoint = {name:?}")), "{e}");
        assert!(e.contains(&repo.display().to_string()), "{e}");
        assert!(
            e.contains("timm.create_model") && e.contains("README.md"),
            "{e}"
        );
        let e = resolve_base_in(Some(&name), Some("vit-b16"), None, &env).unwrap_err();
        assert!(e.contains("timm.create_model"), "{e}");
        // A name still needs a preset, and a preset must be one.
        let e = check_base_params_in(None, Some(&name), &env).unwrap_err();
        assert!(e.contains("needs preset"), "{e}");
        cache_model(&dir.0, MODEL, COMMIT, b"w", true);
        check_base_params_in(Some("vit-b16"), Some(&name), &env).unwrap();
        // A model graft has no preset for is the user's to describe with `preset`.
        cache_model(&dir.0, "vit_tiny_custom.ft", COMMIT, b"w", true);
        check_base_params_in(
            Some("vit-cpu-tiny"),
            Some("hf-hub:timm/vit_tiny_custom.ft"),
            &env,
        )
        .unwrap();
        let e = check_base_params_in(Some("vit-b16"), Some("timm/"), &env).unwrap_err();
        assert!(
            e.contains("checkpoint = \"timm/\"") && e.contains("timm/<model>"),
            "{e}"
        );
        // A path that is not there keeps its own error, now naming the other form.
        let e =
            check_base_params_in(Some("vit-b16"), Some("no-such.safetensors"), &env).unwrap_err();
        assert!(
            e.contains("no such file") && e.contains("timm/<model>"),
            "{e}"
        );
    }
}
