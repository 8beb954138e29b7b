//! Parquet tables with pinned writer properties, so identical tables give identical bytes
//! (and so identical artifact ids) whichever process wrote them.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};

use crate::StoreError;

/// The `created_by` string written into every table. Pinned: a library upgrade must not
/// change artifact ids on its own.
pub const CREATED_BY: &str = "graft-store parquet v1";

/// Writer properties used for every table in the store.
pub fn writer_properties(metadata: &BTreeMap<String, String>) -> WriterProperties {
    let kv: Vec<KeyValue> = metadata
        .iter()
        .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
        .collect();
    WriterProperties::builder()
        .set_created_by(CREATED_BY.to_owned())
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::SNAPPY)
        .set_encoding(Encoding::PLAIN)
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_row_count(Some(4096))
        .set_key_value_metadata(if kv.is_empty() { None } else { Some(kv) })
        .build()
}

/// Writes `batches` (all of `schema`) to `path`, with string `metadata` in the file footer.
pub fn write_parquet(
    path: &Path,
    schema: Arc<Schema>,
    batches: &[RecordBatch],
    metadata: &BTreeMap<String, String>,
) -> Result<(), StoreError> {
    let perr = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(StoreError::io(path))?;
    let mut writer =
        ArrowWriter::try_new(file, schema, Some(writer_properties(metadata))).map_err(perr)?;
    for batch in batches {
        writer.write(batch).map_err(perr)?;
    }
    writer.close().map_err(perr)?;
    Ok(())
}

/// Reads a whole table and its footer metadata.
pub fn read_parquet(
    path: &Path,
) -> Result<(Vec<RecordBatch>, BTreeMap<String, String>), StoreError> {
    let (_, batches, metadata) = read_parquet_with_schema(path)?;
    Ok((batches, metadata))
}

/// A table read back: its schema, its batches and its key-value metadata.
pub type TableRead = (Arc<Schema>, Vec<RecordBatch>, BTreeMap<String, String>);

/// Reads a whole table with its schema (known even when the table has no rows).
pub fn read_parquet_with_schema(path: &Path) -> Result<TableRead, StoreError> {
    let perr = |source| StoreError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(StoreError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
    let metadata = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .filter_map(|k| Some((k.key.clone(), k.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    let schema = builder.schema().clone();
    let reader = builder.build().map_err(perr)?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| StoreError::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
    Ok((schema, batches, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};
    use arrow::datatypes::{DataType, Field};

    #[test]
    fn same_table_same_bytes() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int32, false),
            Field::new("b", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int32Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["x", "y", "z"])),
            ],
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let meta: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let (p1, p2) = (dir.path().join("1.parquet"), dir.path().join("2.parquet"));
        write_parquet(&p1, schema.clone(), std::slice::from_ref(&batch), &meta).unwrap();
        write_parquet(&p2, schema, std::slice::from_ref(&batch), &meta).unwrap();
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
        let (back, m) = read_parquet(&p1).unwrap();
        assert_eq!(back, vec![batch]);
        assert_eq!(m.get("k").map(String::as_str), Some("v"));
    }
}
