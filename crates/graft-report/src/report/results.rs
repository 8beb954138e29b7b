//! The results table the PETL literature prints for VTAB-1k (NOAH, SSF, GPS, V-PETL): one
//! row per method, one column per task (mean ± std over seeds), the Natural, Specialized and
//! Structured means, the mean over the groups, and the trainable parameters in millions.
//! [`results_table`] computes it as a [`ResultsTable`]; the `render` module writes it as
//! `results.md`, `results.csv`, `results.tex` and a section of `report.html`.
//!
//! Rows: full fine-tuning, the linear probe and any other baseline method (LoRA), then each
//! unbudgeted placement heuristic (parallel-all, manual), then every budgeted heuristic at
//! each budget, pooled over its draws like the budget curves. The single-adapter sweep and
//! parallel-all on a random-init backbone are diagnostics, left to the other tables. Rows
//! are matched across tasks by their label (and adapter count).
//!
//! Columns: VTAB-1k's tasks in the tables' order ([`VTAB`]), then the other tasks in the
//! pipeline's order. A group mean is a column only when every task of its group is in the
//! table, and the mean of the group means only when all three are; otherwise `Mean` is over
//! the tasks shown, and the notes say which tasks a group lacks. The best cell of a column is
//! bold only where the 95 % interval of its difference from the second best (over seeds,
//! [`compare_means`]) lies above zero; the notes name the columns where it does not.

mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use graft_tables::Method;

use crate::analysis::{Analysis, PlacementStats, SWEEP, TaskAnalysis};
use crate::stats::{Comparison, compare_means, mean_std};

pub use render::{csv, html_section, latex, markdown};

/// A VTAB-1k task group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    Natural,
    Specialized,
    Structured,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Natural, Group::Specialized, Group::Structured];

    pub fn name(self) -> &'static str {
        match self {
            Group::Natural => "Natural",
            Group::Specialized => "Specialized",
            Group::Structured => "Structured",
        }
    }
}

/// VTAB-1k's 19 tasks in the column order of the PETL tables: the name the `vtab-1k` source
/// reads, the name the tables print, the group.
pub const VTAB: [(&str, &str, Group); 19] = [
    ("cifar", "CIFAR-100", Group::Natural),
    ("caltech101", "Caltech101", Group::Natural),
    ("dtd", "DTD", Group::Natural),
    ("oxford_flowers102", "Flowers102", Group::Natural),
    ("oxford_iiit_pet", "Pets", Group::Natural),
    ("svhn", "SVHN", Group::Natural),
    ("sun397", "Sun397", Group::Natural),
    ("patch_camelyon", "Camelyon", Group::Specialized),
    ("eurosat", "EuroSAT", Group::Specialized),
    ("resisc45", "Resisc45", Group::Specialized),
    ("diabetic_retinopathy", "Retinopathy", Group::Specialized),
    ("clevr_count", "Clevr-Count", Group::Structured),
    ("clevr_dist", "Clevr-Dist", Group::Structured),
    ("dmlab", "DMLab", Group::Structured),
    ("kitti", "KITTI-Dist", Group::Structured),
    ("dsprites_loc", "dSpr-Loc", Group::Structured),
    ("dsprites_ori", "dSpr-Ori", Group::Structured),
    ("smallnorb_azi", "sNORB-Azim", Group::Structured),
    ("smallnorb_ele", "sNORB-Elev", Group::Structured),
];

/// A column of accuracies: a task, a group mean or the overall mean.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsColumn {
    /// The CSV name: the task's name, `natural`, `specialized`, `structured` or `mean`.
    pub key: String,
    /// The printed name (`CIFAR-100`, `Natural`, `Mean`).
    pub title: String,
    /// The task's VTAB-1k group (`None` for other tasks and the mean columns).
    pub group: Option<Group>,
    /// A mean over other columns (printed without a standard deviation).
    pub derived: bool,
}

/// One cell: test accuracy in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultCell {
    pub mean: f64,
    /// Over seeds; `None` with one run and in the derived columns.
    pub std: Option<f64>,
    /// `(seed, accuracy %)` that the interval against the second best is taken over: the
    /// runs of a task, or per-seed means over a derived column's tasks.
    pub by_seed: Vec<(i64, f64)>,
    pub bold: bool,
}

