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
use graft_model::{Precision, Trainable, VitConfig};
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
    /// The least test accuracy (a fraction in [0, 1]) on the dataset's test split that the
    /// trained model must reach, or the stage fails and publishes nothing: a backbone that
    /// learnt too little is not worth adapting. Unset: no bar, and not in the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_test_accuracy: Option<f64>,
    /// `cpu`, `cuda` or `cuda:k`. Its class (`cpu`, `cuda`) enters the key: the CPU and a
    /// GPU compute other numbers; the index only says where it ran (a location).
    #[serde(default = "default_device")]
    pub device: String,
    /// What the products compute in (`graft_model::Precision`, autocast's semantics): `f32`
    /// (the default), `bf16`, or `fp16` (a CUDA device only, under a dynamic loss scale).
    /// The weights train and are saved in f32. In the key except at f32.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_preset() -> String {
    "vit-cpu-small".into()
}
fn default_device() -> String {
    "cpu".into()
}

/// The stage.
pub struct Pretrain;

/// What the stage binary says it does (`--help`; also `graft-front`'s).
pub const ABOUT: &str = "Pretrain a small ViT preset from scratch on a dataset artifact";

impl Stage for Pretrain {
    const NAME: &'static str = "pretrain";
    /// 2: the training knobs are `graft_train::TrainProtocol`, whose `weight_decay`
    /// default is 1e-4 (it was 0.05 here); pipelines that relied on the default get a new
    /// key and say so.
    /// 3: the fused LayerNorm, softmax, attention and linear
    /// operations compute other roundings than the composed ones they replaced, and the tch
    /// build's CPU kernels are pinned to AVX2 (`graft_backend::numerics`).
    const VERSION: u32 = 3;
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
        if let Some(m) = p.min_test_accuracy
            && !(0.0..=1.0).contains(&m)
        {
            return Err(format!(
                "min_test_accuracy = {m} must be in [0, 1] (a fraction: 0.85 for 85 %)"
            )
            .into());
        }
        graft_backend::device(&p.device)?;
        graft_train::check_precision(p.precision, &p.device)?;
        Ok(p)
    }

    fn backend_decides(p: &PretrainParams) -> bool {
        graft_backend::backend_decides(&p.device)
    }

    fn before_work(p: &PretrainParams) -> Option<fn()> {
        graft_train::before_work(p.precision, &p.device)
    }

    fn location_params() -> &'static [&'static str] {
        &["device"]
    }

    fn device(p: &PretrainParams) -> Option<&str> {
        Some(&p.device)
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
        graft_backend::seed(&device, p.seed);
        let model = config
            .init(&device)
            .with_trainable(Trainable::Full)
            .with_precision(p.precision);
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
        check_accuracy(
            p,
            test_accuracy,
            result.best_val_accuracy,
            result.best_epoch,
        )?;
        graft_model::checkpoint::save_timm(&result.model, &out.file("model.safetensors"))?;
        write_history(&result.history, &out.file("history.parquet"))?;
        let summary = json!({
            "preset": p.preset,
            "classes": info.classes,
            "best_epoch": result.best_epoch,
            "val_accuracy": result.best_val_accuracy,
            "test_accuracy": test_accuracy,
            "backend": graft_backend::backend_name(),
            "device": graft_stage::device_class(&p.device),
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
            (
                "cpu_kernels".to_owned(),
                json!(graft_backend::numerics::record()),
            ),
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

/// `Err` with the whole message when `test_accuracy` is below `min_test_accuracy`;
/// `best_epoch` counts from 0, as `graft_train::FitResult` does.
fn check_accuracy(
    p: &PretrainParams,
    test_accuracy: f64,
    val_accuracy: f64,
    best_epoch: usize,
) -> Result<(), String> {
    match p.min_test_accuracy {
        Some(min) if test_accuracy < min || test_accuracy.is_nan() => Err(format!(
            "test accuracy {:.1} % is below min_test_accuracy = {min} after {} epoch{} (best val \
             {:.1} % at epoch {}): the backbone is not worth adapting; train longer \
             (epochs), on more data (the source prep stage's train), or with a different lr \
             (now {})",
            100.0 * test_accuracy,
            p.train.epochs,
            if p.train.epochs == 1 { "" } else { "s" },
            100.0 * val_accuracy,
            best_epoch + 1,
            p.train.lr
        )),
        _ => Ok(()),
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

#[cfg(all(test, feature = "tch", target_arch = "x86_64"))]
mod reproducible;

#[cfg(test)]
mod tests {
    use graft_store::{ArtifactId, KeyInput};

    use super::*;

    /// Runs stage `S` with `params` (JSON) and `inputs` on `store` in this process; the
    /// artifact's id.
    pub(crate) fn execute_stage<S: Stage>(
        store: &std::path::Path,
        params: Value,
        inputs: &[String],
    ) -> String {
        let args = graft_stage::StageArgs::run_json(store, &params, inputs);
        let outcome = graft_stage::execute::<S>(&args).unwrap();
        outcome.artifact.unwrap().to_string()
    }

    /// Issue 27 item 3: a few epochs of the tiny preset on a generated source task, whose
    /// artifact id (the blake3 of its files) is recorded per backend and CPU level with
    /// [`Pretrain::VERSION`] in `golden/canary.txt`. A change to the numbers without a bump
    /// fails here.
    #[test]
    fn canary() {
        if !graft_backend::canary::in_stage_environment("tests::canary") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let dataset = execute_stage::<graft_prep::Prep>(
            &store,
            json!({ "source": "procedural", "task": "source", "image_size": 16, "seed": 0,
                    "train": 128, "val": 32, "test": 32 }),
            &[],
        );
        let id = execute_stage::<Pretrain>(
            &store,
            json!({ "preset": "vit-cpu-tiny", "epochs": 2, "batch": 32, "lr": 0.002, "seed": 3 }),
            &[format!("dataset={dataset}")],
        );
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/canary.txt");
        graft_backend::canary::check(
            &golden,
            Pretrain::NAME,
            Pretrain::VERSION,
            &id,
            "Pretrain::VERSION",
        )
        .unwrap_or_else(|m| panic!("{m}"));
    }

    /// The key a pretrain stage gets for `params` (JSON) on a fixed input, computed as
    /// `graft_stage::execute` does: parse, validate (not a CUDA device, which this build may
    /// not have), serialise, drop the location params, add the device class.
    fn key_of(params: Value) -> String {
        key_of_at(params, Pretrain::VERSION)
    }

    /// [`key_of`] with the stage version `version`.
    fn key_of_at(params: Value, version: u32) -> String {
        let p: PretrainParams = serde_json::from_value(params).unwrap();
        let p = match p.device.as_str() {
            "cpu" => Pretrain::validate(p).unwrap(),
            _ => p,
        };
        let recorded = graft_stage::recorded_params::<Pretrain>(&p).unwrap();
        let canonical = graft_stage::key_params::<Pretrain>(&p, &recorded);
        let inputs = [(
            "dataset".to_owned(),
            ArtifactId::parse(&"ab".repeat(32)).unwrap(),
        )]
        .into();
        KeyInput {
            stage: Pretrain::NAME,
            stage_version: version,
            params: &canonical,
            inputs: &inputs,
        }
        .key()
        .as_str()
        .to_owned()
    }

    /// The keys of pipelines that do not set `min_test_accuracy` are the keys they had
    /// before it existed (recorded at the commit that added it): their backbones stay
    /// cached. They were recorded at stage version 2, so they are computed at it (version 3
    /// moved every key on purpose).
    #[test]
    fn keys_without_min_test_accuracy_did_not_move() {
        let key_of = |p| key_of_at(p, 2);
        let default = json!({
            "preset": "vit-cpu-small", "epochs": 7, "batch": 64, "lr": 0.002,
            "weight_decay": 0.05, "warmup_epochs": 1.0, "seed": 0
        });
        assert_eq!(
            key_of(default.clone()),
            "acd95988464e8ff32ff768779adc2b8f096adc764e95989988e4a6b6bff6c33c"
        );
        assert_eq!(
            key_of(json!({})),
            "819a791e467b3217babcda944be7ad568c93a270991dde18cbe3c2c2a453b529"
        );
        // Set, it is part of the key.
        let mut with = default;
        with["min_test_accuracy"] = json!(0.85);
        assert_ne!(
            key_of(with),
            "acd95988464e8ff32ff768779adc2b8f096adc764e95989988e4a6b6bff6c33c"
        );
    }

    /// The device's class is part of the key (issue 27): a CUDA backbone is not the CPU's.
    /// Its index is not, and `cpu` keeps the keys above.
    #[test]
    fn the_device_class_is_in_the_key_and_its_index_is_not() {
        let on = |device: &str| key_of(json!({ "seed": 1, "device": device }));
        assert_eq!(on("cpu"), key_of(json!({ "seed": 1 })));
        assert_ne!(on("cuda"), on("cpu"));
        assert_eq!(on("cuda:0"), on("cuda"));
        assert_eq!(on("cuda:1"), on("cuda:0"));
    }

    #[test]
    fn min_test_accuracy_must_be_a_fraction() {
        for bad in [json!(1.5), json!(-0.1), json!(85)] {
            let p: PretrainParams =
                serde_json::from_value(json!({ "min_test_accuracy": bad })).unwrap();
            let err = Pretrain::validate(p).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("min_test_accuracy = {bad} must be in [0, 1]")),
                "{err}"
            );
        }
        for good in [json!(0), json!(0.85), json!(1)] {
            let p: PretrainParams =
                serde_json::from_value(json!({ "min_test_accuracy": good })).unwrap();
            Pretrain::validate(p).unwrap();
        }
    }

    #[test]
    fn a_backbone_below_the_bar_is_refused_with_a_hint() {
        let p: PretrainParams = serde_json::from_value(json!({
            "epochs": 3, "lr": 0.002, "min_test_accuracy": 0.9
        }))
        .unwrap();
        let msg = check_accuracy(&p, 0.4231, 0.45, 1).unwrap_err();
        assert_eq!(
            msg,
            "test accuracy 42.3 % is below min_test_accuracy = 0.9 after 3 epochs (best val \
             45.0 % at epoch 2): the backbone is not worth adapting; train longer (epochs), on \
             more data (the source prep stage's train), or with a different lr (now 0.002)"
        );
        assert_eq!(check_accuracy(&p, 0.9, 0.9, 3), Ok(()));
        let unset: PretrainParams = serde_json::from_value(json!({})).unwrap();
        assert_eq!(check_accuracy(&unset, 0.0, 0.0, 1), Ok(()));
    }

    /// `precision` enters the key except at f32, and fp16 on the CPU is refused at the check.
    #[test]
    fn precision_enters_the_key_except_at_f32_and_fp16_needs_a_gpu() {
        let parse = |v: Value| Pretrain::validate(serde_json::from_value(v).unwrap());
        let plain = parse(json!({})).unwrap();
        assert!(
            serde_json::to_value(&plain)
                .unwrap()
                .get("precision")
                .is_none()
        );
        let bf16 = parse(json!({"precision": "bf16"})).unwrap();
        assert_eq!(serde_json::to_value(&bf16).unwrap()["precision"], "bf16");
        assert!(Pretrain::before_work(&bf16).is_some() && Pretrain::before_work(&plain).is_none());
        let e = parse(json!({"precision": "fp16"})).unwrap_err().to_string();
        assert!(
            e.contains("precision = \"fp16\"") && e.contains("CUDA"),
            "{e}"
        );
    }
}
