//! Advisory locks: one per stage key ([`Store::lock_key`]), one for `tmp/` housekeeping, and
//! one per temp directory, held by its writer.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

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
