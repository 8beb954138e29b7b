//! Output contracts: what a file the program wrote must be before it is published.
//!
//! A [`Contract`] reads the program's file, refuses it with an error naming the file, the
//! column and the row, or writes what is published (a table graft re-writes itself, with
//! derived columns recomputed). [`REGISTRY`] lists them; a new contract is a file with its
//! `pub const CONTRACT` and one line there. [`read_table`] is the lenient Parquet reader the
//! table contracts share: any integer width for an integer column, any float (or integer)
//! for a float column, `large_string` for a string, nullability flags ignored (null values
//! are checked row by row instead), so a table written by pandas or pyarrow with their
//! default types passes when its values do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use serde_json::{Map, Value};

/// What a contract's check sees.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The file as the program wrote it.
    pub src: &'a Path,
    /// How errors name it: `proposals.parquet (outputs[0])`.
    pub label: &'a str,
    /// Input artifacts' directories by input name.
    pub inputs: &'a BTreeMap<String, PathBuf>,
    /// Adapter bottleneck r, for parameter counts and FLOPs.
    pub bottleneck: usize,
    /// Where the published file is written.
    pub dst: &'a Path,
}

/// One registered contract.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    /// The name a pipeline's `outputs` entry gives as `contract`.
    pub name: &'static str,
    pub about: &'static str,
    /// Input artifacts the check reads (`probe` for the graph of the probed model).
    pub needs: &'static [&'static str],
    /// Checks `src` and writes `dst`; returns a summary for the manifest.
    pub check: fn(&Check<'_>) -> Result<Value, ContractError>,
}

/// Every contract.
pub static REGISTRY: &[Contract] = &[crate::proposals::CONTRACT, FILE];

/// The registered names, for error messages.
pub fn known() -> String {
    REGISTRY
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn contract(name: &str) -> Option<&'static Contract> {
    REGISTRY.iter().find(|c| c.name == name)
}

/// Refusals; each names the file, and the column and row where there is one (rows count
/// from 0, as pandas does).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContractError {
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{file}: column {column:?}: {message}")]
    Column {
        file: String,
        column: String,
        message: String,
    },
    #[error("{file}: row {row}, column {column:?}: {message}")]
    Row {
        file: String,
        row: usize,
        column: String,
        message: String,
    },
    #[error("{file}: input {input}: {message}")]
    Input {
        file: String,
        input: String,
        message: String,
    },
}

/// `file`: any regular file, published as the program wrote it.
pub const FILE: Contract = Contract {
    name: "file",
    about: "any file, published unchanged (a log, a note); graft checks nothing in it",
    needs: &[],
    check: copy_file,
};

fn copy_file(c: &Check<'_>) -> Result<Value, ContractError> {
    std::fs::copy(c.src, c.dst).map_err(|e| ContractError::File {
        file: c.label.to_owned(),
        message: e.to_string(),
    })?;
    let size = std::fs::metadata(c.dst).map(|m| m.len()).unwrap_or(0);
    Ok(serde_json::json!({ "bytes": size }))
}

/// A table read leniently: one JSON object per row (a null value is an absent key) and the
/// columns the file has.
#[derive(Debug, Clone, Default)]
pub struct TableRows {
    pub rows: Vec<Map<String, Value>>,
    pub columns: BTreeSet<String>,
}

/// Columns pandas adds for a non-default index; ignored.
fn is_index_column(name: &str) -> bool {
    name.starts_with("__index_level_")
}

