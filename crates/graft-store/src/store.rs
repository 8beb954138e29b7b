use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::manifest::artifact_id;
use crate::{
    ArtifactId, FileEntry, MANIFEST_FILE, Manifest, PROGRAM_VERSION, StageKey, StoreError,
};

type Result<T> = std::result::Result<T, StoreError>;

/// A store on disk.
///
/// ```text
/// <root>/objects/<id>/      complete artifacts; the directory appears by rename, manifest inside
/// <root>/keys/<key>.json    stage key -> artifact id, written after the object
/// <root>/slots/<name>.json  the last run of a named slot (pipeline/stage): reasons and gc roots
/// <root>/tmp/<name>/        artifacts being written, each guarded by a lock on <name>.lock
/// <root>/locks/             advisory locks: one per stage key, one for tmp housekeeping
/// <root>/corrupt/           artifacts that failed verification, moved aside for inspection
/// ```
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

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

#[derive(Debug, Serialize, Deserialize)]
struct KeyRecord {
    artifact: ArtifactId,
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

/// Holds the advisory lock of one stage key until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

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

    fn key_path(&self, key: &StageKey) -> PathBuf {
        self.root.join("keys").join(format!("{key}.json"))
    }

    fn slot_path(&self, slot: &str) -> PathBuf {
        self.root
            .join("slots")
            .join(format!("{}.json", slot_file_name(slot)))
    }

    /// Blocks until this process holds the advisory lock of `key`. Two pipelines that reach
    /// the same stage key run it once: the second finds the first one's artifact.
    pub fn lock_key(&self, key: &StageKey) -> Result<KeyLock> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = open_lock_file(&path)?;
        file.lock().map_err(StoreError::io(&path))?;
        Ok(KeyLock { _file: file })
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
            let (size, hash) = hash_file(&p).map_err(|e| fail(&p, e.to_string()))?;
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

    fn quarantine(&self, id: &ArtifactId) -> Result<PathBuf> {
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

    fn lock_tmp(&self) -> Result<File> {
        let path = self.root.join("locks").join("tmp.lock");
        let file = open_lock_file(&path)?;
        file.lock().map_err(StoreError::io(&path))?;
        Ok(file)
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
    fn slot_history(&self, slot: &str) -> Result<Vec<ArtifactId>> {
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
    fn publish_reporting(
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
                let (size, blake3) = hash_file(&path).map_err(StoreError::io(&path))?;
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

fn with_lock_ext(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))
}

/// True when the lock could be taken, i.e. no live process holds it.
fn try_lock_path(path: &Path) -> bool {
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => true,
    }
}

fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let mut f = File::open(path)?;
    let size = io::copy(&mut f, &mut h)?;
    Ok((size, h.finalize().to_hex().to_string()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(StoreError::io(dir))
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| StoreError::Json {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes JSON next to `path`, fsyncs it, and renames it over `path`.
pub(crate) fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    write_text_atomic(path, &(text + "\n"))
}

/// Writes `text` next to `path`, fsyncs it, and renames it over `path`.
fn write_text_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(StoreError::io(dir))?;
    tmp.write_all(text.as_bytes())
        .map_err(StoreError::io(path))?;
    tmp.as_file().sync_all().map_err(StoreError::io(path))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        path: path.to_path_buf(),
        source: e.error,
    })?;
    sync_dir(dir)
}

fn remove_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn remove_any(path: &Path) -> Result<()> {
    let r = if path.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
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

/// Slot names contain '/' (`pipeline/stage`); on disk it becomes "--".
fn slot_file_name(slot: &str) -> String {
    slot.replace('/', "--")
}

fn slot_name_from_file(stem: &str) -> String {
    stem.replace("--", "/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyInput;

    fn publish(store: &Store, name: &str, refs: &[&ArtifactId]) -> ArtifactId {
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
