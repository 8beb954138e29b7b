//! The pretrain stage: trains a ViT preset from scratch (every parameter trainable) on a
//! dataset artifact, so the embedded default and CI have a pretrained backbone without any
//! download. Outputs `model.safetensors` (timm names), `history.parquet` (one row per
//! epoch) and `summary.json` (accuracies on the source task, backend). Wall times and
//! speeds go to the manifest only, so a rerun that computes the same weights publishes
//! the same artifact id.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use graft_model::{Trainable, VitConfig};
use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, Publisher};
use graft_train::{DatasetInfo, Progress, Split, TrainConfig, TrainProtocol, progress};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Parameters of the pretrain stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainParams {
    /// A preset of `graft_model::PRESETS`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// `epochs`, `lr`, `batch`, `weight_decay`, `warmup_epochs`, with the protocol's
    /// defaults (set `weight_decay = 0.05` to train from scratch as DeiT does).
    #[serde(flatten)]
    pub train: TrainProtocol,
    #[serde(default)]
    pub seed: u64,
    /// `cpu`, `cuda` or `cuda:k`: where it runs, not what it computes (left out of the key).
    #[serde(default = "default_device")]
    pub device: String,
}

fn default_preset() -> String {
    "vit-cpu-small".into()
}
fn default_device() -> String {
    "cpu".into()
}

/// The stage.
pub struct Pretrain;

impl Stage for Pretrain {
    const NAME: &'static str = "pretrain";
    /// 2: the training knobs are `graft_train::TrainProtocol`, whose `weight_decay`
    /// default is 1e-4 (it was 0.05 here); pipelines that relied on the default get a new
    /// key and say so.
    const VERSION: u32 = 2;
    type Params = PretrainParams;

    fn input_names(_: &PretrainParams) -> Vec<String> {
        vec!["dataset".into()]
    }

    fn validate(p: PretrainParams) -> Result<PretrainParams, BoxError> {
        if VitConfig::preset(&p.preset, 1).is_none() {
            return Err(format!(
                "preset = {:?} is not a preset (known: {})",
                p.preset,
                graft_model::PRESETS.join(", ")
            )
            .into());
        }
        if p.train.epochs == 0 || p.train.batch == 0 {
            return Err("epochs and batch must be at least 1".into());
        }
        if !(p.train.lr > 0.0 && p.train.lr.is_finite()) {
            return Err(format!("lr = {} must be positive", p.train.lr).into());
        }
        graft_backend::device(&p.device)?;
        Ok(p)
    }

    fn location_params() -> &'static [&'static str] {
        &["device"]
    }

    fn run(
        p: &PretrainParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        let dataset = &inputs["dataset"];
        let info = DatasetInfo::read(dataset.dir())?;
        let pre = &info.preprocessing;
        let config = VitConfig::preset(&p.preset, info.classes.len()).expect("validated");
        if config.image_size != pre.image_size {
            return Err(format!(
                "preset {} takes {} px images but dataset {} has {} px (set the prep stage's image_size)",
                p.preset,
                config.image_size,
                dataset.id().short(),
                pre.image_size
            )
            .into());
        }
        let train = Split::read(dataset.dir(), "train", pre.image_size)?;
        let val = Split::read(dataset.dir(), "val", pre.image_size)?;
        let test = Split::read(dataset.dir(), "test", pre.image_size)?;
        let device = graft_backend::device(&p.device)?;
        device.seed(p.seed);
        let model = config.init(&device).with_trainable(Trainable::Full);
        let tc = TrainConfig::from(&p.train).with_seed(p.seed);
        let bar = ProgressBar::new(0).with_style(
            ProgressStyle::with_template(
                "pretrain {bar:30} {pos}/{len} steps loss {msg} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // Without a terminal the bar is invisible: one line per epoch instead.
        let lines = !progress::bars_visible();
        let fit_start = std::time::Instant::now();
        let result = graft_train::fit(model, &train, &val, pre, &tc, &device, |p| match p {
            Progress::Step { step, total, loss } => {
                bar.set_length(total as u64);
                bar.set_position(step as u64);
                bar.set_message(format!("{loss:.3}"));
            }
            Progress::Epoch { record, epochs } if lines => eprintln!(
                "pretrain: {}",
                progress::epoch_line(record, epochs, fit_start.elapsed().as_secs_f64())
            ),
            Progress::Epoch { .. } => {}
        })?;
        bar.finish_and_clear();
        let test_accuracy =
            graft_train::evaluate(&result.model, &test, pre, &device, p.train.batch);
        graft_model::checkpoint::save_timm(&result.model, &out.file("model.safetensors"))?;
        write_history(&result.history, &out.file("history.parquet"))?;
        let summary = json!({
            "preset": p.preset,
            "classes": info.classes,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "test_accuracy": test_accuracy,
            "backend": graft_backend::backend_name(),
            "device": p.device,
            "params": result.model.param_count().all,
        });
        std::fs::write(
            out.file("summary.json"),
            serde_json::to_string_pretty(&summary)? + "\n",
        )?;
        eprintln!(
            "pretrain: {} on {} classes, val {:.1} %, test {:.1} %, {:.0} images/s",
            p.preset,
            info.classes.len(),
            100.0 * result.best_val_accuracy,
            100.0 * test_accuracy,
            result.images_per_second
        );
        Ok([
            ("test_accuracy".to_owned(), json!(test_accuracy)),
            ("val_accuracy".to_owned(), json!(result.best_val_accuracy)),
            ("backend".to_owned(), json!(graft_backend::backend_name())),
            ("device".to_owned(), json!(p.device)),
            ("train_seconds".to_owned(), json!(result.train_seconds)),
            (
                "images_per_second".to_owned(),
                json!(result.images_per_second),
            ),
            (
                "epoch_seconds".to_owned(),
                json!(result.history.iter().map(|h| h.seconds).collect::<Vec<_>>()),
            ),
        ]
        .into())
    }
}

fn write_history(
    history: &[graft_train::EpochRecord],
    path: &std::path::Path,
) -> Result<(), BoxError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("epoch", DataType::Int64, false),
        Field::new("train_loss", DataType::Float64, false),
        Field::new("val_accuracy", DataType::Float64, false),
        Field::new("lr", DataType::Float64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from_iter_values(
                history.iter().map(|h| h.epoch as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                history.iter().map(|h| h.train_loss),
            )),
            Arc::new(Float64Array::from_iter_values(
                // `fit` measures val every epoch.
                history.iter().map(|h| h.val_accuracy.unwrap_or(f64::NAN)),
            )),
            Arc::new(Float64Array::from_iter_values(history.iter().map(|h| h.lr))),
        ],
    )?;
    graft_store::table::write_parquet(path, schema, &[batch], &BTreeMap::new())?;
    Ok(())
}
