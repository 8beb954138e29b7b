//! Garbage collection: [`Store::gc_plan`] lists what a set of roots do not reach (through
//! manifest inputs and refs), with the slot each last belonged to; [`Store::gc_apply`]
//! deletes exactly that list.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::files::{read_json_opt, remove_any, remove_if_exists, write_text_atomic};
use crate::store::{KeyRecord, Result};
use crate::{ArtifactId, MANIFEST_FILE, Manifest, Store, StoreError};

/// What `gc` would delete (computed by [`Store::gc_plan`], carried out by
/// [`Store::gc_apply`]): the dry run lists exactly this.
#[derive(Debug, Default, Clone)]
pub struct GcPlan {
    /// Artifacts the roots reach.
    pub kept: Vec<ArtifactId>,
    /// Artifacts no root reaches.
    pub remove: Vec<GcEntry>,
    /// Key records whose artifact is removed or gone.
    pub stale_keys: Vec<PathBuf>,
    /// Entries under `corrupt/`, with their sizes.
    pub corrupt: Vec<(PathBuf, u64)>,
}

/// One artifact `gc` would delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcEntry {
    pub id: ArtifactId,
    pub size: u64,
    /// The slot (`pipeline/stage`) it last belonged to: the slot's record or history names it,
    /// or it is an entry (input, run, head) of an artifact that slot had. `None` when no slot
    /// ever had it.
    pub owner: Option<String>,
}

impl GcPlan {
    /// Bytes the plan frees.
    pub fn bytes(&self) -> u64 {
        self.remove.iter().map(|e| e.size).sum::<u64>()
            + self.corrupt.iter().map(|(_, s)| s).sum::<u64>()
    }
}

impl Store {
    /// What `gc` would delete: every artifact that `roots` do not reach through manifest
    /// inputs and refs, the key records that would point at nothing, and `corrupt/`. Refuses
    /// (an error naming the file) when a reached artifact's manifest cannot be read, since what
    /// it reaches would then be unknown.
    pub fn gc_plan(&self, roots: &[ArtifactId]) -> Result<GcPlan> {
        let mut reached: BTreeSet<ArtifactId> = BTreeSet::new();
        let mut todo: Vec<ArtifactId> = roots.to_vec();
        while let Some(id) = todo.pop() {
            if !reached.insert(id.clone()) {
                continue;
            }
            if let Some(m) = self.read_manifest(&id)? {
                todo.extend(m.inputs.into_values());
                todo.extend(m.refs);
            }
        }
        let owners = self.owners()?;
        let mut plan = GcPlan::default();
        for id in self.objects()? {
            if reached.contains(&id) {
                plan.kept.push(id);
            } else {
                let size = dir_size(&self.object_dir(&id));
                let owner = owners.get(&id).cloned();
                plan.remove.push(GcEntry { id, size, owner });
            }
        }
        let gone: HashSet<&ArtifactId> = plan.remove.iter().map(|e| &e.id).collect();
        let keys = self.root.join("keys");
        for entry in fs::read_dir(&keys).map_err(StoreError::io(&keys))? {
            let path = entry.map_err(StoreError::io(&keys))?.path();
            let stale = match read_json_opt::<KeyRecord>(&path) {
                Ok(Some(r)) => gone.contains(&r.artifact) || !self.object_dir(&r.artifact).exists(),
                _ => true,
            };
            if stale {
                plan.stale_keys.push(path);
            }
        }
        plan.stale_keys.sort();
        let corrupt = self.root.join("corrupt");
        for entry in fs::read_dir(&corrupt).map_err(StoreError::io(&corrupt))? {
            let path = entry.map_err(StoreError::io(&corrupt))?.path();
            let size = dir_size(&path);
            plan.corrupt.push((path, size));
        }
        plan.corrupt.sort();
        Ok(plan)
    }

    /// Deletes what `plan` lists, and only that.
    pub fn gc_apply(&self, plan: &GcPlan) -> Result<()> {
        for key in &plan.stale_keys {
            remove_if_exists(key)?;
        }
        for e in &plan.remove {
            remove_any(&self.object_dir(&e.id))?;
        }
        for (path, _) in &plan.corrupt {
            remove_any(path)?;
        }
        // Slot histories keep only what is still in the store.
        for (slot, _) in self.slots()? {
            let kept: Vec<ArtifactId> = self
                .slot_history(&slot)?
                .into_iter()
                .filter(|id| self.object_dir(id).exists())
                .collect();
            let path = self.slot_path(&slot).with_extension("history");
            if kept.is_empty() {
                remove_if_exists(&path)?;
            } else {
                let text: String = kept.iter().map(|id| format!("{id}\n")).collect();
                write_text_atomic(&path, &text)?;
            }
        }
        Ok(())
    }

    /// A manifest that exists but cannot be read is an error; a missing artifact is `None`.
    fn read_manifest(&self, id: &ArtifactId) -> Result<Option<Manifest>> {
        let dir = self.object_dir(id);
        if !dir.exists() {
            return Ok(None);
        }
        read_json_opt::<Manifest>(&dir.join(MANIFEST_FILE))?
            .map(Some)
            .ok_or_else(|| StoreError::Io {
                path: dir.join(MANIFEST_FILE),
                source: io::Error::new(io::ErrorKind::NotFound, "artifact without a manifest"),
            })
    }

