//! The entry path: [`Store::open`], [`Store::lookup`], [`Store::settle`], [`Store::ensure`],
//! reading and verifying artifacts, and moving corrupt ones to `corrupt/`.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::files::{read_json_opt, remove_if_exists};
use crate::fingerprint::hash_file_io;
use crate::manifest::artifact_id;
use crate::{ArtifactId, MANIFEST_FILE, Manifest, PublishInfo, Publisher, StageKey, StoreError};

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// A store on disk.
///
/// ```text
/// <root>/objects/<id>/      complete artifacts; the directory appears by rename, manifest inside
/// <root>/keys/<key>.json    stage key -> artifact id, written after the object
/// <root>/slots/<name>.json  the last run of a named slot (pipeline/stage): reasons and gc roots
/// <root>/tmp/<name>/        artifacts being written, each guarded by a lock on <name>.lock
/// <root>/locks/             advisory locks: one per stage key, one for tmp housekeeping, and
///                           store.lock (shared by runs, exclusive for gc) with its holders'
///                           records in store.holders/
/// <root>/corrupt/           artifacts that failed verification, moved aside for inspection
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub(crate) artifact: ArtifactId,
}

/// A verified artifact in the store.
#[derive(Debug, Clone)]
pub struct Artifact {
    dir: PathBuf,
    manifest: Manifest,
}

impl Artifact {
    pub fn id(&self) -> &ArtifactId {
        &self.manifest.id
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Path of one of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// What the store holds for a stage key.
#[derive(Debug)]
pub enum Lookup {
    /// A complete, verified artifact.
    Hit(Artifact),
    /// Never built (or its record was removed by gc).
    Miss,
    /// The key was built once, but its artifact is gone from the store.
    Missing { id: ArtifactId },
    /// The artifact failed verification; it is never handed out.
    Corrupt(Corruption),
}

/// An entry that failed verification: which file, why, and where it was moved (by
/// [`Store::ensure`] or [`Store::settle`]; [`Store::lookup`] moves nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corruption {
    pub path: PathBuf,
    pub reason: String,
    pub moved_to: Option<PathBuf>,
}

impl fmt::Display for Corruption {
    /// The one warning every corrupt entry gets: `artifact <file> is corrupt (<why>); moved to <dir>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "artifact {} is corrupt ({})",
            self.path.display(),
            self.reason
        )?;
        match &self.moved_to {
            Some(to) => write!(f, "; moved to {}", to.display()),
            None => write!(f, "; it will be moved to corrupt/ and rebuilt"),
        }
    }
}

/// What [`Store::ensure`] found under the key before it returned the artifact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Before {
    /// The verified artifact was there and is returned as it is.
    Found,
    /// It was there, and rebuilt because the caller forced it.
    Forced,
    /// Nothing was ever recorded under the key.
    Never,
    /// The key's artifact was gone from the store.
    Missing(ArtifactId),
    /// The key's artifact was corrupt; it was moved to `corrupt/`.
    Corrupt(Corruption),
}

/// An artifact [`Store::ensure`] found or built.
#[derive(Debug)]
pub struct Ensured {
    pub artifact: Artifact,
    pub before: Before,
    /// A corrupt object with the same id (published under another key) that the build's
    /// output replaced; it was moved to `corrupt/`.
    pub replaced: Option<Corruption>,
}

impl Ensured {
    /// Whether the build ran.
    pub fn built(&self) -> bool {
        self.before != Before::Found
    }

    /// The warnings to show: each corrupt entry met on the way, naming its file.
    pub fn warnings(&self) -> Vec<String> {
        let before = match &self.before {
            Before::Corrupt(c) => Some(c),
            _ => None,
        };
        before
            .into_iter()
            .chain(&self.replaced)
            .map(Corruption::to_string)
            .collect()
    }
}

/// Why an artifact failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    pub path: PathBuf,
    pub reason: String,
}

fn verified_cache() -> &'static Mutex<HashSet<PathBuf>> {
    static CACHE: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashSet::new()))
}

