use std::path::PathBuf;

/// Everything that can go wrong in the store. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("artifact {id} is not in the store at {path}")]
    MissingArtifact { id: String, path: PathBuf },
    #[error("artifact {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("invalid {what} {value:?}: expected 64 lowercase hex digits")]
    InvalidHash { what: &'static str, value: String },
    #[error("an entry built for key {expected} was published under key {found}")]
    KeyMismatch { expected: String, found: String },
    #[error("invalid file name {name:?} in an artifact: plain names without '/' only")]
    InvalidFileName { name: String },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }
}
