//! Turning a data set on disk (DTD, VTAB-1k's list files, an image folder) or a procedural
//! task into a [`Plan`]: the classes and, per split, the samples in order. Nothing is
//! decoded here.
//!
//! Where a split is cut down to a count (DTD's 800 of `train1.txt`, an image folder's
//! `train = N`), the cut is [`stratified_draw`]: seeded, as equal per class as the counts
//! allow, never a prefix. DTD's label files list their images class by class, so a prefix
//! would be the first classes only.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::PrepError;
use crate::procedural::Look;

/// Where one sample's pixels come from.
#[derive(Debug, Clone)]
pub enum Pixels {
    File(PathBuf),
    Procedural {
        task: String,
        seed: u64,
        index: usize,
        look: Look,
        render_size: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub label: i32,
    pub pixels: Pixels,
    /// The list file and line that named the sample, for errors.
    pub origin: Option<(PathBuf, usize)>,
}

#[derive(Debug, Clone)]
pub struct SplitPlan {
    pub name: &'static str,
    pub samples: Vec<Sample>,
}

/// How a split's samples were chosen from what its source lists.
#[derive(Debug, Clone, PartialEq)]
pub struct Draw {
    pub split: &'static str,
    /// The list the split was drawn from (`labels/train1.txt`, `train800.txt`, `train/`).
    pub from: String,
    /// Samples the list holds.
    pub listed: usize,
    /// Samples kept; all of them when equal to `listed`.
    pub chosen: usize,
}

/// Classes (label = index) and the samples of each split.
#[derive(Debug, Clone)]
pub struct Plan {
    pub classes: Vec<String>,
    pub splits: Vec<SplitPlan>,
    /// Files whose content defines the plan besides the images (label and list files).
    pub index_files: Vec<PathBuf>,
    /// Per split, how it was drawn (empty for procedural data).
    pub draws: Vec<Draw>,
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
                            look: classes[label].look,
                            render_size,
                        },
                        origin: None,
                    }
                })
                .collect(),
        })
        .collect();
    Plan {
        classes: classes.iter().map(|c| c.name.to_owned()).collect(),
        splits,
        index_files: Vec::new(),
        draws: Vec::new(),
    }
}

/// Positions (ascending) of a class-stratified, seeded draw of `n` out of the samples with
/// labels `labels` (each below `classes`); all of them when `n >= labels.len()`.
///
/// Every class gets `n / k` samples, k the classes that have any, and the remainder goes
/// one each to classes drawn by the seed; a class with fewer samples than its share gives
/// them all and its shortfall is spread over the others the same way. Within a class the
/// samples kept are a seeded shuffle's first. `stream` (the split's name) makes the draws
/// of two splits independent under one seed.
pub fn stratified_draw(
    labels: &[usize],
    classes: usize,
    n: usize,
    seed: u64,
    stream: &str,
) -> Vec<usize> {
    if n >= labels.len() {
        return (0..labels.len()).collect();
    }
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (pos, &label) in labels.iter().enumerate() {
        by_class[label].push(pos);
    }
    let mut rng = draw_rng(seed, stream);
    let mut quota = vec![0usize; classes];
    let mut left = n;
    loop {
        let open: Vec<usize> = (0..classes)
            .filter(|&c| quota[c] < by_class[c].len())
            .collect();
        if open.is_empty() || left == 0 {
            break;
        }
        let share = left / open.len();
        if share == 0 {
            // Fewer left than open classes: one more each to `left` classes drawn by the seed.
            let mut lucky = open;
            lucky.shuffle(&mut rng);
            for &c in &lucky[..left] {
                quota[c] += 1;
            }
            break;
        }
        for &c in &open {
            let give = share.min(by_class[c].len() - quota[c]);
            quota[c] += give;
            left -= give;
        }
    }
    let mut chosen = Vec::with_capacity(n);
    for (members, &q) in by_class.iter_mut().zip(&quota) {
        members.shuffle(&mut rng);
        chosen.extend_from_slice(&members[..q]);
    }
    chosen.sort_unstable();
    chosen
}

fn draw_rng(seed: u64, stream: &str) -> ChaCha8Rng {
    let mut h = blake3::Hasher::new();
    h.update(b"graft-prep-draw-v1");
    h.update(&(stream.len() as u64).to_le_bytes());
    h.update(stream.as_bytes());
    h.update(&seed.to_le_bytes());
    ChaCha8Rng::from_seed(*h.finalize().as_bytes())
}