impl Store {
    /// Opens (creating if needed) a store at `root` and removes leftovers of killed writers.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        for sub in ["objects", "keys", "slots", "tmp", "locks", "corrupt"] {
            let p = store.root.join(sub);
            fs::create_dir_all(&p).map_err(StoreError::io(&p))?;
        }
        store.clean_leftovers()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn object_dir(&self, id: &ArtifactId) -> PathBuf {
        self.root.join("objects").join(id.as_str())
    }

    pub(crate) fn key_path(&self, key: &StageKey) -> PathBuf {
        self.root.join("keys").join(format!("{key}.json"))
    }

    /// What the store holds for `key`, moving nothing: a corrupt artifact is reported (never
    /// returned) and left where it is. `--status` uses this; everything that builds uses
    /// [`Store::ensure`].
    pub fn lookup(&self, key: &StageKey) -> Result<Lookup> {
        let path = self.key_path(key);
        let record: KeyRecord = match read_json_opt(&path)? {
            Some(r) => r,
            None => return Ok(Lookup::Miss),
        };
        let dir = self.object_dir(&record.artifact);
        if !dir.exists() {
            return Ok(Lookup::Missing {
                id: record.artifact,
            });
        }
        match self.verify(&record.artifact) {
            Ok(manifest) => Ok(Lookup::Hit(Artifact { dir, manifest })),
            Err(e) => Ok(Lookup::Corrupt(Corruption {
                path: e.path,
                reason: e.reason,
                moved_to: None,
            })),
        }
    }

    /// Takes the key's lock and looks the key up; a corrupt entry is moved to `corrupt/` and
    /// its key record removed, so it reads as a miss from then on (the returned
    /// [`Lookup::Corrupt`] names the file and where it went). For callers that only want to
    /// know whether an entry is there before handing its build to someone else (the
    /// fine-tune stage's workers), with the same corrupt-entry path as [`Store::ensure`].
    pub fn settle(&self, key: &StageKey) -> Result<Lookup> {
        let _lock = self.lock_key(key)?;
        self.settle_locked(key)
    }

    fn settle_locked(&self, key: &StageKey) -> Result<Lookup> {
        match self.lookup(key)? {
            Lookup::Corrupt(c) => {
                let id = read_json_opt::<KeyRecord>(&self.key_path(key))?.map(|r| r.artifact);
                let moved_to = match id {
                    Some(id) => Some(self.quarantine(&id)?),
                    None => None,
                };
                remove_if_exists(&self.key_path(key))?;
                Ok(Lookup::Corrupt(Corruption { moved_to, ..c }))
            }
            other => Ok(other),
        }
    }

    /// The one way an entry is found or made: locks `key`, looks it up and verifies it; a
    /// corrupt entry is moved to `corrupt/` (reported in [`Ensured::before`], whose
    /// [`Ensured::warning`] names the file); unless the entry verified (and `force` is off),
    /// calls `build` with what was there and a fresh [`Publisher`], and publishes what it
    /// wrote under `key`. Two processes ensuring one key build it once.
    pub fn ensure<'a, E: From<StoreError>>(
        &self,
        key: &StageKey,
        force: bool,
        build: impl FnOnce(&Before, &Publisher) -> std::result::Result<PublishInfo<'a>, E>,
    ) -> std::result::Result<Ensured, E> {
        let _lock = self.lock_key(key)?;
        let before = match self.settle_locked(key)? {
            Lookup::Hit(artifact) if !force => {
                return Ok(Ensured {
                    artifact,
                    before: Before::Found,
                    replaced: None,
                });
            }
            Lookup::Hit(_) => Before::Forced,
            Lookup::Miss => Before::Never,
            Lookup::Missing { id } => Before::Missing(id),
            Lookup::Corrupt(c) => Before::Corrupt(c),
        };
        let publisher = self.begin()?;
        let info = build(&before, &publisher)?;
        if info.key != key {
            return Err(StoreError::KeyMismatch {
                expected: key.to_string(),
                found: info.key.to_string(),
            }
            .into());
        }
        let (manifest, replaced) = publisher.publish_reporting(info)?;
        let artifact = self.artifact(&manifest.id)?;
        Ok(Ensured {
            artifact,
            before,
            replaced,
        })
    }

    /// Opens an artifact for reading, verifying its content hashes the first time this
    /// process reads it.
    pub fn artifact(&self, id: &ArtifactId) -> Result<Artifact> {
        let dir = self.object_dir(id);
        if !dir.exists() {
            return Err(StoreError::MissingArtifact {
                id: id.to_string(),
                path: dir,
            });
        }
        let manifest = self.verify(id).map_err(|e| StoreError::Corrupt {
            path: e.path,
            reason: e.reason,
        })?;
        Ok(Artifact { dir, manifest })
    }

    /// Checks every file of an artifact against its manifest (sizes and blake3), and that no
    /// file is missing or extra. Cached per process after the first success.
    pub fn verify(&self, id: &ArtifactId) -> std::result::Result<Manifest, VerifyError> {
        let dir = self.object_dir(id);
        let manifest_path = dir.join(MANIFEST_FILE);
        let fail = |path: &Path, reason: String| VerifyError {
            path: path.to_path_buf(),
            reason,
        };
        let text = fs::read_to_string(&manifest_path)
            .map_err(|e| fail(&manifest_path, format!("cannot read manifest: {e}")))?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| fail(&manifest_path, format!("invalid manifest: {e}")))?;
        if &manifest.id != id || artifact_id(&manifest.files) != *id {
            return Err(fail(
                &manifest_path,
                "manifest does not match the artifact id".into(),
            ));
        }
        let cached = verified_cache()
            .lock()
            .map(|c| c.contains(&dir))
            .unwrap_or(false);
        if cached {
            return Ok(manifest);
        }
        let mut on_disk: BTreeSet<String> = BTreeSet::new();
        let entries = fs::read_dir(&dir).map_err(|e| fail(&dir, e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(&dir, e.to_string()))?;
            on_disk.insert(entry.file_name().to_string_lossy().into_owned());
        }
        on_disk.remove(MANIFEST_FILE);
        let listed: BTreeSet<String> = manifest.files.iter().map(|f| f.name.clone()).collect();
        if let Some(extra) = on_disk.difference(&listed).next() {
            return Err(fail(
                &dir.join(extra),
                "file not listed in the manifest".into(),
            ));
        }
        if let Some(missing) = listed.difference(&on_disk).next() {
            return Err(fail(
                &dir.join(missing),
                "file listed in the manifest is missing".into(),
            ));
        }
        manifest.files.par_iter().try_for_each(|f| {
            let p = dir.join(&f.name);
            let h = hash_file_io(&p).map_err(|e| fail(&p, e.to_string()))?;
            let (size, hash) = (h.size, h.hex());
            if size != f.size {
                return Err(fail(
                    &p,
                    format!("size {size} differs from the manifest's {}", f.size),
                ));
            }
            if hash != f.blake3 {
                return Err(fail(
                    &p,
                    format!(
                        "blake3 {} differs from the manifest's {}",
                        &hash[..12],
                        &f.blake3[..12]
                    ),
                ));
            }
            Ok(())
        })?;
        if let Ok(mut c) = verified_cache().lock() {
            c.insert(dir);
        }
        Ok(manifest)
    }

    pub(crate) fn quarantine(&self, id: &ArtifactId) -> Result<PathBuf> {
        let src = self.object_dir(id);
        let corrupt = self.root.join("corrupt");
        for n in 0.. {
            let dst = corrupt.join(format!("{id}.{n}"));
            if dst.exists() {
                continue;
            }
            return match fs::rename(&src, &dst) {
                Ok(()) => Ok(dst),
                // Another process moved it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(dst),
                Err(e) => Err(StoreError::Io {
                    path: src,
                    source: e,
                }),
            };
        }
        unreachable!("the loop returns")
    }

    /// Ids of every complete-looking artifact directory.
    pub fn objects(&self) -> Result<Vec<ArtifactId>> {
        let dir = self.root.join("objects");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
            let entry = entry.map_err(StoreError::io(&dir))?;
            if let Ok(id) = ArtifactId::parse(&entry.file_name().to_string_lossy()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyInput;
    use serde_json::Value;
    use std::collections::BTreeMap;

    fn key_of(name: &str) -> (StageKey, BTreeMap<String, Value>) {
        let params: BTreeMap<String, Value> = [("name".to_owned(), Value::from(name))].into();
        let key = KeyInput {
            stage: "t",
            stage_version: 1,
            params: &params,
            inputs: &BTreeMap::new(),
        }
        .key();
        (key, params)
    }

    fn ensure_text(
        store: &Store,
        name: &str,
        force: bool,
        builds: &mut usize,
    ) -> std::result::Result<Ensured, StoreError> {
        let (key, params) = key_of(name);
        let inputs = BTreeMap::new();
        store.ensure(&key, force, |_, out| {
            *builds += 1;
            fs::write(out.file("x.txt"), name).map_err(StoreError::io(out.file("x.txt")))?;
            Ok(PublishInfo {
                stage: "t",
                stage_version: 1,
                key: &key,
                params: &params,
                inputs: &inputs,
                extra: BTreeMap::new(),
                wall_seconds: 0.0,
            })
        })
    }

    #[test]
    fn ensure_builds_once_then_finds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut builds = 0;
        let a = ensure_text(&store, "a", false, &mut builds).unwrap();
        assert_eq!((a.before.clone(), builds), (Before::Never, 1));
        let b = ensure_text(&store, "a", false, &mut builds).unwrap();
        assert_eq!((b.before.clone(), builds), (Before::Found, 1));
        assert_eq!(a.artifact.id(), b.artifact.id());
        let c = ensure_text(&store, "a", true, &mut builds).unwrap();
        assert_eq!((c.before.clone(), builds), (Before::Forced, 2));
        assert_eq!(c.artifact.id(), a.artifact.id());
    }

    #[test]
    fn ensure_moves_a_corrupt_entry_aside_warns_and_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut builds = 0;
        let a = ensure_text(&store, "a", false, &mut builds).unwrap();
        let file = a.artifact.file("x.txt");
        fs::write(&file, "b").unwrap();
        // A fresh process does not trust the verification cache.
        verified_cache().lock().unwrap().clear();
        // Read-only lookup reports it and moves nothing.
        let (key, _) = key_of("a");
        assert!(matches!(
            store.lookup(&key).unwrap(),
            Lookup::Corrupt(Corruption { moved_to: None, .. })
        ));
        assert!(file.exists());
        let b = ensure_text(&store, "a", false, &mut builds).unwrap();
        assert_eq!(builds, 2);
        let w = b.warnings().join("\n");
        assert!(
            w.contains(&file.display().to_string()) && w.contains("corrupt"),
            "{w}"
        );
        let Before::Corrupt(c) = &b.before else {
            panic!("{:?}", b.before)
        };
        let moved = c.moved_to.as_ref().unwrap();
        assert!(moved.starts_with(dir.path().join("corrupt")) && moved.join("x.txt").exists());
        assert_eq!(b.artifact.id(), a.artifact.id());
        assert!(store.verify(b.artifact.id()).is_ok());
    }

    #[test]
    fn ensure_warns_when_its_output_replaces_a_corrupt_object_of_another_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Two keys whose builds write the same bytes: one object.
        let build = |key: &StageKey| {
            let params = BTreeMap::new();
            let inputs = BTreeMap::new();
            store.ensure(key, false, |_, out| {
                fs::write(out.file("x.txt"), "same").map_err(StoreError::io(out.file("x.txt")))?;
                Ok::<_, StoreError>(PublishInfo {
                    stage: "t",
                    stage_version: 1,
                    key,
                    params: &params,
                    inputs: &inputs,
                    extra: BTreeMap::new(),
                    wall_seconds: 0.0,
                })
            })
        };
        let (k1, _) = key_of("one");
        let (k2, _) = key_of("two");
        let a = build(&k1).unwrap();
        assert!(a.warnings().is_empty());
        let file = a.artifact.file("x.txt");
        fs::write(&file, "sane").unwrap();
        verified_cache().lock().unwrap().clear();
        let b = build(&k2).unwrap();
        assert_eq!(b.before, Before::Never);
        let w = b.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains(&file.display().to_string()) && w[0].contains("moved to"),
            "{w:?}"
        );
        assert_eq!(b.artifact.id(), a.artifact.id());
        assert!(store.verify(b.artifact.id()).is_ok());
    }
}