/// One method or placement heuristic at one budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsRow {
    pub method: String,
    /// `None` for a method without adapters.
    pub adapters: Option<i64>,
    /// Trainable parameters in millions without the task's head, mean over its tasks.
    pub params_millions: Option<f64>,
    /// One per column; `None` where the method has no finished run (or lacks a task).
    pub cells: Vec<Option<ResultCell>>,
}

/// The whole table with the sentences printed under it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsTable {
    pub columns: Vec<ResultsColumn>,
    pub rows: Vec<ResultsRow>,
    pub notes: Vec<String>,
}

/// What identifies a row across tasks: its kind (0 full, 1 linear probe, 2 another
/// baseline, 3 an unbudgeted heuristic, 4 a budgeted one), label and adapter count.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowKey {
    rank: u8,
    label: String,
    adapters: i64,
}

/// The runs of one row on one task.
#[derive(Debug, Clone, Default)]
struct Pooled {
    by_seed: Vec<(i64, f64)>,
    params: Vec<i64>,
}

/// Builds the table over every task of the analysis.
pub fn results_table(a: &Analysis) -> ResultsTable {
    let tasks = ordered_tasks(a);
    let pooled: Vec<BTreeMap<RowKey, Pooled>> = tasks.iter().map(|t| pool(t)).collect();
    let keys = row_order(&tasks, &pooled);
    let mut columns: Vec<ResultsColumn> = tasks.iter().map(|t| task_column(t)).collect();
    let mut rows: Vec<ResultsRow> = keys
        .iter()
        .map(|k| task_row(k, &keys, &tasks, &pooled))
        .collect();
    let groups = add_derived_columns(&mut columns, &mut rows);
    let mut notes = vec![
        "Top-1 test accuracy (%) per task: mean ± standard deviation over seeds (for random-k, \
         over seeds and draws); – where the method has no finished run on the task."
            .to_owned(),
        "Rows: the baselines, then each placement heuristic at each budget (k adapters); the \
         single-adapter sweep and parallel-all on a random-init backbone are in the other \
         tables."
            .to_owned(),
        params_note(&tasks),
        groups,
    ];
    notes.extend(mark_bold(&columns, &mut rows));
    ResultsTable {
        columns,
        rows,
        notes,
    }
}

/// VTAB-1k's tasks in [`VTAB`] order, then the others in the pipeline's order.
fn ordered_tasks(a: &Analysis) -> Vec<&TaskAnalysis> {
    let vtab_index = |t: &TaskAnalysis| VTAB.iter().position(|v| v.0 == t.task);
    let mut tasks: Vec<&TaskAnalysis> = a.tasks.iter().collect();
    tasks.sort_by_key(|t| vtab_index(t).unwrap_or(VTAB.len()));
    tasks
}

fn task_column(t: &TaskAnalysis) -> ResultsColumn {
    let vtab = VTAB.iter().find(|v| v.0 == t.task);
    ResultsColumn {
        key: t.task.clone(),
        title: vtab.map_or(t.task.clone(), |v| v.1.to_owned()),
        group: vtab.map(|v| v.2),
        derived: false,
    }
}

/// The row a placement belongs to under one of its labels; `None` for the sweep's
/// placements, the random-init check and runs no proposal names.
fn row_key(p: &PlacementStats, label: &str, budgeted: Option<(&str, bool)>) -> Option<RowKey> {
    let rank = if p.method == Method::AdaptersRandomInit {
        return None;
    } else if p.method == Method::Full {
        0
    } else if p.method == Method::LinearProbe {
        1
    } else if p.method != Method::Adapters {
        2
    } else {
        match budgeted? {
            (h, _) if h == SWEEP => return None,
            (_, false) => 3,
            (_, true) => 4,
        }
    };
    Some(RowKey {
        rank,
        label: label.to_owned(),
        adapters: if rank >= 3 { p.adapters } else { 0 },
    })
}

