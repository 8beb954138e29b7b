use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

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
    /// The artifact failed verification; it was moved aside to `moved_to` and is not used.
    Corrupt {
        path: PathBuf,
        reason: String,
        moved_to: PathBuf,
    },
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

/// What `gc` found (and removed, unless it was a dry run).
#[derive(Debug, Default)]
pub struct GcReport {
    pub kept: Vec<ArtifactId>,
    pub unreachable: Vec<(ArtifactId, u64)>,
    pub stale_keys: usize,
    pub deleted: bool,
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

    /// What the store holds for `key`. A corrupt artifact is moved aside and reported, never returned.
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
            Err(e) => {
                let moved_to = self.quarantine(&record.artifact)?;
                remove_if_exists(&path)?;
                Ok(Lookup::Corrupt {
                    path: e.path,
                    reason: e.reason,
                    moved_to,
                })
            }
        }
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

    pub fn write_slot(&self, slot: &str, record: &SlotRecord) -> Result<()> {
        write_json_atomic(&self.slot_path(slot), record)
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

    /// Removes (with `delete`) or lists every artifact not reachable from `roots` through
    /// manifest inputs and refs, and the key records that point at nothing.
    pub fn gc(&self, roots: &[ArtifactId], delete: bool) -> Result<GcReport> {
        let mut reached: BTreeSet<ArtifactId> = BTreeSet::new();
        let mut todo: Vec<ArtifactId> = roots.to_vec();
        while let Some(id) = todo.pop() {
            if !reached.insert(id.clone()) {
                continue;
            }
            let mpath = self.object_dir(&id).join(MANIFEST_FILE);
            if let Some(m) = read_json_opt::<Manifest>(&mpath).ok().flatten() {
                todo.extend(m.inputs.into_values());
                todo.extend(m.refs);
            }
        }
        let mut report = GcReport {
            deleted: delete,
            ..GcReport::default()
        };
        for id in self.objects()? {
            if reached.contains(&id) {
                report.kept.push(id);
            } else {
                let size = dir_size(&self.object_dir(&id));
                report.unreachable.push((id, size));
            }
        }
        let gone: HashSet<&ArtifactId> = report.unreachable.iter().map(|(id, _)| id).collect();
        let keys = self.root.join("keys");
        for entry in fs::read_dir(&keys).map_err(StoreError::io(&keys))? {
            let path = entry.map_err(StoreError::io(&keys))?.path();
            let stale = match read_json_opt::<KeyRecord>(&path) {
                Ok(Some(r)) => gone.contains(&r.artifact) || !self.object_dir(&r.artifact).exists(),
                _ => true,
            };
            if stale {
                report.stale_keys += 1;
                if delete {
                    remove_if_exists(&path)?;
                }
            }
        }
        if delete {
            for (id, _) in &report.unreachable {
                remove_any(&self.object_dir(id))?;
            }
            let corrupt = self.root.join("corrupt");
            remove_any(&corrupt)?;
            fs::create_dir_all(&corrupt).map_err(StoreError::io(&corrupt))?;
        }
        Ok(report)
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
    refs: std::sync::Mutex<BTreeSet<ArtifactId>>,
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
        if let Ok(mut refs) = self.refs.lock() {
            refs.insert(id.clone());
        }
    }

    /// Makes the artifact visible under its content id and records `key -> id`.
    pub fn publish(mut self, info: PublishInfo<'_>) -> Result<Manifest> {
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
            refs: self
                .refs
                .lock()
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
        };
        write_json_atomic(&self.dir.join(MANIFEST_FILE), &manifest)?;
        sync_dir(&self.dir)?;

        let target = self.store.object_dir(&id);
        let objects = self.store.root.join("objects");
        loop {
            match fs::rename(&self.dir, &target) {
                Ok(()) => break,
                Err(_) if target.exists() => {
                    // Same content published before (or by a concurrent run). Keep it if
                    // it verifies; otherwise move it aside and take its place.
                    if self.store.verify(&id).is_ok() {
                        remove_any(&self.dir)?;
                        break;
                    }
                    self.store.quarantine(&id)?;
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
        Ok(manifest)
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
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(StoreError::io(dir))?;
    let text = serde_json::to_string_pretty(value).map_err(|source| StoreError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    tmp.write_all(text.as_bytes())
        .map_err(StoreError::io(path))?;
    tmp.write_all(b"\n").map_err(StoreError::io(path))?;
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
        let report = store.gc(std::slice::from_ref(&root), true).unwrap();
        let gone: Vec<&ArtifactId> = report.unreachable.iter().map(|(id, _)| id).collect();
        assert_eq!(gone, vec![&stray]);
        assert!(store.artifact(&unit).is_ok());
        assert!(store.artifact(&stray).is_err());
    }
}
