//! Advisory locks: one per stage key ([`Store::lock_key`]), one for `tmp/` housekeeping, one
//! per temp directory, held by its writer, and the store's own ([`Store::lock_store`]): shared
//! by whatever looks entries up and publishes them, exclusive for `gc --yes`, so gc never
//! deletes an entry a running stage has looked up or published but not yet made reachable.

use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::files::{read_json_opt, remove_if_exists};
use crate::store::Result;
use crate::{StageKey, Store, StoreError};

/// Holds the advisory lock of one stage key until dropped.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

impl Store {
    /// Blocks until this process holds the advisory lock of `key`. Two pipelines that reach
    /// the same stage key run it once: the second finds the first one's artifact.
    pub fn lock_key(&self, key: &StageKey) -> Result<KeyLock> {
        let path = self.root.join("locks").join(format!("{key}.lock"));
        let file = open_lock_file(&path)?;
        file.lock().map_err(StoreError::io(&path))?;
        Ok(KeyLock { _file: file })
    }

    pub(crate) fn lock_tmp(&self) -> Result<File> {
        let path = self.root.join("locks").join("tmp.lock");
        let file = open_lock_file(&path)?;
        file.lock().map_err(StoreError::io(&path))?;
        Ok(file)
    }
}

pub(crate) fn with_lock_ext(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

pub(crate) fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(StoreError::io(path))
}

/// True when the lock could be taken, i.e. no live process holds it.
pub(crate) fn try_lock_path(path: &Path) -> bool {
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => true,
    }
}

/// How [`Store::lock_store`] takes the store's lock: shared by everything that looks entries
/// up and publishes them (a pipeline run, a stage, a fine-tune worker, `verify`), exclusive
/// for `gc --yes`, which deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Shared,
    Exclusive,
}

/// One process holding the store's lock, as it recorded itself beside the lock
/// (`locks/store.holders/<pid>-<n>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHolder {
    /// What holds it: `pipeline ci`, `stage ci/finetune`, `finetune worker`, `gc`.
    pub what: String,
    pub pid: u32,
}

impl fmt::Display for StoreHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (pid {})", self.what, self.pid)
    }
}

/// The holders as one phrase: `pipeline ci (pid 7), stage ci/finetune (pid 9)`.
pub fn holders_text(holders: &[StoreHolder]) -> String {
    if holders.is_empty() {
        return "another process".to_owned();
    }
    let parts: Vec<String> = holders.iter().map(StoreHolder::to_string).collect();
    parts.join(", ")
}

/// The store's lock ([`Store::lock_store`]), held until dropped; its holder record goes
/// with it.
#[derive(Debug)]
pub struct StoreLock {
    _lock: File,
    record: PathBuf,
    _record_lock: File,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.record);
    }
}

const HOLDERS_DIR: &str = "store.holders";

impl Store {
    fn store_lock_path(&self) -> PathBuf {
        self.root.join("locks").join("store.lock")
    }

    fn holders_dir(&self) -> PathBuf {
        self.root.join("locks").join(HOLDERS_DIR)
    }

    /// Takes the store's lock, blocking until it is free for `access`; before blocking,
    /// `on_wait` is told who holds it. `what` names the holder in its record (`pipeline ci`),
    /// which [`Store::holders`] reads back: `gc --no-wait` says whom it would wait for.
    pub fn lock_store(
        &self,
        access: Access,
        what: &str,
        on_wait: impl FnOnce(&[StoreHolder]),
    ) -> Result<StoreLock> {
        match self.try_lock_store(access, what)? {
            Ok(lock) => Ok(lock),
            Err(holders) => {
                on_wait(&holders);
                let path = self.store_lock_path();
                let file = open_lock_file(&path)?;
                match access {
                    Access::Shared => file.lock_shared(),
                    Access::Exclusive => file.lock(),
                }
                .map_err(StoreError::io(&path))?;
                self.hold(file, access, what)
            }
        }
    }

    /// [`Store::lock_store`] without waiting: `Err` with the holders when it is taken.
    pub fn try_lock_store(
        &self,
        access: Access,
        what: &str,
    ) -> Result<std::result::Result<StoreLock, Vec<StoreHolder>>> {
        let path = self.store_lock_path();
        let file = open_lock_file(&path)?;
        let got = match access {
            Access::Shared => file.try_lock_shared(),
            Access::Exclusive => file.try_lock(),
        };
        match got {
            Ok(()) => self.hold(file, access, what).map(Ok),
            Err(TryLockError::WouldBlock) => Ok(Err(self.holders()?)),
            Err(TryLockError::Error(e)) => Err(StoreError::Io { path, source: e }),
        }
    }

