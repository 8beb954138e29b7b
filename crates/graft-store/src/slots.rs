//! Slots: the last run of each named slot (`pipeline/stage`), what a rerun is compared
//! against and what `gc` keeps, with a `.history` of the artifacts each slot replaced.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::files::{read_json_opt, remove_if_exists, write_json_atomic};
use crate::store::Result;
use crate::{ArtifactId, StageKey, Store, StoreError};

/// The last run of a slot: what a rerun is compared against to say why it reran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub stage: String,
    pub stage_version: u32,
    pub key: StageKey,
    pub params: BTreeMap<String, Value>,
    pub inputs: BTreeMap<String, ArtifactId>,
    pub artifact: ArtifactId,
}

impl Store {
    pub(crate) fn slot_path(&self, slot: &str) -> PathBuf {
        self.root
            .join("slots")
            .join(format!("{}.json", slot_file_name(slot)))
    }

    pub fn read_slot(&self, slot: &str) -> Result<Option<SlotRecord>> {
        read_json_opt(&self.slot_path(slot))
    }

    /// Records the last run of `slot`. When it replaces another artifact, that one's id is
    /// appended to the slot's history (`slots/<name>.history`), so `gc` can say which
    /// pipeline an artifact it removes last belonged to.
    pub fn write_slot(&self, slot: &str, record: &SlotRecord) -> Result<()> {
        let path = self.slot_path(slot);
        if let Ok(Some(old)) = read_json_opt::<SlotRecord>(&path)
            && old.artifact != record.artifact
        {
            let hist = path.with_extension("history");
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&hist)
                .map_err(StoreError::io(&hist))?;
            f.write_all(format!("{}\n", old.artifact).as_bytes())
                .map_err(StoreError::io(&hist))?;
        }
        write_json_atomic(&path, record)
    }

    /// Removes a slot's record and history: `gc` no longer keeps its artifact.
    pub fn remove_slot(&self, slot: &str) -> Result<()> {
        let path = self.slot_path(slot);
        remove_if_exists(&path)?;
        remove_if_exists(&path.with_extension("history"))
    }

    /// Artifacts a slot had before its current one, oldest first.
    pub(crate) fn slot_history(&self, slot: &str) -> Result<Vec<ArtifactId>> {
        let path = self.slot_path(slot).with_extension("history");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        // A line cut short by a kill is skipped: the history only names owners.
        Ok(text
            .lines()
            .filter_map(|l| ArtifactId::parse(l.trim()).ok())
            .collect())
    }

    /// All slot records, by slot name.
    pub fn slots(&self) -> Result<Vec<(String, SlotRecord)>> {
        let dir = self.root.join("slots");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let Some(stem) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if let Some(rec) = read_json_opt::<SlotRecord>(&path)? {
                out.push((slot_name_from_file(stem), rec));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// Slot names contain '/' (`pipeline/stage`); on disk it becomes "--".
fn slot_file_name(slot: &str) -> String {
    slot.replace('/', "--")
}

fn slot_name_from_file(stem: &str) -> String {
    stem.replace("--", "/")
}