/// Every finished run of one task under the rows its placements belong to.
fn pool(t: &TaskAnalysis) -> BTreeMap<RowKey, Pooled> {
    let labels: BTreeMap<&str, (&str, bool)> = t
        .data
        .proposals
        .iter()
        .map(|p| (p.label.as_str(), (p.heuristic.as_str(), p.budgeted)))
        .collect();
    let mut out: BTreeMap<RowKey, Pooled> = BTreeMap::new();
    for p in &t.placements {
        for label in &p.heuristics {
            let Some(key) = row_key(p, label, labels.get(label.as_str()).copied()) else {
                continue;
            };
            let slot = out.entry(key).or_default();
            slot.by_seed.extend(p.test_by_seed.iter().copied());
            slot.params.push(p.params);
        }
    }
    out
}

/// Rows by kind, then by the first appearance of their label in the proposals (tasks in
/// column order), then by adapter count.
fn row_order(tasks: &[&TaskAnalysis], pooled: &[BTreeMap<RowKey, Pooled>]) -> Vec<RowKey> {
    let mut first: BTreeMap<&str, usize> = BTreeMap::new();
    let labels = tasks.iter().flat_map(|t| &t.data.proposals);
    for (k, p) in labels.enumerate() {
        first.entry(p.label.as_str()).or_insert(k);
    }
    let keys: BTreeSet<&RowKey> = pooled.iter().flat_map(|m| m.keys()).collect();
    let mut keys: Vec<RowKey> = keys.into_iter().cloned().collect();
    keys.sort_by_key(|k| {
        let seen = first.get(k.label.as_str()).copied().unwrap_or(usize::MAX);
        (k.rank, seen, k.label.clone(), k.adapters)
    });
    keys
}

/// The printed name of a row: baselines by method, heuristics by label, with `k=<adapters>`
/// for a budgeted heuristic or one proposing several sizes.
fn row_name(k: &RowKey, keys: &[RowKey]) -> String {
    let sizes = keys
        .iter()
        .filter(|o| o.rank == k.rank && o.label == k.label)
        .count();
    match k.rank {
        0 => "Full fine-tuning".into(),
        1 => "Linear probe".into(),
        4 => format!("{}, k={}", k.label, k.adapters),
        3 if sizes > 1 => format!("{}, k={}", k.label, k.adapters),
        _ => k.label.clone(),
    }
}

fn task_row(
    k: &RowKey,
    keys: &[RowKey],
    tasks: &[&TaskAnalysis],
    pooled: &[BTreeMap<RowKey, Pooled>],
) -> ResultsRow {
    let cells = pooled
        .iter()
        .map(|m| {
            let p = m.get(k)?;
            let m = mean_std(p.by_seed.iter().map(|v| v.1))?;
            Some(ResultCell {
                mean: m.mean,
                std: m.std,
                by_seed: p.by_seed.clone(),
                bold: false,
            })
        })
        .collect();
    let params: Vec<f64> = tasks
        .iter()
        .zip(pooled)
        .filter_map(|(t, m)| {
            let p = m.get(k)?;
            let mean = p.params.iter().sum::<i64>() as f64 / p.params.len().max(1) as f64;
            Some(mean - head_params(t).unwrap_or(0) as f64)
        })
        .collect();
    let adapters = match k.rank {
        0..=2 => None,
        _ => Some(k.adapters),
    };
    ResultsRow {
        method: row_name(k, keys),
        adapters,
        params_millions: mean_std(params).map(|m| m.mean / 1e6),
        cells,
    }
}

/// The trainable parameters of the task's head: from the probed model's shapes, else the
/// linear probe's count (it trains the head alone).
fn head_params(t: &TaskAnalysis) -> Option<i64> {
    match &t.data.model {
        Some(m) => Some(m.dims.head_params() as i64),
        None => t.linear_probe.as_ref().map(|r| r.params),
    }
}

