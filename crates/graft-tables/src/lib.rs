//! The tables that cross stage boundaries, so that stages talk through artifacts and never
//! through each other's code: each is a row struct, an Arrow schema with plain types
//! (readable by pandas, polars or DuckDB), and a Parquet file name.
//!
//! | table | file | written by | read by |
//! |---|---|---|---|
//! | [`ProbeRow`] | `probe.parquet` | probe | propose, report |
//! | [`ProposalRow`] | `proposals.parquet` | propose, finetune (what it trained) | finetune, report |
//! | [`RunRow`] | `runs.parquet` | finetune | report |
//! | [`EpochRow`] | `epochs.parquet` | finetune | report |
//!
//! Rows go through serde and Arrow's JSON decoder, so a row struct and its schema are the
//! whole definition of a table; the golden files under `golden/` pin the schemas.

mod cost;
mod dataset;
mod json;
mod measure;
mod rank;
mod summary;

pub use cost::ProbeCost;
pub use dataset::{
    DatasetInfo, Draw, DrawSplit, IMAGE_SHAPE_KEY, Preprocessing, SplitColumns, SplitImages,
    read_split, split_file, split_schema, write_split,
};
pub use json::{from_json_text, from_json_value, json_text, read_json, write_json};
pub use measure::RunMeasurement;
pub use rank::{RANK_TOLERANCES, relative_rank};
pub use summary::{FinetuneSummary, TrainSettings};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use graft_graph::{Edge, Graph, Placement};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

mod method;
mod params;
mod stats;

pub use method::{Method, RunStatus};
pub use params::canonical_json;
pub use stats::{MeanStd, mean_std};

/// Errors reading or writing a table; every one names the file.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error("{path}: {message}")]
    Convert { path: PathBuf, message: String },
    #[error("{path}: column {column:?} missing or of the wrong type (expected {expected})")]
    Schema {
        path: PathBuf,
        column: String,
        expected: String,
    },
}

/// An edge as stored in a table: a struct of two int32 columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EdgeRow {
    pub i: i32,
    pub j: i32,
}

impl From<Edge> for EdgeRow {
    fn from(e: Edge) -> EdgeRow {
        EdgeRow {
            i: e.i as i32,
            j: e.j as i32,
        }
    }
}

impl EdgeRow {
    pub fn edge(self) -> Edge {
        Edge::new(self.i.max(0) as usize, self.j.max(0) as usize)
    }
}

/// Edges of a placement as table rows.
pub fn edge_rows(p: &Placement) -> Vec<EdgeRow> {
    p.edges().iter().map(|&e| e.into()).collect()
}

/// A placement from table rows, checked against `graph`.
pub fn placement(graph: Graph, edges: &[EdgeRow]) -> Result<Placement, graft_graph::GraphError> {
    Placement::new(graph, edges.iter().map(|e| e.edge()))
}

fn edges_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(Fields::from(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("j", DataType::Int32, false),
        ])),
        true,
    )))
}

fn f64_list() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Float64, true)))
}

/// A table: a row type with its schema and file name.
pub trait Table: Serialize + DeserializeOwned + Sized {
    /// File name inside an artifact.
    const FILE: &'static str;
    fn schema() -> SchemaRef;

    /// Writes `rows` to `path` with the store's pinned Parquet writer.
    fn write(path: &Path, rows: &[Self]) -> Result<(), TableError> {
        write_rows(path, rows)
    }

    /// Reads every row of `path`, checking the columns this row type needs.
    fn read(path: &Path) -> Result<Vec<Self>, TableError> {
        read_rows(path)
    }
}

/// One edge of the probe: the scores of G_ij = Δ_jᵀ X_i.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRow {
    pub i: i32,
    pub j: i32,
    /// `parallel`, `sequential`, `long-range` or `recurrent`.
    pub kind: String,
    /// Numerical rank: singular values above the tolerance.
    pub rank: i64,
    pub frobenius: f64,
    pub spectral: f64,
    pub nuclear: f64,
    pub stable_rank: f64,
    pub effective_rank: f64,
    /// Singular values, largest first.
    pub singular_values: Vec<f64>,
}

