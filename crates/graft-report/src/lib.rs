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
}

fn default_tasks() -> Vec<String> {
    vec!["target".into()]
}

impl ReportParams {
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
    const VERSION: u32 = 6;
    type Params = ReportParams;

    fn input_names(p: &ReportParams) -> Vec<String> {
        p.tasks
            .iter()
            .flat_map(|t| [format!("probe-{t}"), format!("finetune-{t}")])
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
        for t in &p.tasks {
            let get = |name: String| {
                inputs.get(&name).ok_or_else(|| ReportError::NoInput {
                    task: t.clone(),
                    input: name,
                })
            };
            let probe = get(format!("probe-{t}"))?;
            let finetune = get(format!("finetune-{t}"))?;
            tasks.push(TaskData::read(t, probe.dir(), finetune.dir())?);
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
