//! The report stage: reads each task's probe and fine-tune artifacts and publishes one
//! self-contained `report.html` (inline SVG and CSS, nothing fetched), a `summary.md`, one
//! CSV per table shown, and the table PETL papers print for VTAB-1k (per method and budget,
//! per task, group means, parameters) as `results.md`, `results.csv` and `results.tex`.
//!
//! The flow is three pure steps between reading and writing: [`inputs::TaskData`] holds what
//! one task's artifacts contain (read through the `graft_tables` types; a file that is
//! absent shows as "not recorded"); [`analysis::analyse`] turns it into an [`analysis::Analysis`] (runs
//! aggregated per placement as [`analysis::PlacementStats`], curves per heuristic,
//! Spearman correlations on the single-sweep's edges and 95 % confidence intervals over
//! seeds from [`stats`]); [`figures::figures`] draws the six
//! [`figures::Figure`]s with plotters and [`report::build`] writes the tables (the results
//! table from [`report::results`]), the generated findings and the pages as
//! [`report::ReportFiles`]. Every sentence and figure is made from
//! the report's own numbers, and every comparison of two methods or placements from the
//! interval of their difference ("cannot tell" where it includes zero); where the data for
//! one is missing (no sweep, one seed, one task) the report says so instead. [`Report`] is
//! the [`graft_stage::Stage`].

pub mod analysis;
pub mod bands;
pub mod claims;
pub mod figures;
pub mod inputs;
pub mod report;
pub mod stats;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use analysis::{Analysis, analyse};
pub use inputs::TaskData;
pub use report::{ReportFiles, build};

/// Errors of the report; each names the file, task or figure.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Table(#[from] graft_tables::TableError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid json: {message}")]
    Json { path: PathBuf, message: String },
    #[error("task {task}: {path} is missing")]
    Missing { task: String, path: PathBuf },
    #[error("task {task}: input {input:?} was not given")]
    NoInput { task: String, input: String },
    #[error("figure {figure}: drawing failed: {message}")]
    Draw { figure: usize, message: String },
}

/// Parameters of the report stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportParams {
    /// Task names; task `t` reads inputs `probe-t` and `finetune-t`.
    #[serde(default = "default_tasks")]
    pub tasks: Vec<String>,
    /// The report's heading; by default `graft report: <tasks>`.
    #[serde(default)]
    pub title: Option<String>,
    /// The axis the claims pool over when it is not the task (the backbone): task `t` of
    /// replicate `v` reads inputs `probe-<v>-<t>` and `finetune-<v>-<t>`, the names a fan-in
    /// over a matrix with the replicate's axis first and the task's second gives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicates: Option<Replicates>,
}

/// `replicates = { axis = "backbone", values = [0, 1, 2, 3, 4] }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replicates {
    /// What a replicate is, in the report's words (`backbone`).
    pub axis: String,
    /// The matrix values naming the replicates: strings or integers.
    pub values: Vec<Value>,
}

impl Replicates {
    /// The values as they appear in input names; an error names the value that is neither a
    /// string nor an integer.
    pub fn names(&self) -> Result<Vec<String>, String> {
        self.values
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
                other => Err(format!(
                    "replicates.values: {other} is neither a string nor an integer"
                )),
            })
            .collect()
    }
}

fn default_tasks() -> Vec<String> {
    vec!["target".into()]
}

impl ReportParams {
    /// Every task's input suffix with its replicate: `(suffix, task, replicate value)`.
    pub fn cells(&self) -> Vec<(String, String, Option<String>)> {
        match self.replicates.as_ref().and_then(|r| r.names().ok()) {
            Some(values) => values
                .iter()
                .flat_map(|v| {
                    self.tasks
                        .iter()
                        .map(move |t| (format!("{v}-{t}"), t.clone(), Some(v.clone())))
                })
                .collect(),
            None => self
                .tasks
                .iter()
                .map(|t| (t.clone(), t.clone(), None))
                .collect(),
        }
    }

    pub fn title(&self) -> String {
        self.title
            .clone()
            .unwrap_or_else(|| format!("graft report: {}", self.tasks.join(", ")))
    }
}

/// The stage.
pub struct Report;

