//! The artifact store: where stages leave their outputs and find their inputs.
//!
//! An [`Artifact`] is a directory of files (Parquet tables, safetensors, HTML) plus a
//! [`Manifest`]. Its [`ArtifactId`] is the blake3 of its files' contents, so two runs that
//! produce the same bytes produce the same id. A stage run is identified by its [`StageKey`]
//! ([`key`] documents exactly what goes into it); the store maps keys to artifact ids.
//!
//! Decisions behind the shape:
//! - Publishing is a rename of a fully written, fsynced directory ([`Publisher`]), with the
//!   key record written after it, so a killed stage never leaves anything that looks complete.
//! - Each key has an advisory file lock ([`Store::lock_key`]) so two pipelines on one store
//!   run a given stage once and agree on its id.
//! - The store itself has one ([`Store::lock_store`]): shared by pipelines, stages and
//!   workers while they look entries up and publish them, exclusive for `gc --yes`, which
//!   therefore never deletes what a running stage has looked up or published. Each holder
//!   records itself beside the lock ([`StoreHolder`]), so a waiting gc can say whom it waits for.
//! - A corrupt artifact is a warning and a miss, on one path for stages and the entries they
//!   publish for themselves alike: [`Store::ensure`] locks the key, looks it up, verifies it,
//!   moves a corrupt entry to `corrupt/` (its warning names the file), builds and publishes.
//!   A corrupt artifact is never handed to a reader.
//! - Every content hash (a manifest's files, a script, a checkpoint, data read from disk) goes
//!   through [`key::Fingerprint`] or [`key::hash_file`], so they stream and frame alike.
//!
//! Modules: `store` (the entry path: lookup, settle, ensure, verify), `publish`
//! ([`Publisher`], temp directories), `gc`, `slots` (records and `.history`), `lock`, `files`
//! (atomic writes), `key` and `fingerprint` (what goes into keys and ids; `golden` pins their
//! bytes), `table` (Parquet with pinned writer properties).
//!
//! The store knows nothing about tensors or models: it moves files and hashes.

mod error;
mod files;
mod fingerprint;
mod gc;
#[cfg(test)]
mod golden;
mod id;
pub mod key;
mod lock;
mod manifest;
mod publish;
mod slots;
mod store;
pub mod table;

pub use error::StoreError;
pub use gc::{GcEntry, GcPlan};
pub use id::{ArtifactId, StageKey};
pub use key::{FileHash, Fingerprint, KEY_FORMAT_VERSION, KeyInput, hash_file};
pub use lock::{Access, KeyLock, StoreHolder, StoreLock, holders_text};
pub use manifest::{FileEntry, MANIFEST_FILE, Manifest};
pub use publish::{PublishInfo, Publisher};
pub use slots::SlotRecord;
pub use store::{Artifact, Before, Corruption, Ensured, Lookup, Store, VerifyError};

/// Version of the program that wrote an artifact, recorded in every manifest.
pub const PROGRAM_VERSION: &str = env!("CARGO_PKG_VERSION");
