//! Content fingerprints: how the bytes of files (and the names and numbers around them)
//! become a hash, for a key input or an id. Every place that hashes file contents goes
//! through here, so they all stream files and frame fields the same way.
//!
//! [`hash_file`] is the plain blake3 of a file's bytes, streamed: each file of an artifact's
//! manifest, and a user's checkpoint file as a key input.
//!
//! [`Fingerprint`] is blake3 over a sequence of fields, for anything with structure:
//!
//! | call | bytes hashed |
//! |------|--------------|
//! | [`Fingerprint::new`]`(tag)` | the domain tag as it is (unique per use, with a version in it) |
//! | [`Fingerprint::part`]`(bytes)` | the length as `u64` LE, then the bytes |
//! | [`Fingerprint::raw`]`(bytes)` | the bytes as they are: fixed-width fields (integers, digests) or a last field |
//! | [`Fingerprint::u64`]`(n)` | `n` as `u64` LE |
//! | [`Fingerprint::file`]`(path)` | the file's length as `u64` LE, then its bytes, streamed: the same bytes as `part` of its content |
//! | [`Fingerprint::dir`]`(root, skip)` | for every file under `root` (sorted by relative path, component by component; an entry whose name `skip` accepts is left out with all under it): `part(relative path)`, then `file` |
//!
//! Never hashed: modification times, permissions, the absolute path of anything.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use crate::{ArtifactId, StoreError};

/// The blake3 of one file's bytes, and how many there were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHash {
    pub size: u64,
    digest: [u8; 32],
}

impl FileHash {
    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The digest as 64 lowercase hex digits (what a manifest records).
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.digest).to_hex().to_string()
    }

    /// The digest as a key input.
    pub fn id(&self) -> ArtifactId {
        ArtifactId::from_hash(blake3::Hash::from_bytes(self.digest))
    }
}

/// The blake3 of the file at `path`, streamed; an error names the file.
pub fn hash_file(path: &Path) -> Result<FileHash, StoreError> {
    hash_file_io(path).map_err(StoreError::io(path))
}

/// [`hash_file`] with the bare I/O error, for the store's own messages.
pub(crate) fn hash_file_io(path: &Path) -> io::Result<FileHash> {
    let mut h = blake3::Hasher::new();
    let size = io::copy(&mut File::open(path)?, &mut h)?;
    Ok(FileHash {
        size,
        digest: *h.finalize().as_bytes(),
    })
}

/// blake3 over a domain tag and framed fields; see the module docs for the bytes of each call.
#[derive(Debug, Clone)]
pub struct Fingerprint(blake3::Hasher);

impl Fingerprint {
    /// Starts a fingerprint with its domain tag, hashed as it is.
    pub fn new(tag: &[u8]) -> Fingerprint {
        let mut h = blake3::Hasher::new();
        h.update(tag);
        Fingerprint(h)
    }

    /// A variable-length field: its length as `u64` LE, then its bytes.
    pub fn part(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        let bytes = bytes.as_ref();
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Bytes as they are, with no length: for fixed-width fields, or the last field.
    pub fn raw(&mut self, bytes: impl AsRef<[u8]>) -> &mut Self {
        self.0.update(bytes.as_ref());
        self
    }

    /// `n` as `u64` LE.
    pub fn u64(&mut self, n: u64) -> &mut Self {
        self.0.update(&n.to_le_bytes());
        self
    }

    /// A file's content as a field (its length as `u64` LE, then its bytes), streamed. A file
    /// that changes length while it is read is an error.
    pub fn file(&mut self, path: &Path) -> Result<&mut Self, StoreError> {
        self.file_io(path).map_err(StoreError::io(path))?;
        Ok(self)
    }

    fn file_io(&mut self, path: &Path) -> io::Result<()> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        self.0.update(&len.to_le_bytes());
        let read = io::copy(&mut f, &mut self.0)?;
        if read != len {
            return Err(io::Error::other(format!(
                "changed while being read ({len} bytes, then {read})"
            )));
        }
        Ok(())
    }

