use serde::{Deserialize, Serialize};

/// Where the images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// Textures generated from a seed; no download.
    Procedural,
    /// The Describable Textures Dataset as distributed, cut to VTAB-1k's sizes by a
    /// class-stratified, seeded draw.
    Dtd,
    /// One task of VTAB-1k in the PETL code bases' format:
    /// `<path>/<task>/{train800,val200,train800val200,test}.txt`.
    #[serde(rename = "vtab-1k")]
    Vtab1k,
    /// `<path>/<split>/<class>/*.{jpg,jpeg,png}`.
    ImageFolder,
}

/// Resampling filter of the resize, from the `image` crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interpolation {
    Nearest,
    #[default]
    Bilinear,
    Bicubic,
    Lanczos3,
}

impl Interpolation {
    pub fn filter(self) -> image::imageops::FilterType {
        use image::imageops::FilterType;
        match self {
            Interpolation::Nearest => FilterType::Nearest,
            Interpolation::Bilinear => FilterType::Triangle,
            Interpolation::Bicubic => FilterType::CatmullRom,
            Interpolation::Lanczos3 => FilterType::Lanczos3,
        }
    }
}

/// Parameters of the prep stage. After [`PrepParams::normalize`] every field that applies
/// to the source is set and every other one is `None`, so writing a default explicitly
/// gives the same key as leaving it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepParams {
    pub source: SourceKind,
    /// Procedural: which generated task (`source`, `textures`, `colours`); VTAB-1k: the task folder
    /// (`dtd`, `cifar`, ...), which enters the key only through the content read from it.
    #[serde(default)]
    pub task: Option<String>,
    /// DTD (or `DTD_DIR`), VTAB-1k (or `VTAB_DIR`: the folder holding the task folders)
    /// and image-folder: the data set's directory. Not part of the key: the content of the
    /// files read is.
    #[serde(default)]
    pub path: Option<String>,
    /// Side of the square output images, in pixels.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    #[serde(default)]
    pub interpolation: Interpolation,
    /// Normalisation the model applies (recorded, not applied to the stored uint8 pixels).
    #[serde(default = "default_half")]
    pub mean: [f64; 3],
    #[serde(default = "default_half")]
    pub std: [f64; 3],
    /// Procedural: the generator's seed; DTD, VTAB-1k and image folders: the seed of the
    /// class-stratified draw that cuts a split to its count (default 0).
    #[serde(default)]
    pub seed: Option<u64>,
    /// Procedural: images to generate; DTD and image folders: a class-stratified, seeded
    /// draw of N (default 800 / 200 / all, VTAB-1k's sizes); VTAB-1k: all of each list
    /// unless set.
    #[serde(default)]
    pub train: Option<usize>,
    #[serde(default)]
    pub val: Option<usize>,
    #[serde(default)]
    pub test: Option<usize>,
    /// DTD only: which of the ten official splits (default 1).
    #[serde(default)]
    pub fold: Option<u32>,
    /// Procedural only: side at which textures are drawn before the resize (default 2 x image_size).
    #[serde(default)]
    pub render_size: Option<u32>,
}

fn default_image_size() -> u32 {
    32
}

fn default_half() -> [f64; 3] {
    [0.5, 0.5, 0.5]
}

pub const PROCEDURAL_DEFAULT_TEST: usize = 1000;

impl PrepParams {
    /// Fills source-specific defaults and rejects fields that do not apply.
    pub fn normalize(mut self) -> Result<Self, String> {
        if !(4..=1024).contains(&self.image_size) {
            return Err(format!(
                "image_size = {} is outside 4..=1024",
                self.image_size
            ));
        }
        if self.std.iter().any(|s| !(*s > 0.0)) {
            return Err(format!("std = {:?} must be positive", self.std));
        }
        let only = |field: &str, set: bool, source: &str| -> Result<(), String> {
            if set {
                Err(format!("{field} does not apply to source = \"{source}\""))
            } else {
                Ok(())
            }
        };
        if self.source != SourceKind::Vtab1k {
            self.train = Some(self.train.unwrap_or(800));
            self.val = Some(self.val.unwrap_or(200));
        }
        match self.source {
            SourceKind::Procedural => {
                only("path", self.path.is_some(), "procedural")?;
                only("fold", self.fold.is_some(), "procedural")?;
                let task = self.task.get_or_insert_with(|| "textures".to_owned());
                if crate::procedural::task(task).is_none() {
                    return Err(format!(
                        "task = {task:?} is not a procedural task (known: {})",
                        crate::procedural::TASKS.join(", ")
                    ));
                }
                self.seed.get_or_insert(0);
                self.test.get_or_insert(PROCEDURAL_DEFAULT_TEST);
                let render = *self.render_size.get_or_insert(2 * self.image_size);
                if !(4..=2048).contains(&render) {
                    return Err(format!("render_size = {render} is outside 4..=2048"));
                }
            }
            SourceKind::Vtab1k => {
                only("fold", self.fold.is_some(), "vtab-1k")?;
                only("render_size", self.render_size.is_some(), "vtab-1k")?;
                self.seed.get_or_insert(0);
                let Some(task) = &self.task else {
                    return Err(format!(
                        "task is required for source = \"vtab-1k\": the task folder's name \
                         (VTAB-1k's are {})",
                        crate::sources::VTAB_TASKS.map(|(t, _)| t).join(", ")
                    ));
                };
                if task.is_empty() || task.contains(['/', '\\']) || task == "." || task == ".." {
                    return Err(format!(
                        "task = {task:?} must be the name of a folder (no path separators)"
                    ));
                }
            }
            SourceKind::Dtd | SourceKind::ImageFolder => {
                let name = if self.source == SourceKind::Dtd {
                    "dtd"
                } else {
                    "image-folder"
                };
                only("task", self.task.is_some(), name)?;
                only("render_size", self.render_size.is_some(), name)?;
                self.seed.get_or_insert(0);
                if self.source == SourceKind::Dtd {
                    let fold = *self.fold.get_or_insert(1);
                    if !(1..=10).contains(&fold) {
                        return Err(format!("fold = {fold} is outside 1..=10"));
                    }
                } else {
                    only("fold", self.fold.is_some(), name)?;
                    if self.path.is_none() {
                        return Err("path is required for source = \"image-folder\"".to_owned());
                    }
                }
            }
        }
        Ok(self)
    }
}