/// `samples` cut down to `n` by [`stratified_draw`] (`None`: all), with the draw's record.
fn draw_split(
    name: &'static str,
    from: String,
    samples: Vec<Sample>,
    classes: usize,
    n: Option<usize>,
    seed: u64,
) -> (SplitPlan, Draw) {
    let listed = samples.len();
    let samples = match n {
        Some(n) if n < listed => {
            let labels: Vec<usize> = samples.iter().map(|s| s.label as usize).collect();
            let keep = stratified_draw(&labels, classes, n, seed, name);
            let mut samples: Vec<Option<Sample>> = samples.into_iter().map(Some).collect();
            keep.into_iter().filter_map(|k| samples[k].take()).collect()
        }
        _ => samples,
    };
    let draw = Draw {
        split: name,
        from,
        listed,
        chosen: samples.len(),
    };
    (SplitPlan { name, samples }, draw)
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

/// DTD as distributed, cut to a VTAB-1k-sized split: a class-stratified, seeded draw of
/// `train` images from `train{fold}.txt` and `val` from `val{fold}.txt`, and `test` (or
/// all) of `test{fold}.txt`. Classes are the directories of `images/`, sorted by name.
pub fn dtd(
    path: &Path,
    fold: u32,
    counts: [Option<usize>; 3],
    seed: u64,
) -> Result<Plan, PrepError> {
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
    let mut draws = Vec::new();
    let mut index_files = Vec::new();
    for (name, n) in ["train", "val", "test"].into_iter().zip(counts) {
        let file = format!("{name}{fold}.txt");
        let label_path = root.join("labels").join(&file);
        let text = fs::read_to_string(&label_path).map_err(PrepError::io(&label_path))?;
        let mut samples = Vec::new();
        for (line, entry) in numbered_lines(&text) {
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
                origin: Some((label_path.clone(), line)),
            });
        }
        if let Some(n) = n
            && samples.len() < n
        {
            return Err(PrepError::Layout {
                path: label_path,
                message: format!("has {} entries; params.{name} asks for {n}", samples.len()),
            });
        }
        if samples.is_empty() {
            return Err(PrepError::Layout {
                path: label_path,
                message: "lists no images".into(),
            });
        }
        let (split, draw) = draw_split(
            name,
            format!("labels/{file}"),
            samples,
            classes.len(),
            n,
            seed,
        );
        splits.push(split);
        draws.push(draw);
        index_files.push(label_path);
    }
    Ok(Plan {
        classes,
        splits,
        index_files,
        draws,
    })
}

/// The 19 VTAB-1k tasks and their class counts, as the PETL code bases read them.
pub const VTAB_TASKS: [(&str, usize); 19] = [
    ("caltech101", 102),
    ("cifar", 100),
    ("dtd", 47),
    ("oxford_flowers102", 102),
    ("oxford_iiit_pet", 37),
    ("svhn", 10),
    ("sun397", 397),
    ("patch_camelyon", 2),
    ("eurosat", 10),
    ("resisc45", 45),
    ("diabetic_retinopathy", 5),
    ("clevr_count", 8),
    ("clevr_dist", 6),
    ("dmlab", 6),
    ("kitti", 4),
    ("dsprites_loc", 16),
    ("dsprites_ori", 16),
    ("smallnorb_azi", 18),
    ("smallnorb_ele", 9),
];

/// The list files of a VTAB-1k task folder, in the order the splits take them.
pub const VTAB_LISTS: [&str; 4] = [
    "train800.txt",
    "val200.txt",
    "train800val200.txt",
    "test.txt",
];

/// Optional class names of a VTAB-1k task folder: line k names label k.
pub const VTAB_CLASSES: &str = "classes.txt";

/// Checks that `<path>/<task>` looks like a VTAB-1k task folder (every list file there)
/// without reading anything: what `--check` can say before a pipeline runs.
pub fn vtab_present(path: &Path, task: &str) -> Result<PathBuf, PrepError> {
    let dir = path.join(task);
    if !dir.is_dir() {
        return Err(PrepError::VtabMissing {
            path: path.to_path_buf(),
            task: task.to_owned(),
        });
    }
    for list in VTAB_LISTS {
        if !dir.join(list).is_file() {
            return Err(PrepError::Layout {
                path: dir.join(list),
                message: format!(
                    "missing: a VTAB-1k task folder holds {} (lines `<image path> <label>`)",
                    VTAB_LISTS.join(", ")
                ),
            });
        }
    }
    Ok(dir)
}

