//! Publishing: [`Store::begin`] gives a [`Publisher`] writing into a private temp directory;
//! [`Publisher::publish`] hashes, fsyncs, writes the manifest and renames the directory into
//! `objects/`, then writes the key record. Also the cleanup of temp directories left by killed
//! writers.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rayon::prelude::*;
use serde_json::Value;

use crate::files::{remove_any, remove_if_exists, sync_dir, write_json_atomic};
use crate::fingerprint::hash_file;
use crate::lock::{open_lock_file, try_lock_path, with_lock_ext};
use crate::manifest::artifact_id;
use crate::store::{KeyRecord, Result};
use crate::{
    ArtifactId, Corruption, FileEntry, MANIFEST_FILE, Manifest, PROGRAM_VERSION, StageKey, Store,
    StoreError,
};

impl Store {
    /// Starts writing a new artifact in a private temporary directory.
    pub fn begin(&self) -> Result<Publisher> {
        let tmp = self.root.join("tmp");
        let _guard = self.lock_tmp()?;
        let dir = tempfile::Builder::new()
            .prefix("w-")
            .tempdir_in(&tmp)
            .map_err(StoreError::io(&tmp))?
            .keep();
        let lock_path = with_lock_ext(&dir);
        let lock = open_lock_file(&lock_path)?;
        lock.lock().map_err(StoreError::io(&lock_path))?;
        Ok(Publisher {
            store: self.clone(),
            dir,
            lock_path,
            _lock: lock,
            done: false,
            refs: Default::default(),
        })
    }

