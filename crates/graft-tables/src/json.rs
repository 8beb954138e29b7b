//! Reading and writing the JSON files that cross stages: one format for all of them.
//!
//! Written pretty-printed with keys in sorted order and a final newline (a struct goes through
//! `serde_json::Value`, whose maps are sorted), so a file's bytes depend only on its values:
//! the artifact id of equal contents is equal. Read with the path of the offending field
//! in every error (`preprocessing.mean: invalid length 2, expected an array of length 3`,
//! `train: missing field `epochs``), so a file from an older writer names what it lacks.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TableError;

/// The text [`write_json`] writes.
pub fn json_text<T: Serialize>(value: &T) -> Result<String, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    Ok(serde_json::to_string_pretty(&value)? + "\n")
}

/// Writes `value` to `path` as [`json_text`].
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TableError> {
    let conv = |message: String| TableError::Convert {
        path: path.to_path_buf(),
        message,
    };
    let text = json_text(value).map_err(|e| conv(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| conv(e.to_string()))
}

/// Reads `path` as a `T`; an error names the file and the field.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, TableError> {
    let text = std::fs::read_to_string(path).map_err(|e| TableError::Convert {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    from_json_text(path, &text)
}

/// Parses `text` (the content of `path`) as a `T`; an error names the file and the field.
pub fn from_json_text<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, TableError> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| field_error(path, e))
}

/// Converts `value` (read from `path`, e.g. a manifest's `extra`) to a `T`; an error names
/// the file and the field.
pub fn from_json_value<T: DeserializeOwned>(
    path: &Path,
    value: serde_json::Value,
) -> Result<T, TableError> {
    serde_path_to_error::deserialize(value).map_err(|e| field_error(path, e))
}

fn field_error<E: std::fmt::Display>(path: &Path, e: serde_path_to_error::Error<E>) -> TableError {
    let field = e.path().to_string();
    let message = e.into_inner().to_string();
    TableError::Convert {
        path: path.to_path_buf(),
        message: if field == "." {
            message
        } else {
            format!("{field}: {message}")
        },
    }
}

/// Compares `text` with the golden file `golden/<name>`; `GRAFT_BLESS=1` rewrites the file.
#[cfg(test)]
pub(crate) fn check_golden_text(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    if std::env::var_os("GRAFT_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with GRAFT_BLESS=1 to create)", path.display()));
    assert_eq!(text, want, "{name} changed; bless it if intended");
}

/// Compares `value`'s [`json_text`] with the golden file `golden/<name>` and reads the golden
/// file back as a `T` equal to `value`: a field added, renamed or retyped fails one or the
/// other. `GRAFT_BLESS=1` rewrites the file.
#[cfg(test)]
pub(crate) fn check_golden_json<T>(name: &str, value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    check_golden_text(name, &json_text(value).unwrap());
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name);
    let back: T = read_json(&path).unwrap();
    assert_eq!(&back, value, "{name} does not read back as written");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelInfo;

    fn model() -> ModelInfo {
        ModelInfo {
            preset: "vit-cpu-tiny".into(),
            dims: graft_graph::Dims {
                image_size: 32,
                patch_size: 4,
                channels: 3,
                dim: 64,
                layers: 2,
                mlp_dim: 128,
                classes: 10,
            },
        }
    }

    /// `model.json` keeps its own writer (fields in declaration order): pinned byte for byte.
    #[test]
    fn model_json_matches_its_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ModelInfo::FILE);
        model().write(&path).unwrap();
        check_golden_text("model.json", &std::fs::read_to_string(&path).unwrap());
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/model.json");
        assert_eq!(ModelInfo::read(&golden).unwrap(), model());
        std::fs::write(&path, r#"{"preset": "x", "dims": {"image_size": 32}}"#).unwrap();
        let err = ModelInfo::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.json") && err.contains("dims: missing field `patch_size`"),
            "{err}"
        );
    }
}