/// A VTAB-1k task as the PETL code bases read it: `<path>/<task>/{train800,val200,
/// train800val200,test}.txt`, each line `<image path relative to the task folder> <label>`.
/// `train800.txt` is the train split, `val200.txt` the val split, `test.txt` the test split;
/// `train800val200.txt` must list exactly the other two together (the final protocol trains
/// on train + val). Class names come from `classes.txt` when present; the class count from
/// it, else from [`VTAB_TASKS`], else from the largest label. `counts` cut a split by a
/// stratified draw; `None` keeps all.
pub fn vtab(
    path: &Path,
    task: &str,
    counts: [Option<usize>; 3],
    seed: u64,
) -> Result<Plan, PrepError> {
    let dir = vtab_present(path, task)?;
    let mut lists: BTreeMap<&str, Vec<(usize, String, i64)>> = BTreeMap::new();
    let mut index_files = Vec::new();
    for list in VTAB_LISTS {
        let file = dir.join(list);
        let text = fs::read_to_string(&file).map_err(PrepError::io(&file))?;
        let mut rows = Vec::new();
        for (line, entry) in numbered_lines(&text) {
            let bad = |message: String| PrepError::LabelLine {
                path: file.clone(),
                line,
                message,
            };
            let (image, label) = entry
                .rsplit_once(char::is_whitespace)
                .map(|(i, l)| (i.trim_end(), l))
                .filter(|(i, _)| !i.is_empty())
                .ok_or_else(|| bad(format!("expected `<image path> <label>`, found {entry:?}")))?;
            let label: i64 = label
                .parse()
                .map_err(|_| bad(format!("label {label:?} is not an integer")))?;
            let rel = Path::new(image);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(bad(format!(
                    "image path {image:?} must be relative to {} and stay inside it",
                    dir.display()
                )));
            }
            if !dir.join(rel).is_file() {
                return Err(bad(format!(
                    "image {} does not exist",
                    dir.join(rel).display()
                )));
            }
            rows.push((line, image.to_owned(), label));
        }
        if rows.is_empty() {
            return Err(PrepError::Layout {
                path: file,
                message: "lists no images (an empty split)".into(),
            });
        }
        lists.insert(list, rows);
        index_files.push(file);
    }

    // Classes: classes.txt, else the task's known count, else the largest label.
    let names_path = dir.join(VTAB_CLASSES);
    let (classes, counted_by): (Vec<String>, String) = if names_path.is_file() {
        let text = fs::read_to_string(&names_path).map_err(PrepError::io(&names_path))?;
        let names: Vec<String> = numbered_lines(&text).map(|(_, l)| l.to_owned()).collect();
        if names.is_empty() {
            return Err(PrepError::Layout {
                path: names_path,
                message: "names no classes (one name per line, line k naming label k)".into(),
            });
        }
        index_files.push(names_path.clone());
        let why = format!("{} names {} classes", names_path.display(), names.len());
        (names, why)
    } else {
        let known = VTAB_TASKS.iter().find(|(t, _)| *t == task).map(|&(_, k)| k);
        let largest = lists
            .values()
            .flatten()
            .map(|r| r.2.max(0) as usize + 1)
            .max();
        let k = known.or(largest).unwrap_or(0);
        let why = match known {
            Some(k) => format!("VTAB-1k's {task} has {k} classes"),
            None => format!(
                "{task} is not a VTAB-1k task and has no {VTAB_CLASSES}: {k} classes from the largest label"
            ),
        };
        ((0..k).map(|c| format!("class-{c}")).collect(), why)
    };
    for list in VTAB_LISTS {
        for (line, image, label) in &lists[list] {
            if *label < 0 || *label as usize >= classes.len() {
                return Err(PrepError::LabelLine {
                    path: dir.join(list),
                    line: *line,
                    message: format!(
                        "label {label} of {image} is outside 0..{} ({counted_by})",
                        classes.len()
                    ),
                });
            }
        }
    }

    // train800val200 is train800 and val200 together.
    let mut union: Vec<(&str, i64)> = lists["train800.txt"]
        .iter()
        .chain(&lists["val200.txt"])
        .map(|(_, i, l)| (i.as_str(), *l))
        .collect();
    let mut both: Vec<(&str, i64)> = lists["train800val200.txt"]
        .iter()
        .map(|(_, i, l)| (i.as_str(), *l))
        .collect();
    union.sort_unstable();
    both.sort_unstable();
    if union != both {
        let extra = lists["train800val200.txt"]
            .iter()
            .find(|(_, i, l)| union.binary_search(&(i.as_str(), *l)).is_err());
        let message = match extra {
            Some((line, image, label)) => format!(
                "line {line} ({image} {label}) is in neither train800.txt nor val200.txt; \
                 train800val200.txt must list exactly their images"
            ),
            None => format!(
                "lists {} images but train800.txt and val200.txt list {} together; \
                 train800val200.txt must list exactly their images",
                both.len(),
                union.len()
            ),
        };
        return Err(PrepError::Layout {
            path: dir.join("train800val200.txt"),
            message,
        });
    }

    let mut splits = Vec::new();
    let mut draws = Vec::new();
    for ((name, list), n) in [
        ("train", "train800.txt"),
        ("val", "val200.txt"),
        ("test", "test.txt"),
    ]
    .into_iter()
    .zip(counts)
    {
        let rows = &lists[list];
        if let Some(n) = n
            && rows.len() < n
        {
            return Err(PrepError::Layout {
                path: dir.join(list),
                message: format!("has {} entries; params.{name} asks for {n}", rows.len()),
            });
        }
        let samples = rows
            .iter()
            .map(|(line, image, label)| Sample {
                id: image.clone(),
                label: *label as i32,
                pixels: Pixels::File(dir.join(image)),
                origin: Some((dir.join(list), *line)),
            })
            .collect();
        let (split, draw) = draw_split(name, list.to_owned(), samples, classes.len(), n, seed);
        splits.push(split);
        draws.push(draw);
    }
    Ok(Plan {
        classes,
        splits,
        index_files,
        draws,
    })
}