    /// For every artifact a slot has had (now or in its history), the slot; then everything
    /// those artifacts reach (inputs, refs) inherits the slot when it has none of its own.
    /// Later records win, so each artifact gets the slot it last belonged to.
    fn owners(&self) -> Result<BTreeMap<ArtifactId, String>> {
        let mut direct: BTreeMap<ArtifactId, String> = BTreeMap::new();
        let slots = self.slots()?;
        for (slot, _) in &slots {
            for id in self.slot_history(slot)? {
                direct.insert(id, slot.clone());
            }
        }
        for (slot, rec) in &slots {
            direct.insert(rec.artifact.clone(), slot.clone());
        }
        let mut owners = direct.clone();
        let mut todo: Vec<(ArtifactId, String)> = direct.into_iter().collect();
        while let Some((id, slot)) = todo.pop() {
            // Unreadable manifests of unreached artifacts only lose a label here.
            let Ok(Some(m)) = self.read_manifest(&id) else {
                continue;
            };
            for next in m.inputs.into_values().chain(m.refs) {
                if !owners.contains_key(&next) {
                    owners.insert(next.clone(), slot.clone());
                    todo.push((next, slot.clone()));
                }
            }
        }
        Ok(owners)
    }
}

fn dir_size(dir: &Path) -> u64 {
    if dir.is_file() {
        return fs::metadata(dir).map(|m| m.len()).unwrap_or(0);
    }
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{KeyInput, PublishInfo, SlotRecord};
    use serde_json::Value;

    /// Publishes a one-file artifact named `name` that refers to `refs`.
    pub(crate) fn publish(store: &Store, name: &str, refs: &[&ArtifactId]) -> ArtifactId {
        let params: BTreeMap<String, Value> = [("name".to_owned(), Value::from(name))].into();
        let inputs = BTreeMap::new();
        let key = KeyInput {
            stage: "t",
            stage_version: 1,
            params: &params,
            inputs: &inputs,
        }
        .key();
        let p = store.begin().unwrap();
        fs::write(p.file("x.txt"), name).unwrap();
        for r in refs {
            p.refer(r);
        }
        p.publish(PublishInfo {
            stage: "t",
            stage_version: 1,
            key: &key,
            params: &params,
            inputs: &inputs,
            extra: BTreeMap::new(),
            wall_seconds: 0.0,
        })
        .unwrap()
        .id
    }

    #[test]
    fn gc_keeps_what_a_root_refers_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let unit = publish(&store, "unit", &[]);
        let stray = publish(&store, "stray", &[]);
        let root = publish(&store, "root", &[&unit]);
        let plan = store.gc_plan(std::slice::from_ref(&root)).unwrap();
        let gone: Vec<&ArtifactId> = plan.remove.iter().map(|e| &e.id).collect();
        assert_eq!(gone, vec![&stray]);
        store.gc_apply(&plan).unwrap();
        assert!(store.artifact(&unit).is_ok());
        assert!(store.artifact(&stray).is_err());
    }

    #[test]
    fn gc_refuses_when_a_reached_manifest_cannot_be_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let unit = publish(&store, "unit", &[]);
        let root = publish(&store, "root", &[&unit]);
        let m = store.object_dir(&root).join(MANIFEST_FILE);
        fs::write(&m, "{ not json").unwrap();
        let e = store.gc_plan(std::slice::from_ref(&root)).unwrap_err();
        assert!(e.to_string().contains(&m.display().to_string()), "{e}");
    }

    #[test]
    fn gc_names_the_slot_an_artifact_last_belonged_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let unit = publish(&store, "unit", &[]);
        let old = publish(&store, "old", &[&unit]);
        let new = publish(&store, "new", &[]);
        let record = |id: &ArtifactId| SlotRecord {
            stage: "t".into(),
            stage_version: 1,
            key: store.read_manifest(id).unwrap().unwrap().key,
            params: BTreeMap::new(),
            inputs: BTreeMap::new(),
            artifact: id.clone(),
        };
        store.write_slot("mine/t", &record(&old)).unwrap();
        store.write_slot("mine/t", &record(&new)).unwrap();
        let plan = store.gc_plan(std::slice::from_ref(&new)).unwrap();
        let owners: BTreeMap<&ArtifactId, Option<&str>> = plan
            .remove
            .iter()
            .map(|e| (&e.id, e.owner.as_deref()))
            .collect();
        assert_eq!(
            owners,
            [(&old, Some("mine/t")), (&unit, Some("mine/t"))].into()
        );
        let history = store.slot_path("mine/t").with_extension("history");
        assert!(history.exists());
        store.gc_apply(&plan).unwrap();
        assert!(
            !history.exists(),
            "the history still names deleted artifacts"
        );
        assert_eq!(store.read_slot("mine/t").unwrap().unwrap().artifact, new);
    }
}