impl Table for ProbeRow {
    const FILE: &'static str = "probe.parquet";
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("i", DataType::Int32, false),
            Field::new("j", DataType::Int32, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("rank", DataType::Int64, false),
            Field::new("frobenius", DataType::Float64, false),
            Field::new("spectral", DataType::Float64, false),
            Field::new("nuclear", DataType::Float64, false),
            Field::new("stable_rank", DataType::Float64, false),
            Field::new("effective_rank", DataType::Float64, false),
            Field::new("singular_values", f64_list(), false),
        ]))
    }
}

impl ProbeRow {
    /// Names of the score columns a heuristic can rank by.
    pub const SCORES: [&'static str; 6] = [
        "rank",
        "frobenius",
        "spectral",
        "nuclear",
        "stable_rank",
        "effective_rank",
    ];

    /// The value of score column `name`, or `None` for an unknown name.
    pub fn score(&self, name: &str) -> Option<f64> {
        Some(match name {
            "rank" => self.rank as f64,
            "frobenius" => self.frobenius,
            "spectral" => self.spectral,
            "nuclear" => self.nuclear,
            "stable_rank" => self.stable_rank,
            "effective_rank" => self.effective_rank,
            _ => return None,
        })
    }

    pub fn edge(&self) -> Edge {
        EdgeRow {
            i: self.i,
            j: self.j,
        }
        .edge()
    }

    /// The numerical rank at relative tolerance `tol` from the stored singular values
    /// ([`relative_rank`], the rule the probe's `rank` column was written with).
    pub fn rank_at(&self, tol: f64) -> usize {
        relative_rank(&self.singular_values, tol)
    }
}

/// The `heuristic` of the rows the single-adapter sweep proposes: edges chosen independently
/// of the probe, the only set the report correlates the probe's scores with, and the rows the
/// fine-tune stage may train at fewer seeds (its `sweep_seeds`).
pub const SWEEP_HEURISTIC: &str = "single-sweep";

/// One proposed placement. The same `placement_id` may appear in several rows (two
/// heuristics, two budgets); it is trained once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalRow {
    /// [`Placement::id`] of the edges; for the baselines without adapters the method name.
    pub placement_id: String,
    /// The heuristic that proposed it (`gga`, `top-k`, ..., `manual`, `baseline`).
    pub heuristic: String,
    /// How the heuristic names this use of itself in legends and tables (`gga γ=0.6`,
    /// `top-k by frobenius`); baselines: the method.
    pub label: String,
    /// The heuristic's parameters with defaults filled in, as canonical JSON (keys sorted,
    /// no whitespace, `name` left out): `{"gamma":0.6,"score":"rank"}`, `{}` for none.
    pub params: String,
    /// Whether the heuristic makes one placement per budget, so that its rows form a curve
    /// against the budget (`false` for `parallel-all`, `single-sweep`, `manual`, baselines).
    pub budgeted: bool,
    /// The probe score column that drove it, where one did.
    pub score: Option<String>,
    /// The budget asked for (number of adapters).
    pub budget: i64,
    /// Which draw of a randomised heuristic (0 otherwise).
    pub draw: i64,
    /// What is trained.
    pub method: Method,
    pub edges: Vec<EdgeRow>,
    pub adapters: i64,
    /// Trainable parameters on the base model (adapters and head; all for `full`).
    pub trainable_params: i64,
    /// Forward FLOPs per image with the placement.
    pub forward_flops: i64,
}