    /// Every file under `root` by relative path (sorted component by component), each as
    /// `part(path)` then `file`; an entry (file or directory) whose name `skip` accepts is left
    /// out with everything under it. Returns how many files went in.
    pub fn dir(&mut self, root: &Path, skip: impl Fn(&str) -> bool) -> Result<usize, StoreError> {
        let mut files = Vec::new();
        walk(root, Path::new(""), &skip, &mut files)?;
        files.sort();
        for rel in &files {
            self.part(rel.to_string_lossy().as_bytes());
            self.file(&root.join(rel))?;
        }
        Ok(files.len())
    }

    /// The hash so far, as a key input.
    pub fn finish(&self) -> ArtifactId {
        ArtifactId::from_hash(self.0.finalize())
    }
}

/// The files under `root/rel`, as paths relative to `root`, following symbolic links.
fn walk(
    root: &Path,
    rel: &Path,
    skip: &impl Fn(&str) -> bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), StoreError> {
    let dir = root.join(rel);
    for entry in fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if skip(&name) {
            continue;
        }
        let path = entry.path();
        let child = rel.join(&name);
        if fs::metadata(&path).map_err(StoreError::io(&path))?.is_dir() {
            walk(root, &child, skip, out)?;
        } else {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_hash_is_the_blake3_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, "abc").unwrap();
        let h = hash_file(&p).unwrap();
        assert_eq!(h.size, 3);
        assert_eq!(h.hex(), blake3::hash(b"abc").to_hex().as_str());
        assert_eq!(h.id().as_str(), h.hex());
        let e = hash_file(&dir.path().join("none")).unwrap_err().to_string();
        assert!(e.contains("none"), "{e}");
    }

    #[test]
    fn a_streamed_file_is_the_same_field_as_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fs::write(&p, &bytes).unwrap();
        let streamed = Fingerprint::new(b"t").file(&p).unwrap().finish();
        assert_eq!(streamed, Fingerprint::new(b"t").part(&bytes).finish());
    }

    #[test]
    fn framing_keeps_fields_apart() {
        let fp = |parts: &[&str]| {
            let mut f = Fingerprint::new(b"t");
            parts.iter().for_each(|p| {
                f.part(p);
            });
            f.finish()
        };
        assert_ne!(fp(&["ab", "c"]), fp(&["a", "bc"]));
        assert_ne!(fp(&["ab"]), fp(&["ab", ""]));
        assert_ne!(
            Fingerprint::new(b"t").finish(),
            Fingerprint::new(b"u").finish()
        );
    }

    #[test]
    fn a_directory_is_its_relative_names_and_contents_minus_skipped_entries() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("d");
        fs::create_dir_all(d.join("sub/skip")).unwrap();
        fs::write(d.join("b"), "2").unwrap();
        fs::write(d.join("sub/a"), "1").unwrap();
        fs::write(d.join("sub/skip/x"), "junk").unwrap();
        let skip = |name: &str| name == "skip";
        let mut got = Fingerprint::new(b"t");
        assert_eq!(got.dir(&d, skip).unwrap(), 2);
        // Sorted by path: "b" < "sub/a".
        let mut want = Fingerprint::new(b"t");
        want.part("b").part("2").part("sub/a").part("1");
        assert_eq!(got.finish(), want.finish());
        // Another place, same tree: same fingerprint; a changed byte: another.
        let e = dir.path().join("e");
        fs::create_dir_all(e.join("sub")).unwrap();
        fs::write(e.join("b"), "2").unwrap();
        fs::write(e.join("sub/a"), "1").unwrap();
        let mut moved = Fingerprint::new(b"t");
        moved.dir(&e, skip).unwrap();
        assert_eq!(moved.finish(), want.finish());
        fs::write(e.join("sub/a"), "3").unwrap();
        let mut changed = Fingerprint::new(b"t");
        changed.dir(&e, skip).unwrap();
        assert_ne!(changed.finish(), want.finish());
        let e = Fingerprint::new(b"t")
            .dir(&dir.path().join("none"), skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("none"), "{e}");
    }
}
