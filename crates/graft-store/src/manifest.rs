use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ArtifactId, Fingerprint, StageKey};

/// Name of the manifest inside an artifact directory. It is written last.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub blake3: String,
}

/// What an artifact is and how it was made. Not part of the artifact id (it holds the
/// wall time); the id covers the files listed here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: ArtifactId,
    pub stage: String,
    pub stage_version: u32,
    pub key: StageKey,
    pub params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, ArtifactId>,
    pub files: Vec<FileEntry>,
    pub program_version: String,
    pub wall_seconds: f64,
    /// Stage-specific facts (preprocessing, class names, costs), free-form.
    #[serde(default)]
    pub extra: BTreeMap<String, Value>,
    /// Artifacts this one's files refer to (the fine-tune stage's run units); `gc` keeps
    /// them while this one is reachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<ArtifactId>,
}

/// The domain tag of artifact ids. Artifact ids are in every user's store: they never change,
/// and `golden/artifact_id.txt` pins them.
pub(crate) const ARTIFACT_ID_TAG: &[u8] = b"graft-artifact-v1";

/// Artifact id of a file list: blake3 over (name, size, file hash) of each file, sorted by name.
pub(crate) fn artifact_id(files: &[FileEntry]) -> ArtifactId {
    let mut sorted: Vec<&FileEntry> = files.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut fp = Fingerprint::new(ARTIFACT_ID_TAG);
    fp.u64(sorted.len() as u64);
    for f in sorted {
        fp.part(&f.name).u64(f.size).raw(&f.blake3);
    }
    fp.finish()
}
