//! The dataset-prep stage: DTD as distributed, one VTAB-1k task in the PETL code bases'
//! list-file format, a generic image folder, or a procedural texture task, turned into one
//! Parquet table per split.
//!
//! Principal types: [`PrepParams`] (the stage's parameters), [`sources::Plan`] (which
//! samples go where, decided before any pixel is read), and [`Prep`], the [`Stage`] that
//! decodes or draws every image in parallel (rayon), resizes it with the `image` crate and
//! writes the tables.
//!
//! The tables (`train.parquet`, `val.parquet`, `test.parquet`) and `dataset.json` are
//! defined in `graft_tables` (`split_schema`, `DatasetInfo`), which the stages that read
//! them use too. `dataset.json` records the classes, the split sizes, the preprocessing
//! (size, interpolation, mean, std) that later stages apply and, for data read from disk,
//! the `draw`: its seed and, per split, the list it came from, how many that list holds and
//! the ids chosen.

mod error;
mod params;
pub mod procedural;
pub mod sources;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use graft_stage::{BoxError, Stage};
use graft_store::key::{Fingerprint, hash_file};
use graft_store::{ArtifactId, Publisher};
use graft_tables::{DatasetInfo, Draw, DrawSplit, Preprocessing, SplitColumns};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::{Value, json};

pub use error::PrepError;
pub use params::{Interpolation, PrepParams, SourceKind};
use sources::{Pixels, Plan};

/// Name of the environment variable that locates DTD when `path` is not given.
pub const DTD_DIR_ENV: &str = "DTD_DIR";
/// Name of the environment variable that locates the VTAB-1k task folders when `path` is
/// not given.
pub const VTAB_DIR_ENV: &str = "VTAB_DIR";

/// The stage.
pub struct Prep;

impl Stage for Prep {
    const NAME: &'static str = "prep";
    const VERSION: u32 = 1;
    type Params = PrepParams;

    fn input_names(_: &PrepParams) -> Vec<String> {
        Vec::new()
    }

    /// Besides the parameters, checks that the data is where they say (a directory lookup,
    /// nothing read), so a pipeline without its data fails at `--check`, before any stage
    /// runs, saying what is missing and where it goes.
    fn validate(params: PrepParams) -> Result<PrepParams, BoxError> {
        let params = params.normalize()?;
        data_present(&params)?;
        Ok(params)
    }

    fn location_params() -> &'static [&'static str] {
        &["path"]
    }

    /// A VTAB-1k task's name says where its lists are; what they hold enters the key.
    fn location_params_of(params: &PrepParams) -> Vec<&'static str> {
        match params.source {
            SourceKind::Vtab1k => vec!["path", "task"],
            _ => vec!["path"],
        }
    }

    fn fingerprints(params: &PrepParams) -> Result<BTreeMap<String, ArtifactId>, BoxError> {
        if params.source == SourceKind::Procedural {
            return Ok(BTreeMap::new());
        }
        let plan = plan(params)?;
        Ok([("source".to_owned(), fingerprint(&plan)?)].into())
    }

    fn run(
        params: &PrepParams,
        _inputs: &BTreeMap<String, graft_store::Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        let plan = plan(params)?;
        Ok(write_dataset(&plan, params, out.dir())?)
    }
}

/// The data set's directory for DTD or an image folder.
fn location(params: &PrepParams) -> Result<PathBuf, PrepError> {
    match (&params.path, params.source) {
        (Some(p), _) => Ok(PathBuf::from(p)),
        (None, SourceKind::Dtd) => std::env::var_os(DTD_DIR_ENV)
            .map(PathBuf::from)
            .ok_or(PrepError::DtdUnset),
        (None, SourceKind::Vtab1k) => std::env::var_os(VTAB_DIR_ENV)
            .map(PathBuf::from)
            .ok_or(PrepError::VtabUnset),
        (None, _) => Err(PrepError::Layout {
            path: PathBuf::new(),
            message: "params.path is required".into(),
        }),
    }
}

/// Decides the samples of every split (normalised parameters).
pub fn plan(params: &PrepParams) -> Result<Plan, PrepError> {
    let counts = [params.train, params.val, params.test];
    let seed = params.seed.unwrap_or(0);
    match params.source {
        SourceKind::Procedural => Ok(sources::procedural(
            params.task.as_deref().unwrap_or("textures"),
            params.seed.unwrap_or(0),
            counts.map(|c| c.unwrap_or(0)),
            params.render_size.unwrap_or(2 * params.image_size),
        )),
        SourceKind::Dtd => sources::dtd(&location(params)?, params.fold.unwrap_or(1), counts, seed),
        SourceKind::Vtab1k => sources::vtab(
            &location(params)?,
            params.task.as_deref().unwrap_or_default(),
            counts,
            seed,
        ),
        SourceKind::ImageFolder => sources::image_folder(&location(params)?, counts, seed),
    }
}

/// Whether the data the parameters name is on disk (directories and list files only).
pub fn data_present(params: &PrepParams) -> Result<(), PrepError> {
    match params.source {
        SourceKind::Procedural => Ok(()),
        SourceKind::Dtd => sources::dtd_root(&location(params)?).map(drop),
        SourceKind::Vtab1k => sources::vtab_present(
            &location(params)?,
            params.task.as_deref().unwrap_or_default(),
        )
        .map(drop),
        SourceKind::ImageFolder => {
            let path = location(params)?;
            if path.join("train").is_dir() {
                Ok(())
            } else {
                Err(PrepError::Layout {
                    path,
                    message: "expected <split>/<class>/*.jpg|png with at least a train/ directory"
                        .into(),
                })
            }
        }
    }
}