impl Stage for Report {
    const NAME: &'static str = "report";
    // 2: states the protocol behind each task's numbers.
    // 3: correlations on the single-sweep only; comparisons from 95 % intervals over seeds;
    //    a baselines table and interval columns; the heat map states its range in points.
    // 4: ranks at 1e-2, 1e-3 and 1e-4 from the singular values, figure 6, eight scores.
    // 5: the sweep's spread beside the seed noise of its edges trained at several seeds.
    // 6: the results table PETL papers print (results.md, .csv, .tex and in the pages); wall
    //    and epoch seconds from the fine-tune manifest (fine-tune version 4), not its tables;
    //    a failed run's time is not averaged in.
    // 7: the claims section (claims.csv, forest plots) opens the pages; `replicates`;
    //    cross-task correlations only between tasks of one replicate.
    const VERSION: u32 = 7;
    type Params = ReportParams;

    fn input_names(p: &ReportParams) -> Vec<String> {
        p.cells()
            .iter()
            .flat_map(|(c, _, _)| [format!("probe-{c}"), format!("finetune-{c}")])
            .collect()
    }

    fn validate(p: ReportParams) -> Result<ReportParams, BoxError> {
        if p.tasks.is_empty() {
            return Err("tasks must name at least one task".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for t in &p.tasks {
            let ok = !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(format!(
                    "task {t:?} must be non-empty ascii letters, digits, '-', '_' or '.'"
                )
                .into());
            }
            if !seen.insert(t) {
                return Err(format!("task {t:?} is listed twice").into());
            }
        }
        if let Some(r) = &p.replicates {
            validate_replicates(r)?;
        }
        if p.title.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err("title must not be empty when given".into());
        }
        Ok(p)
    }

    fn run(
        p: &ReportParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        let mut tasks = Vec::new();
        for (cell, task, replicate) in p.cells() {
            let get = |name: String| {
                inputs.get(&name).ok_or_else(|| ReportError::NoInput {
                    task: cell.clone(),
                    input: name,
                })
            };
            let probe = get(format!("probe-{cell}"))?;
            let finetune = get(format!("finetune-{cell}"))?;
            let data = TaskData::read(&task, probe.dir(), finetune.dir())?;
            tasks.push(match (&p.replicates, replicate) {
                (Some(r), Some(v)) => data.of_replicate(&r.axis, &v),
                _ => data,
            });
        }
        let files = build(tasks, &p.title())?;
        for (name, text) in &files.files {
            let path = out.file(name);
            std::fs::write(&path, text).map_err(|source| ReportError::Io { path, source })?;
        }
        eprintln!(
            "report: report.html ({} of {} figures drawn, {} tables; the runner prints its path)",
            files.figures_drawn.len(),
            files.figures_drawn.len() + files.figures_skipped.len(),
            files.tables.len()
        );
        Ok([
            ("tasks".to_owned(), json!(p.tasks)),
            ("figures_drawn".to_owned(), json!(files.figures_drawn)),
            ("figures_skipped".to_owned(), json!(files.figures_skipped)),
            ("tables".to_owned(), json!(files.tables)),
            ("runs".to_owned(), json!(files.runs)),
            ("runs_not_finished".to_owned(), json!(files.runs_failed)),
            ("findings".to_owned(), json!(files.findings)),
        ]
        .into())
    }
}

fn validate_replicates(r: &Replicates) -> Result<(), BoxError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
    };
    if !ok(&r.axis) {
        return Err(format!(
            "replicates.axis {:?} must be non-empty ascii letters, digits, spaces, '-', '_' or '.'",
            r.axis
        )
        .into());
    }
    let names = r.names()?;
    if names.is_empty() {
        return Err("replicates.values must name at least one replicate".into());
    }
    let mut seen = std::collections::BTreeSet::new();
    for v in &names {
        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "replicates.values: {v:?} must be ascii letters, digits or '_' (it is part of \
                 the input names probe-<value>-<task>)"
            )
            .into());
        }
        if !seen.insert(v) {
            return Err(format!("replicates.values: {v:?} is listed twice").into());
        }
    }
    Ok(())
}

/// A number for axis labels and tables: k/M/G suffixes from 10⁴ on, else at most three
/// decimals with trailing zeros dropped.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{suffix}")
}
