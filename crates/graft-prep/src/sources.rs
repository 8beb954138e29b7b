//! Turning a data set on disk (DTD, an image folder) or a procedural task into a [`Plan`]:
//! the classes and, per split, the samples in order. Nothing is decoded here.

use std::fs;
use std::path::{Path, PathBuf};

use crate::PrepError;
use crate::procedural::Pattern;

/// Where one sample's pixels come from.
#[derive(Debug, Clone)]
pub enum Pixels {
    File(PathBuf),
    Procedural {
        task: String,
        seed: u64,
        index: usize,
        pattern: Pattern,
        render_size: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub label: i32,
    pub pixels: Pixels,
}

#[derive(Debug, Clone)]
pub struct SplitPlan {
    pub name: &'static str,
    pub samples: Vec<Sample>,
}

/// Classes (label = index) and the samples of each split.
#[derive(Debug, Clone)]
pub struct Plan {
    pub classes: Vec<String>,
    pub splits: Vec<SplitPlan>,
    /// Files whose content defines the plan besides the images (DTD label files).
    pub index_files: Vec<PathBuf>,
}

/// The procedural task `task` with `counts` = (train, val, test) images.
pub fn procedural(task: &str, seed: u64, counts: [usize; 3], render_size: u32) -> Plan {
    let classes = crate::procedural::task(task).unwrap_or(&[]);
    let splits = ["train", "val", "test"]
        .into_iter()
        .zip(counts)
        .map(|(name, n)| SplitPlan {
            name,
            samples: (0..n)
                .map(|index| {
                    let label = index % classes.len();
                    Sample {
                        id: format!("{name}/{index:06}"),
                        label: label as i32,
                        pixels: Pixels::Procedural {
                            task: format!("{task}/{name}"),
                            seed,
                            index,
                            pattern: classes[label].pattern,
                            render_size,
                        },
                    }
                })
                .collect(),
        })
        .collect();
    Plan {
        classes: classes.iter().map(|c| c.name.to_owned()).collect(),
        splits,
        index_files: Vec::new(),
    }
}

/// Finds the DTD root (`images/` and `labels/` inside) at `path` or at `path/dtd`.
pub fn dtd_root(path: &Path) -> Result<PathBuf, PrepError> {
    for root in [path.to_path_buf(), path.join("dtd")] {
        if root.join("images").is_dir() && root.join("labels").is_dir() {
            return Ok(root);
        }
    }
    Err(PrepError::DtdMissing {
        path: path.to_path_buf(),
    })
}

/// DTD's VTAB-1k split: the first `train` lines of `train{fold}.txt`, the first `val` of
/// `val{fold}.txt`, and the first `test` (or all) of `test{fold}.txt`. Classes are the
/// directories of `images/`, sorted by name.
pub fn dtd(path: &Path, fold: u32, counts: [Option<usize>; 3]) -> Result<Plan, PrepError> {
    let root = dtd_root(path)?;
    let images = root.join("images");
    let classes = subdirs(&images)?;
    if classes.is_empty() {
        return Err(PrepError::Layout {
            path: images,
            message: "no class directories".into(),
        });
    }
    let mut splits = Vec::new();
    let mut index_files = Vec::new();
    for (name, n) in ["train", "val", "test"].into_iter().zip(counts) {
        let label_path = root.join("labels").join(format!("{name}{fold}.txt"));
        let text = fs::read_to_string(&label_path).map_err(PrepError::io(&label_path))?;
        let lines: Vec<(usize, &str)> = text
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim()))
            .filter(|(_, l)| !l.is_empty())
            .collect();
        let take = n.unwrap_or(lines.len());
        if lines.len() < take {
            return Err(PrepError::Layout {
                path: label_path,
                message: format!(
                    "has {} entries; params.{name} asks for the first {take}",
                    lines.len()
                ),
            });
        }
        let mut samples = Vec::with_capacity(take);
        for &(line, entry) in &lines[..take] {
            let bad = |message: String| PrepError::LabelLine {
                path: label_path.clone(),
                line,
                message,
            };
            let (class, file) = entry
                .split_once('/')
                .filter(|(c, f)| !c.is_empty() && !f.is_empty() && !f.contains('/'))
                .ok_or_else(|| bad(format!("expected `class/file.jpg`, found {entry:?}")))?;
            let label = classes.iter().position(|c| c == class).ok_or_else(|| {
                bad(format!(
                    "unknown class {class:?} (classes are the directories of {})",
                    images.display()
                ))
            })?;
            let file_path = images.join(class).join(file);
            if !file_path.is_file() {
                return Err(bad(format!("image {} does not exist", file_path.display())));
            }
            samples.push(Sample {
                id: entry.to_owned(),
                label: label as i32,
                pixels: Pixels::File(file_path),
            });
        }
        splits.push(SplitPlan { name, samples });
        index_files.push(label_path);
    }
    Ok(Plan {
        classes,
        splits,
        index_files,
    })
}

/// `<path>/<split>/<class>/*.{jpg,jpeg,png}`; `train` is required, `val` and `test` are
/// optional. Classes come from `train`, sorted; files are taken in name order, the first N
/// when a count is given.
pub fn image_folder(path: &Path, counts: [Option<usize>; 3]) -> Result<Plan, PrepError> {
    let train = path.join("train");
    if !train.is_dir() {
        return Err(PrepError::Layout {
            path: path.to_path_buf(),
            message: "expected <split>/<class>/*.jpg|png with at least a train/ directory".into(),
        });
    }
    let classes = subdirs(&train)?;
    if classes.is_empty() {
        return Err(PrepError::Layout {
            path: train,
            message: "no class directories".into(),
        });
    }
    let mut splits = Vec::new();
    for (name, n) in ["train", "val", "test"].into_iter().zip(counts) {
        let dir = path.join(name);
        if !dir.is_dir() {
            continue;
        }
        for class in subdirs(&dir)? {
            if !classes.contains(&class) {
                return Err(PrepError::Layout {
                    path: dir.join(&class),
                    message: format!("class {class:?} is not a class of train/"),
                });
            }
        }
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let cdir = dir.join(class);
            if !cdir.is_dir() {
                continue;
            }
            let mut files: Vec<String> = fs::read_dir(&cdir)
                .map_err(PrepError::io(&cdir))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    let l = n.to_ascii_lowercase();
                    l.ends_with(".jpg") || l.ends_with(".jpeg") || l.ends_with(".png")
                })
                .collect();
            files.sort();
            for f in files {
                samples.push(Sample {
                    id: format!("{class}/{f}"),
                    label: label as i32,
                    pixels: Pixels::File(cdir.join(&f)),
                });
            }
        }
        if let Some(n) = n {
            samples.truncate(n);
        }
        splits.push(SplitPlan { name, samples });
    }
    Ok(Plan {
        classes,
        splits,
        index_files: Vec::new(),
    })
}

fn subdirs(dir: &Path) -> Result<Vec<String>, PrepError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(PrepError::io(dir))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}