    /// Removes temporary directories whose writer is gone (killed, crashed). Live writers
    /// hold a lock on their directory's lock file, so they are left alone.
    pub fn clean_leftovers(&self) -> Result<usize> {
        let tmp = self.root.join("tmp");
        let _guard = self.lock_tmp()?;
        let mut removed = 0;
        let entries: Vec<PathBuf> = fs::read_dir(&tmp)
            .map_err(StoreError::io(&tmp))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        for path in entries {
            if path.extension().is_some_and(|e| e == "lock") {
                // A lock file whose directory is gone: remove it if nobody holds it.
                if !path.with_extension("").exists() && try_lock_path(&path) {
                    remove_if_exists(&path)?;
                }
                continue;
            }
            let lock_path = with_lock_ext(&path);
            let stale = !lock_path.exists() || try_lock_path(&lock_path);
            if stale {
                remove_any(&path)?;
                remove_if_exists(&lock_path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// An artifact being written. Files go into [`Publisher::dir`]; [`Publisher::publish`]
/// hashes them, writes the manifest, fsyncs and renames the directory into place.
/// Dropped without publishing, it removes everything it wrote.
#[derive(Debug)]
pub struct Publisher {
    store: Store,
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
    done: bool,
    refs: Mutex<BTreeSet<ArtifactId>>,
}

/// What the publisher records besides the files.
#[derive(Debug, Clone)]
pub struct PublishInfo<'a> {
    pub stage: &'a str,
    pub stage_version: u32,
    pub key: &'a StageKey,
    pub params: &'a BTreeMap<String, Value>,
    pub inputs: &'a BTreeMap<String, ArtifactId>,
    pub extra: BTreeMap<String, Value>,
    pub wall_seconds: f64,
}

impl Publisher {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path for a new file of this artifact.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The store this artifact goes into (a stage that publishes cache units of its own,
    /// like the fine-tune stage's runs, uses it).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Records that this artifact's files refer to artifact `id` (listed in the manifest's
    /// `refs`, kept alive by `gc` as long as this one is).
    pub fn refer(&self, id: &ArtifactId) {
        self.refs().insert(id.clone());
    }

    /// The refs, also after a thread panicked while holding them: a manifest without the refs
    /// its files need would let `gc` delete them.
    fn refs(&self) -> MutexGuard<'_, BTreeSet<ArtifactId>> {
        self.refs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the artifact visible under its content id and records `key -> id`.
    /// A corrupt object already under the same id is moved to `corrupt/` and replaced;
    /// [`Store::ensure`] (through `publish_reporting`) reports that as a warning.
    pub fn publish(self, info: PublishInfo<'_>) -> Result<Manifest> {
        self.publish_reporting(info).map(|(m, _)| m)
    }

    /// [`Publisher::publish`], also returning the corrupt object it replaced, if any.
    pub(crate) fn publish_reporting(
        mut self,
        info: PublishInfo<'_>,
    ) -> Result<(Manifest, Option<Corruption>)> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(StoreError::io(&self.dir))? {
            let entry = entry.map_err(StoreError::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if name == MANIFEST_FILE || !is_file || name.contains('/') {
                return Err(StoreError::InvalidFileName { name });
            }
            names.push(name);
        }
        names.sort();
        let files: Vec<FileEntry> = names
            .par_iter()
            .map(|name| {
                let path = self.dir.join(name);
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(StoreError::io(&path))?;
                let h = hash_file(&path)?;
                let (size, blake3) = (h.size, h.hex());
                Ok(FileEntry {
                    name: name.clone(),
                    size,
                    blake3,
                })
            })
            .collect::<Result<_>>()?;
        let id = artifact_id(&files);
        let manifest = Manifest {
            id: id.clone(),
            stage: info.stage.to_owned(),
            stage_version: info.stage_version,
            key: info.key.clone(),
            params: info.params.clone(),
            inputs: info.inputs.clone(),
            files,
            program_version: PROGRAM_VERSION.to_owned(),
            wall_seconds: info.wall_seconds,
            extra: info.extra,
            refs: self.refs().iter().cloned().collect(),
        };
        write_json_atomic(&self.dir.join(MANIFEST_FILE), &manifest)?;
        sync_dir(&self.dir)?;

        let target = self.store.object_dir(&id);
        let objects = self.store.root.join("objects");
        let mut replaced = None;
        loop {
            match fs::rename(&self.dir, &target) {
                Ok(()) => break,
                Err(_) if target.exists() => {
                    // Same content published before (or by a concurrent run). Keep it if
                    // it verifies; otherwise move it aside and take its place.
                    match self.store.verify(&id) {
                        Ok(_) => {
                            remove_any(&self.dir)?;
                            break;
                        }
                        Err(e) => {
                            let moved_to = self.store.quarantine(&id)?;
                            replaced = Some(Corruption {
                                path: e.path,
                                reason: e.reason,
                                moved_to: Some(moved_to),
                            });
                        }
                    }
                }
                Err(e) => {
                    return Err(StoreError::Io {
                        path: target,
                        source: e,
                    });
                }
            }
        }
        sync_dir(&objects)?;
        write_json_atomic(&self.store.key_path(info.key), &KeyRecord { artifact: id })?;
        self.done = true;
        remove_if_exists(&self.lock_path)?;
        Ok((manifest, replaced))
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if !self.done {
            let _ = remove_any(&self.dir);
            let _ = fs::remove_file(&self.lock_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyInput;
    use crate::gc::tests::publish;

    #[test]
    fn a_poisoned_refs_lock_keeps_the_refs() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let unit = publish(&store, "unit", &[]);
        let p = store.begin().unwrap();
        p.refer(&unit);
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _guard = p.refs.lock().unwrap();
                    panic!("poison the refs lock");
                })
                .join();
        });
        assert!(p.refs.is_poisoned());
        fs::write(p.file("x.txt"), "root").unwrap();
        let params = BTreeMap::new();
        let inputs = BTreeMap::new();
        let key = KeyInput {
            stage: "t",
            stage_version: 1,
            params: &params,
            inputs: &inputs,
        }
        .key();
        let m = p
            .publish(PublishInfo {
                stage: "t",
                stage_version: 1,
                key: &key,
                params: &params,
                inputs: &inputs,
                extra: BTreeMap::new(),
                wall_seconds: 0.0,
            })
            .unwrap();
        assert_eq!(m.refs, vec![unit]);
    }
}