    /// Records this process as a holder: the record is written under a temporary name,
    /// locked, then renamed into place, so a record without its lock is one whose process is
    /// gone. Exclusive access also removes such stale records.
    fn hold(&self, lock: File, access: Access, what: &str) -> Result<StoreLock> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = self.holders_dir();
        fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        let name = format!(
            "{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = dir.join(format!("{name}.tmp"));
        let record = dir.join(format!("{name}.json"));
        let holder = StoreHolder {
            what: what.to_owned(),
            pid: std::process::id(),
        };
        let text = serde_json::to_string(&holder).map_err(|source| StoreError::Json {
            path: record.clone(),
            source,
        })?;
        let record_lock = open_lock_file(&tmp)?;
        record_lock.lock().map_err(StoreError::io(&tmp))?;
        (&record_lock)
            .write_all(text.as_bytes())
            .map_err(StoreError::io(&tmp))?;
        fs::rename(&tmp, &record).map_err(StoreError::io(&record))?;
        if access == Access::Exclusive {
            self.holders()?;
        }
        Ok(StoreLock {
            _lock: lock,
            record,
            _record_lock: record_lock,
        })
    }

    /// The processes holding the store's lock now, by their records (sorted by pid); a
    /// record whose process is gone is removed.
    pub fn holders(&self) -> Result<Vec<StoreHolder>> {
        let dir = self.holders_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path: dir, source }),
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            let Some(ext) = path.extension().filter(|e| *e == "json" || *e == "tmp") else {
                continue;
            };
            let Ok(file) = File::open(&path) else {
                continue;
            };
            match file.try_lock() {
                // Nobody holds it: its process is gone.
                Ok(()) => remove_if_exists(&path)?,
                // A `.tmp` record is still being written: not a holder yet.
                Err(TryLockError::WouldBlock) if ext == "tmp" => {}
                Err(TryLockError::WouldBlock) => {
                    if let Ok(Some(h)) = read_json_opt::<StoreHolder>(&path) {
                        out.push(h);
                    }
                }
                Err(TryLockError::Error(source)) => return Err(StoreError::Io { path, source }),
            }
        }
        out.sort_by(|a, b| a.pid.cmp(&b.pid).then(a.what.cmp(&b.what)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn me(what: &str) -> StoreHolder {
        StoreHolder {
            what: what.to_owned(),
            pid: std::process::id(),
        }
    }

    #[test]
    fn shared_holders_exclude_gc_and_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let run = store
            .lock_store(Access::Shared, "pipeline ci", |_| panic!("nobody holds it"))
            .unwrap();
        let stage = store
            .try_lock_store(Access::Shared, "stage ci/finetune")
            .unwrap()
            .expect("shared holders coexist");
        let held = store.try_lock_store(Access::Exclusive, "gc").unwrap();
        let holders = held.expect_err("gc got the lock while a pipeline held it");
        assert_eq!(holders, vec![me("pipeline ci"), me("stage ci/finetune")]);
        assert_eq!(
            holders_text(&holders),
            format!(
                "pipeline ci (pid {0}), stage ci/finetune (pid {0})",
                std::process::id()
            )
        );
        drop((run, stage));
        assert_eq!(store.holders().unwrap(), vec![]);
        let gc = store
            .try_lock_store(Access::Exclusive, "gc")
            .unwrap()
            .unwrap();
        assert_eq!(store.holders().unwrap(), vec![me("gc")]);
        let blocked = store.try_lock_store(Access::Shared, "pipeline ci").unwrap();
        assert_eq!(blocked.unwrap_err(), vec![me("gc")]);
        drop(gc);
        assert_eq!(
            fs::read_dir(store.holders_dir()).unwrap().count(),
            0,
            "a holder left its record"
        );
    }

    #[test]
    fn gc_waits_for_a_running_pipeline_and_is_told_whom_it_waits_for() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let run = store
            .lock_store(Access::Shared, "pipeline ci", |_| {})
            .unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let gc = store
                    .lock_store(Access::Exclusive, "gc", |h| {
                        tx.send(format!("waiting for {}", holders_text(h))).unwrap()
                    })
                    .unwrap();
                tx.send("got it".to_owned()).unwrap();
                drop(gc);
            });
            let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(
                first,
                format!("waiting for pipeline ci (pid {})", std::process::id())
            );
            // Still waiting while the pipeline holds the store.
            assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
            drop(run);
            assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "got it");
        });
    }

    #[test]
    fn a_record_whose_process_is_gone_is_not_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // What a killed holder leaves: its record, with no lock on it.
        fs::create_dir_all(store.holders_dir()).unwrap();
        let stale = store.holders_dir().join("1-0.json");
        fs::write(&stale, r#"{"what": "pipeline old", "pid": 1}"#).unwrap();
        let half = store.holders_dir().join("1-1.tmp");
        fs::write(&half, "").unwrap();
        assert_eq!(store.holders().unwrap(), vec![]);
        assert!(!stale.exists() && !half.exists());
        let gc = store
            .try_lock_store(Access::Exclusive, "gc")
            .unwrap()
            .unwrap();
        assert_eq!(store.holders().unwrap(), vec![me("gc")]);
        drop(gc);
    }
}