impl Table for ProposalRow {
    const FILE: &'static str = "proposals.parquet";
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("placement_id", DataType::Utf8, false),
            Field::new("heuristic", DataType::Utf8, false),
            Field::new("label", DataType::Utf8, false),
            Field::new("params", DataType::Utf8, false),
            Field::new("budgeted", DataType::Boolean, false),
            Field::new("score", DataType::Utf8, true),
            Field::new("budget", DataType::Int64, false),
            Field::new("draw", DataType::Int64, false),
            Field::new("method", DataType::Utf8, false),
            Field::new("edges", edges_type(), false),
            Field::new("adapters", DataType::Int64, false),
            Field::new("trainable_params", DataType::Int64, false),
            Field::new("forward_flops", DataType::Int64, false),
        ]))
    }
}

/// One fine-tuning run: one placement (or baseline) with one seed. Only what training
/// computed: its wall time, speed, peak memory and the device index it ran on are
/// measurements, in the stage's manifest ([`RunMeasurement`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    pub placement_id: String,
    pub method: Method,
    /// `select` (epoch chosen on val) or `final` (trained on train + val, last epoch
    /// tested); null in tables written before it was recorded.
    pub protocol: Option<String>,
    pub seed: i64,
    pub edges: Vec<EdgeRow>,
    pub adapters: i64,
    pub trainable_params: i64,
    pub forward_flops: i64,
    /// `ok`, or `diverged` / `failed` with the reason in `error`.
    pub status: RunStatus,
    pub error: Option<String>,
    pub best_epoch: Option<i64>,
    pub val_accuracy: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// Mean training loss of the best epoch.
    pub train_loss: Option<f64>,
    pub backend: String,
    /// The device class the run computed on: `cpu` or `cuda` (the index is a measurement).
    pub device: String,
    /// The run's own artifact in the store (its cache unit).
    pub run_artifact: String,
    /// The adapter-only weights in this artifact (adapters and head), if kept.
    pub weights_file: Option<String>,
}

impl Table for RunRow {
    const FILE: &'static str = "runs.parquet";
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("placement_id", DataType::Utf8, false),
            Field::new("method", DataType::Utf8, false),
            Field::new("protocol", DataType::Utf8, true),
            Field::new("seed", DataType::Int64, false),
            Field::new("edges", edges_type(), false),
            Field::new("adapters", DataType::Int64, false),
            Field::new("trainable_params", DataType::Int64, false),
            Field::new("forward_flops", DataType::Int64, false),
            Field::new("status", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, true),
            Field::new("best_epoch", DataType::Int64, true),
            Field::new("val_accuracy", DataType::Float64, true),
            Field::new("test_accuracy", DataType::Float64, true),
            Field::new("train_loss", DataType::Float64, true),
            Field::new("backend", DataType::Utf8, false),
            Field::new("device", DataType::Utf8, false),
            Field::new("run_artifact", DataType::Utf8, false),
            Field::new("weights_file", DataType::Utf8, true),
        ]))
    }
}

/// One epoch of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRow {
    pub placement_id: String,
    pub seed: i64,
    pub epoch: i64,
    pub train_loss: f64,
    /// Null under the `final` protocol, which holds no split out.
    pub val_accuracy: Option<f64>,
    pub lr: f64,
    /// 0: each epoch's seconds are a measurement, in the manifests (`epoch_seconds` of a run's,
    /// [`RunMeasurement::epoch_seconds`] of the fine-tune stage's); the column stays so that
    /// readers of older tables keep working.
    pub seconds: f64,
}

impl Table for EpochRow {
    const FILE: &'static str = "epochs.parquet";
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("placement_id", DataType::Utf8, false),
            Field::new("seed", DataType::Int64, false),
            Field::new("epoch", DataType::Int64, false),
            Field::new("train_loss", DataType::Float64, false),
            Field::new("val_accuracy", DataType::Float64, true),
            Field::new("lr", DataType::Float64, false),
            Field::new("seconds", DataType::Float64, false),
        ]))
    }
}

/// `model.json` of a probe artifact: the shapes of the probed model, so that stages without
/// tensors (propose, report) can count parameters and FLOPs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The preset the base model was built as.
    pub preset: String,
    pub dims: graft_graph::Dims,
}

impl ModelInfo {
    pub const FILE: &'static str = "model.json";