#[cfg(test)]
mod fingerprint_tests;

/// Content fingerprint of the files a plan reads: its index files, every sample's id,
/// label and file content hash, and the class names. Paths on this machine do not enter.
pub fn fingerprint(plan: &Plan) -> Result<ArtifactId, PrepError> {
    let mut fp = Fingerprint::new(b"graft-prep-source-v1");
    for c in &plan.classes {
        fp.part(c);
    }
    for f in &plan.index_files {
        fp.file(f)?;
    }
    for split in &plan.splits {
        fp.part(split.name);
        let hashes: Vec<[u8; 32]> = split
            .samples
            .par_iter()
            .map(|s| match &s.pixels {
                Pixels::File(p) => Ok(*hash_file(p)?.as_bytes()),
                Pixels::Procedural { .. } => Ok([0; 32]),
            })
            .collect::<Result<_, PrepError>>()?;
        for (s, fh) in split.samples.iter().zip(hashes) {
            fp.part(&s.id).raw(s.label.to_le_bytes()).raw(fh);
        }
    }
    Ok(fp.finish())
}

/// Decodes (or draws) and resizes every image of `plan` and writes the split tables and
/// `dataset.json` into `dir`. Returns the manifest extras.
pub fn write_dataset(
    plan: &Plan,
    params: &PrepParams,
    dir: &Path,
) -> Result<BTreeMap<String, Value>, PrepError> {
    let size = params.image_size;
    let total: usize = plan.splits.iter().map(|s| s.samples.len()).sum();
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("prep {bar:30} {pos}/{len} images {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut counts = BTreeMap::new();
    for split in &plan.splits {
        let pixels: Vec<Vec<u8>> = split
            .samples
            .par_iter()
            .map(|s| {
                let img = load(&s.pixels, size, params.interpolation).map_err(|e| {
                    match (&s.origin, e) {
                        // A listed image that does not decode: name the list and line too.
                        (Some((list, line)), PrepError::Decode { path, message }) => {
                            PrepError::LabelLine {
                                path: list.clone(),
                                line: *line,
                                message: format!(
                                    "image {}: cannot decode image: {message}",
                                    path.display()
                                ),
                            }
                        }
                        (_, e) => e,
                    }
                });
                bar.inc(1);
                img
            })
            .collect::<Result<_, _>>()?;
        let ids: Vec<&str> = split.samples.iter().map(|s| s.id.as_str()).collect();
        let labels: Vec<i32> = split.samples.iter().map(|s| s.label).collect();
        let names: Vec<&str> = split
            .samples
            .iter()
            .map(|s| plan.classes[s.label as usize].as_str())
            .collect();
        let images: Vec<&[u8]> = pixels.iter().map(Vec::as_slice).collect();
        let path = dir.join(graft_tables::split_file(split.name));
        let columns = SplitColumns {
            ids,
            labels,
            label_names: names,
            images,
        };
        graft_tables::write_split(&path, columns, size as usize)?;
        counts.insert(split.name.to_owned(), split.samples.len() as u64);
    }
    bar.finish_and_clear();

    let preprocessing = Preprocessing {
        image_size: size as usize,
        channels: 3,
        layout: "HWC".into(),
        dtype: "uint8".into(),
        interpolation: serde_name(&params.interpolation),
        mean: params.mean,
        std: params.std,
    };
    // A VTAB-1k task's name is not part of the key, so it is not part of the artifact.
    let task = match params.source {
        SourceKind::Vtab1k => None,
        _ => params.task.clone(),
    };
    let draw = (!plan.draws.is_empty()).then(|| Draw {
        method: "class-stratified".into(),
        seed: params.seed,
        splits: plan
            .draws
            .iter()
            .map(|d| {
                let split = plan.splits.iter().find(|s| s.name == d.split);
                let chosen = split
                    .map(|s| s.samples.iter().map(|x| x.id.clone()).collect())
                    .unwrap_or_default();
                let entry = DrawSplit {
                    from: d.from.clone(),
                    listed: d.listed as u64,
                    chosen,
                };
                (d.split.to_owned(), entry)
            })
            .collect(),
    });
    let description = DatasetInfo {
        source: serde_name(&params.source),
        task,
        classes: plan.classes.clone(),
        splits: counts.clone(),
        preprocessing: preprocessing.clone(),
        draw,
    };
    description.write(dir)?;
    Ok([
        ("preprocessing".to_owned(), json!(preprocessing)),
        ("classes".to_owned(), json!(plan.classes.len())),
        ("splits".to_owned(), json!(counts)),
    ]
    .into())
}

/// The name serde gives a unit variant (`bilinear`, `vtab-1k`), as `dataset.json` records it.
fn serde_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// One image as `size * size * 3` RGB bytes.
fn load(pixels: &Pixels, size: u32, interpolation: Interpolation) -> Result<Vec<u8>, PrepError> {
    let img = match pixels {
        Pixels::File(path) => {
            let decode_err = |message: String| PrepError::Decode {
                path: path.clone(),
                message,
            };
            image::ImageReader::open(path)
                .map_err(PrepError::io(path))?
                .with_guessed_format()
                .map_err(PrepError::io(path))?
                .decode()
                .map_err(|e| decode_err(e.to_string()))?
                .to_rgb8()
        }
        Pixels::Procedural {
            task,
            seed,
            index,
            look,
            render_size,
        } => {
            let mut rng = procedural::image_rng(task, "", *seed, *index);
            procedural::render(*look, *render_size, &mut rng)
        }
    };
    let resized = if img.width() == size && img.height() == size {
        img
    } else {
        image::imageops::resize(&img, size, size, interpolation.filter())
    };
    Ok(resized.into_raw())
}