fn params_note(tasks: &[&TaskAnalysis]) -> String {
    let unknown: Vec<&str> = tasks
        .iter()
        .filter(|t| head_params(t).is_none())
        .map(|t| t.task.as_str())
        .collect();
    let mut s = "Params (M): trainable parameters in millions without the task's \
                 classification head, as PETL tables count them (mean over the tasks the \
                 method ran on); Adapters: adapters placed."
        .to_owned();
    if !unknown.is_empty() {
        s.push_str(&format!(
            " The head's size was not recorded for {}: its parameters are counted there.",
            unknown.join(", ")
        ));
    }
    s
}

/// The per-seed mean over `cells`: for each seed every cell has, the mean over cells of that
/// cell's runs at the seed.
fn per_seed_mean(cells: &[&ResultCell]) -> Vec<(i64, f64)> {
    let seeds = |c: &ResultCell| c.by_seed.iter().map(|v| v.0).collect::<BTreeSet<i64>>();
    let Some(common) = cells.iter().map(|c| seeds(c)).reduce(|a, b| &a & &b) else {
        return Vec::new();
    };
    common
        .into_iter()
        .filter_map(|s| {
            let at = |c: &ResultCell| mean_std(c.by_seed.iter().filter(|v| v.0 == s).map(|v| v.1));
            let m = mean_std(cells.iter().filter_map(|c| at(c)).map(|m| m.mean))?;
            Some((s, m.mean))
        })
        .collect()
}

/// The mean of the cells at `idx` in a row; `None` unless the row has all of them.
fn derived_cell(row: &ResultsRow, idx: &[usize]) -> Option<ResultCell> {
    let cells: Vec<&ResultCell> = idx
        .iter()
        .map(|&k| row.cells[k].as_ref())
        .collect::<Option<_>>()?;
    let mean = mean_std(cells.iter().map(|c| c.mean))?.mean;
    Some(ResultCell {
        mean,
        std: None,
        by_seed: per_seed_mean(&cells),
        bold: false,
    })
}

fn push_derived(
    columns: &mut Vec<ResultsColumn>,
    rows: &mut [ResultsRow],
    title: &str,
    idx: &[usize],
) {
    columns.push(ResultsColumn {
        key: title.to_lowercase(),
        title: title.to_owned(),
        group: None,
        derived: true,
    });
    for r in rows.iter_mut() {
        let c = derived_cell(r, idx);
        r.cells.push(c);
    }
}

/// Adds the complete groups' means and the overall mean; returns the note saying which.
fn add_derived_columns(columns: &mut Vec<ResultsColumn>, rows: &mut [ResultsRow]) -> String {
    let tasks = columns.len();
    let mut complete = Vec::new();
    let mut incomplete = Vec::new();
    for g in Group::ALL {
        let missing: Vec<&str> = VTAB
            .iter()
            .filter(|v| v.2 == g && !columns[..tasks].iter().any(|c| c.key == v.0))
            .map(|v| v.0)
            .collect();
        if missing.is_empty() {
            let idx: Vec<usize> = (0..tasks)
                .filter(|&k| columns[k].group == Some(g))
                .collect();
            push_derived(columns, rows, g.name(), &idx);
            complete.push((g, columns.len() - 1));
        } else {
            incomplete.push((g, missing));
        }
    }
    let groups: Vec<Group> = complete.iter().map(|c| c.0).collect();
    let mean_over: Vec<usize> = if groups.len() == 3 {
        complete.iter().map(|c| c.1).collect()
    } else {
        (0..tasks).collect()
    };
    if groups.len() == 3 || tasks >= 2 {
        push_derived(columns, rows, "Mean", &mean_over);
    }
    groups_note(&groups, &incomplete, tasks)
}

fn group_names(groups: &[Group], sep: &str) -> String {
    let names: Vec<&str> = groups.iter().map(|g| g.name()).collect();
    names.join(sep)
}