    pub fn graph(&self) -> Graph {
        Graph::new(self.dims.layers)
    }

    pub fn write(&self, path: &Path) -> Result<(), TableError> {
        let text = serde_json::to_string_pretty(self).map_err(|e| TableError::Convert {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        std::fs::write(path, text + "\n").map_err(|e| TableError::Convert {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    pub fn read(path: &Path) -> Result<ModelInfo, TableError> {
        read_json(path)
    }
}

fn write_rows<T: Table>(path: &Path, rows: &[T]) -> Result<(), TableError> {
    let schema = T::schema();
    let conv = |message: String| TableError::Convert {
        path: path.to_path_buf(),
        message,
    };
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(rows.len().max(1))
        .build_decoder()
        .map_err(|e| conv(e.to_string()))?;
    decoder.serialize(rows).map_err(|e| conv(e.to_string()))?;
    let batch = match decoder.flush().map_err(|e| conv(e.to_string()))? {
        Some(b) => b,
        None => RecordBatch::new_empty(schema.clone()),
    };
    graft_store::table::write_parquet(path, schema, &[batch], &BTreeMap::new())?;
    Ok(())
}

fn read_rows<T: Table>(path: &Path) -> Result<Vec<T>, TableError> {
    let (have, batches, _) = graft_store::table::read_parquet_with_schema(path)?;
    for f in T::schema().fields() {
        match have.field_with_name(f.name()) {
            Ok(h) if h.data_type().equals_datatype(f.data_type()) => {}
            // A nullable column added later reads as null from older tables.
            Err(_) if f.is_nullable() => {}
            _ => {
                return Err(TableError::Schema {
                    path: path.to_path_buf(),
                    column: f.name().clone(),
                    expected: f.data_type().to_string(),
                });
            }
        }
    }
    let mut out = Vec::new();
    for batch in batches {
        let mut writer = arrow::json::ArrayWriter::new(Vec::new());
        writer
            .write_batches(&[&batch])
            .and_then(|_| writer.finish())
            .map_err(|e| TableError::Convert {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let json = writer.into_inner();
        if json.is_empty() {
            continue;
        }
        let rows: Vec<T> = serde_json::from_slice(&json).map_err(|e| TableError::Convert {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        out.extend(rows);
    }
    Ok(out)
}

/// The schema as text, one column per line: what the golden files hold.
pub fn schema_text(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "{}: {}{}\n",
                f.name(),
                f.data_type(),
                if f.is_nullable() { " (nullable)" } else { "" }
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn golden<T: Table>(name: &str) {
        let text = schema_text(&T::schema());
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(format!("{name}.schema.txt"));
        if std::env::var_os("GRAFT_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with GRAFT_BLESS=1 to create)", path.display())
        });
        assert_eq!(
            text,
            want,
            "schema of {} changed; bless it if intended",
            T::FILE
        );
    }

    #[test]
    fn schemas_match_golden_files() {
        golden::<ProbeRow>("probe");
        golden::<ProposalRow>("proposals");
        golden::<RunRow>("runs");
        golden::<EpochRow>("epochs");
    }

    #[test]
    fn proposals_round_trip() {
        let g = Graph::new(2);
        let p = Placement::new(g, [Edge::new(0, 1), Edge::new(4, 0)]).unwrap();
        let rows = vec![
            ProposalRow {
                placement_id: p.id(),
                heuristic: "gga".into(),
                label: "gga γ=0.6".into(),
                params: r#"{"gamma":0.6,"score":"rank"}"#.into(),
                budgeted: true,
                score: Some("rank".into()),
                budget: 2,
                draw: 0,
                method: Method::Adapters,
                edges: edge_rows(&p),
                adapters: 2,
                trainable_params: 1234,
                forward_flops: 99,
            },
            ProposalRow {
                placement_id: "linear-probe".into(),
                heuristic: "baseline".into(),
                label: "linear-probe".into(),
                params: "{}".into(),
                budgeted: false,
                score: None,
                budget: 0,
                draw: 0,
                method: Method::LinearProbe,
                edges: vec![],
                adapters: 0,
                trainable_params: 10,
                forward_flops: 9,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ProposalRow::FILE);
        ProposalRow::write(&path, &rows).unwrap();
        assert_eq!(ProposalRow::read(&path).unwrap(), rows);
        assert_eq!(placement(g, &rows[0].edges).unwrap(), p);
    }

    #[test]
    fn runs_and_probe_round_trip_with_nulls() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunRow {
            placement_id: "abc".into(),
            method: Method::Adapters,
            protocol: Some("final".into()),
            seed: 1,
            edges: vec![EdgeRow { i: 0, j: 1 }],
            adapters: 1,
            trainable_params: 5,
            forward_flops: 6,
            status: RunStatus::Diverged,
            error: Some("loss is NaN".into()),
            best_epoch: None,
            val_accuracy: None,
            test_accuracy: None,
            train_loss: None,
            backend: "flex".into(),
            device: "cpu".into(),
            run_artifact: "f".repeat(64),
            weights_file: None,
        };
        let path = dir.path().join(RunRow::FILE);
        RunRow::write(&path, std::slice::from_ref(&run)).unwrap();
        assert_eq!(RunRow::read(&path).unwrap(), vec![run]);

        let probe = ProbeRow {
            i: 2,
            j: 0,
            kind: "recurrent".into(),
            rank: 3,
            frobenius: 1.0,
            spectral: 0.9,
            nuclear: 1.2,
            stable_rank: 1.1,
            effective_rank: 1.3,
            singular_values: vec![0.9, 0.25, 1e-9],
        };
        let path = dir.path().join(ProbeRow::FILE);
        ProbeRow::write(&path, std::slice::from_ref(&probe)).unwrap();
        assert_eq!(ProbeRow::read(&path).unwrap(), vec![probe]);
        // An empty table is still a table.
        EpochRow::write(&dir.path().join("e.parquet"), &[]).unwrap();
        assert!(
            EpochRow::read(&dir.path().join("e.parquet"))
                .unwrap()
                .is_empty()
        );
    }

    fn write_json(path: &Path, schema: SchemaRef, rows: &[serde_json::Value]) {
        let mut d = arrow::json::ReaderBuilder::new(schema.clone())
            .build_decoder()
            .unwrap();
        d.serialize(rows).unwrap();
        let batch = d.flush().unwrap().unwrap();
        graft_store::table::write_parquet(path, schema, &[batch], &BTreeMap::new()).unwrap();
    }

    #[test]
    fn an_older_or_foreign_proposals_table_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proposals.parquet");
        let mut row = serde_json::json!({
            "placement_id": "p", "heuristic": "gga", "score": null, "budget": 1, "draw": 0,
            "method": "adapters", "edges": [{"i": 0, "j": 1}], "adapters": 1,
            "trainable_params": 1, "forward_flops": 1,
        });
        // Written before rows described their heuristic: the missing column is named.
        let old: Vec<Field> = ProposalRow::schema()
            .fields()
            .iter()
            .filter(|f| !["label", "params", "budgeted"].contains(&f.name().as_str()))
            .map(|f| f.as_ref().clone())
            .collect();
        write_json(
            &path,
            Arc::new(Schema::new(old)),
            std::slice::from_ref(&row),
        );
        let err = ProposalRow::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("proposals.parquet") && err.contains("\"label\""),
            "{err}"
        );
        // A method no stage knows is an error naming the file and the value.
        row["label"] = "gga".into();
        row["params"] = "{}".into();
        row["budgeted"] = true.into();
        row["method"] = "prompt-tuning".into();
        write_json(&path, ProposalRow::schema(), &[row]);
        let err = ProposalRow::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("proposals.parquet") && err.contains("prompt-tuning"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_table_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        EpochRow::write(&path, &[]).unwrap();
        let err = RunRow::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.parquet") && err.contains("\"method\""),
            "{err}"
        );
    }
}