/// Reads `path` against `schema`: a column the schema lacks is refused, a column it has
/// must be of a compatible type, a column not nullable in the schema must be present (unless
/// listed in `derived`: graft fills it in) and hold no null (unless derived).
pub fn read_table(
    label: &str,
    path: &Path,
    schema: &Schema,
    derived: &[&str],
) -> Result<TableRows, ContractError> {
    let file_err = |message: String| ContractError::File {
        file: label.to_owned(),
        message,
    };
    let col_err = |column: &str, message: String| ContractError::Column {
        file: label.to_owned(),
        column: column.to_owned(),
        message,
    };
    let (have, batches, _) = graft_store::table::read_parquet_with_schema(path)
        .map_err(|e| file_err(format!("not a readable Parquet file ({e})")))?;
    let known: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    for f in have.fields() {
        if !known.contains(&f.name().as_str()) && !is_index_column(f.name()) {
            return Err(col_err(
                f.name(),
                format!(
                    "is not a column of this table (columns: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    let mut keep = Vec::new();
    let mut columns = BTreeSet::new();
    for want in schema.fields() {
        let name = want.name().as_str();
        match have.index_of(name) {
            Ok(k) => {
                let got = have.field(k).data_type();
                if !compatible(want.data_type(), got) {
                    return Err(col_err(
                        name,
                        format!("has type {got}; expected {}", expected(want.data_type())),
                    ));
                }
                keep.push(k);
                columns.insert(name.to_owned());
            }
            Err(_) if want.is_nullable() || derived.contains(&name) => {}
            Err(_) => {
                return Err(col_err(
                    name,
                    format!("missing (expected {})", expected(want.data_type())),
                ));
            }
        }
    }
    let mut rows = Vec::new();
    for batch in &batches {
        let batch = batch.project(&keep).map_err(|e| file_err(e.to_string()))?;
        rows.extend(json_rows(&batch).map_err(file_err)?);
    }
    for want in schema.fields() {
        let name = want.name().as_str();
        if want.is_nullable() || derived.contains(&name) || !columns.contains(name) {
            continue;
        }
        if let Some(row) = rows
            .iter()
            .position(|r| r.get(name).is_none_or(Value::is_null))
        {
            return Err(ContractError::Row {
                file: label.to_owned(),
                row,
                column: name.to_owned(),
                message: "is null; this column needs a value in every row".into(),
            });
        }
    }
    Ok(TableRows { rows, columns })
}

fn json_rows(batch: &RecordBatch) -> Result<Vec<Map<String, Value>>, String> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer
        .write_batches(&[batch])
        .and_then(|_| writer.finish())
        .map_err(|e| e.to_string())?;
    let bytes = writer.into_inner();
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Whether a column of type `have` can stand for one of type `want`.
pub fn compatible(want: &DataType, have: &DataType) -> bool {
    match (want, have) {
        // An all-null column (pandas writes `None`s as type null): values are checked per row.
        (_, DataType::Null) => true,
        (w, h) if is_string(w) => is_string(h),
        (w, h) if w.is_integer() => h.is_integer(),
        (w, h) if w.is_floating() => h.is_floating() || h.is_integer(),
        (
            DataType::List(w) | DataType::LargeList(w),
            DataType::List(h) | DataType::LargeList(h),
        ) => compatible(w.data_type(), h.data_type()),
        (DataType::Struct(w), DataType::Struct(h)) => {
            w.len() == h.len()
                && w.iter().all(|f| {
                    h.find(f.name())
                        .is_some_and(|(_, g)| compatible(f.data_type(), g.data_type()))
                })
        }
        (w, h) => w.equals_datatype(h),
    }
}

/// The expected type in words, with the latitude [`compatible`] gives.
pub fn expected(want: &DataType) -> String {
    match want {
        w if is_string(w) => "a string".into(),
        w if w.is_integer() => "an integer (any width)".into(),
        w if w.is_floating() => "a float".into(),
        DataType::List(f) | DataType::LargeList(f) => {
            format!("a list of {}", expected(f.data_type()))
        }
        DataType::Struct(fields) => {
            let parts: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.name(), expected(f.data_type())))
                .collect();
            format!("struct {{{}}}", parts.join(", "))
        }
        w => w.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Fields};
    use std::sync::Arc;

    #[test]
    fn names_are_unique() {
        let names: BTreeSet<&str> = REGISTRY.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), REGISTRY.len());
        assert!(contract("proposals").is_some() && contract("nope").is_none());
    }

    #[test]
    fn compatibility_is_about_kinds_not_widths() {
        use DataType::*;
        assert!(compatible(&Int32, &Int64) && compatible(&Int64, &UInt8));
        assert!(compatible(&Float64, &Float32) && compatible(&Float64, &Int64));
        assert!(compatible(&Utf8, &LargeUtf8) && compatible(&Int64, &Null));
        assert!(!compatible(&Int64, &Float64) && !compatible(&Int64, &Utf8));
        assert!(!compatible(&Utf8, &Int64));
        let edge = |t: DataType| {
            DataType::List(Arc::new(Field::new(
                "element",
                DataType::Struct(Fields::from(vec![
                    Field::new("i", t.clone(), true),
                    Field::new("j", t, true),
                ])),
                true,
            )))
        };
        let want = graft_tables::ProposalRow::schema();
        let want = want.field_with_name("edges").unwrap().data_type();
        assert!(compatible(want, &edge(Int64)));
        assert!(!compatible(want, &edge(Float64)));
        assert!(!compatible(
            want,
            &DataType::List(Arc::new(Field::new("x", Int64, true)))
        ));
        assert_eq!(
            expected(want),
            "a list of struct {i: an integer (any width), j: an integer (any width)}"
        );
    }

    use graft_tables::Table as _;
}