/// `<path>/<split>/<class>/*.{jpg,jpeg,png}`; `train` is required and must hold at least
/// two classes, none of them empty; `val` and `test` are optional. Classes come from
/// `train`, sorted. A count cuts a split by a stratified, seeded draw.
pub fn image_folder(path: &Path, counts: [Option<usize>; 3], seed: u64) -> Result<Plan, PrepError> {
    let train = path.join("train");
    if !train.is_dir() {
        return Err(PrepError::Layout {
            path: path.to_path_buf(),
            message: "expected <split>/<class>/*.jpg|png with at least a train/ directory".into(),
        });
    }
    let classes = subdirs(&train)?;
    if classes.len() < 2 {
        return Err(PrepError::Layout {
            path: train,
            message: match classes.first() {
                None => "no class directories; a classifier needs at least two".into(),
                Some(c) => format!("only one class ({c:?}); a classifier needs at least two"),
            },
        });
    }
    let mut splits = Vec::new();
    let mut draws = Vec::new();
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
            if files.is_empty() && name == "train" {
                return Err(PrepError::Layout {
                    path: cdir,
                    message: format!("class {class:?} has no images (.jpg, .jpeg, .png)"),
                });
            }
            files.sort();
            for f in files {
                samples.push(Sample {
                    id: format!("{class}/{f}"),
                    label: label as i32,
                    pixels: Pixels::File(cdir.join(&f)),
                    origin: None,
                });
            }
        }
        let (split, draw) = draw_split(name, format!("{name}/"), samples, classes.len(), n, seed);
        splits.push(split);
        draws.push(draw);
    }
    Ok(Plan {
        classes,
        splits,
        index_files: Vec::new(),
        draws,
    })
}

/// Non-empty lines, trimmed, with their 1-based numbers.
fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn per_class(labels: &[usize], chosen: &[usize], classes: usize) -> Vec<usize> {
        let mut n = vec![0; classes];
        for &k in chosen {
            n[labels[k]] += 1;
        }
        n
    }

    #[test]
    fn draw_is_as_equal_per_class_as_the_counts_allow() {
        // Listed class by class, as DTD's label files are: 47 classes x 40.
        let labels: Vec<usize> = (0..47).flat_map(|c| [c; 40]).collect();
        let chosen = stratified_draw(&labels, 47, 800, 0, "train");
        assert_eq!(chosen.len(), 800);
        assert!(
            chosen.windows(2).all(|w| w[0] < w[1]),
            "ascending, no repeats"
        );
        let n = per_class(&labels, &chosen, 47);
        // 800 = 47 * 17 + 1: every class 17, one class 18.
        assert!(n.iter().all(|&k| k == 17 || k == 18), "{n:?}");
        assert_eq!(n.iter().filter(|&&k| k == 18).count(), 1);
        assert_eq!(stratified_draw(&labels, 47, 800, 0, "train"), chosen);
        assert_ne!(stratified_draw(&labels, 47, 800, 1, "train"), chosen);
        assert_ne!(stratified_draw(&labels, 47, 800, 0, "val"), chosen);
    }

    #[test]
    fn a_short_class_gives_all_it_has_and_the_rest_fill_in() {
        // Class 0 has 2, class 1 has 10, class 2 has 10; 12 asked: 2 + 5 + 5.
        let labels: Vec<usize> = [vec![0; 2], vec![1; 10], vec![2; 10]].concat();
        let chosen = stratified_draw(&labels, 4, 12, 7, "train");
        assert_eq!(per_class(&labels, &chosen, 4), [2, 5, 5, 0]);
        // Asking for all (or more) keeps every sample in order.
        assert_eq!(
            stratified_draw(&labels, 4, 22, 7, "train"),
            (0..22).collect::<Vec<_>>()
        );
        assert_eq!(stratified_draw(&labels, 4, 99, 7, "train").len(), 22);
        assert!(stratified_draw(&labels, 4, 0, 7, "train").is_empty());
    }
}