/// What the derived columns are, and why a group has no mean: the VTAB-1k tasks it lacks,
/// or that none of its tasks is in the table.
fn groups_note(complete: &[Group], incomplete: &[(Group, Vec<&str>)], tasks: usize) -> String {
    let mut parts = Vec::new();
    if !complete.is_empty() {
        parts.push(format!(
            "{}: the mean of the group's task means (– where the method lacks a task of the \
             group).",
            group_names(complete, ", ")
        ));
    }
    let size = |g: Group| VTAB.iter().filter(|v| v.2 == g).count();
    let (absent, partial): (Vec<_>, Vec<_>) =
        incomplete.iter().partition(|(g, m)| m.len() == size(*g));
    if !partial.is_empty() {
        let lacks: Vec<String> = partial
            .iter()
            .map(|(g, m)| format!("{} lacks {}", g.name(), m.join(", ")))
            .collect();
        parts.push(format!(
            "No group mean where a group is incomplete: {}.",
            lacks.join("; ")
        ));
    }
    let absent: Vec<Group> = absent.iter().map(|(g, _)| *g).collect();
    match absent.len() {
        0 => {}
        3 => parts.push("No group means: no task is one of VTAB-1k's.".to_owned()),
        _ => parts.push(format!(
            "No {} mean: none of its tasks is in the table.",
            group_names(&absent, " or ")
        )),
    }
    if complete.len() == 3 {
        parts.push("Mean: the mean of the three group means.".to_owned());
    } else if tasks >= 2 {
        parts.push(format!(
            "Mean: over the {tasks} task means (– where the method lacks a task), not VTAB-1k's \
             mean of group means."
        ));
    }
    parts.join(" ")
}

/// Why a column's best is not bold, as printed in the notes.
fn not_bold_reason(c: Comparison) -> Option<String> {
    match c {
        Comparison::Interval(d) if d.lo > 0.0 => None,
        Comparison::Interval(d) => Some(format!(
            "difference {:+.1} points, 95 % CI {:.1} to {:.1}",
            d.diff, d.lo, d.hi
        )),
        Comparison::OneSeed { .. } => Some("one seed on a side: no interval".into()),
        // Only a mean column can lack values: per-seed means need a seed all its tasks share.
        Comparison::Missing => Some("no seed common to its tasks: no interval".into()),
    }
}

/// Bolds each column's best where it is separated from the second best; returns the notes.
fn mark_bold(columns: &[ResultsColumn], rows: &mut [ResultsRow]) -> Vec<String> {
    let mut unclear = Vec::new();
    for (k, col) in columns.iter().enumerate() {
        let mut order: Vec<usize> = (0..rows.len())
            .filter(|&r| rows[r].cells[k].is_some())
            .collect();
        let mean = |r: usize| rows[r].cells[k].as_ref().map_or(f64::NAN, |c| c.mean);
        order.sort_by(|&a, &b| mean(b).total_cmp(&mean(a)).then(a.cmp(&b)));
        let reason = match order[..] {
            [] => continue,
            [_] => Some("one method only".to_owned()),
            [best, second, ..] => {
                let cell = |r: usize| rows[r].cells[k].as_ref().map_or(&[][..], |c| &c.by_seed);
                not_bold_reason(compare_means(cell(best), cell(second)))
            }
        };
        match reason {
            None => {
                if let Some(c) = rows[order[0]].cells[k].as_mut() {
                    c.bold = true;
                }
            }
            Some(why) => unclear.push(format!("{} ({why})", col.title)),
        }
    }
    let mut notes = vec![
        "Bold: the best of its column where the 95 % confidence interval of its difference from \
         the second best lies above zero (Student's t over seeds: paired by seed when both have \
         the same seeds, else Welch's; over per-seed means in the mean columns)."
            .to_owned(),
    ];
    if !unclear.is_empty() {
        notes.push(format!(
            "Not bold, the best not told apart from the second best: {}.",
            unclear.join(", ")
        ));
    }
    notes
}

/// Trainable parameters in millions as PETL tables print them: `85.8`, `0.16`, and two
/// significant digits below 0.1 (`0.0044`), so that a small model's counts do not print as 0.
pub fn fmt_millions(m: f64) -> String {
    if !m.is_finite() {
        return "n/a".into();
    }
    if m == 0.0 {
        return "0".into();
    }
    let a = m.abs();
    let decimals = if a >= 10.0 {
        1
    } else if a >= 0.095 {
        2
    } else {
        (1 - a.log10().floor() as i32).max(2) as usize
    };
    format!("{m:.decimals$}")
}
