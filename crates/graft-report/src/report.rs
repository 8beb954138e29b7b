//! The report's text: the tables ([`TableData`], each also written as CSV), the generated
//! findings, and the two pages (`report.html`, `summary.md`). [`build`] runs the analysis
//! and the figures and returns every file as text.
//!
//! [`tables`] builds the [`TableData`], [`findings`] the sentences, [`results`] the table
//! PETL papers print (also `results.md`, `results.csv`, `results.tex`), [`crate::claims`]
//! the claims section that opens both pages (also `claims.csv`), and the `page` module lays
//! them out with the figures.

mod findings;
mod page;
pub mod results;
mod tables;

use crate::ReportError;
use crate::analysis::analyse;
use crate::claims;
use crate::figures::figures;
use crate::inputs::TaskData;

pub(crate) use page::esc;

pub use findings::{findings, protocol_text};
pub use results::{ResultsTable, results_table};
pub use tables::{Cell, Column, TableData, fmt_acc, tables};

/// Everything the report writes, as `(file name, text)`, with what the manifest records.
#[derive(Debug, Clone, Default)]
pub struct ReportFiles {
    pub files: Vec<(String, String)>,
    pub figures_drawn: Vec<usize>,
    pub figures_skipped: Vec<usize>,
    pub tables: Vec<String>,
    pub runs: usize,
    pub runs_failed: usize,
    pub findings: Vec<String>,
}

/// Builds the whole report from the tasks' data.
pub fn build(tasks: Vec<TaskData>, title: &str) -> Result<ReportFiles, ReportError> {
    let a = analyse(tasks);
    let figs = figures(&a)?;
    let tabs = tables(&a);
    let finds = findings(&a);
    let res = results_table(&a);
    let cl = claims::claims(&a);
    let claims_html = claims::html(&cl, &claims::forest_svgs(&cl));
    let claims_md = claims::markdown(&cl);
    let mut files = vec![
        (
            "report.html".to_owned(),
            page::html(title, &a, &figs, &tabs, &finds, &res, &claims_html),
        ),
        (
            "summary.md".to_owned(),
            page::markdown(title, &a, &figs, &tabs, &finds, &res, &claims_md),
        ),
        ("claims.csv".to_owned(), claims::csv(&cl)),
        ("results.md".to_owned(), results::markdown(&res)),
        ("results.csv".to_owned(), results::csv(&res)),
        ("results.tex".to_owned(), results::latex(&res, title)),
    ];
    for t in &tabs {
        files.push((t.file.clone(), t.to_csv()));
    }
    Ok(ReportFiles {
        files,
        figures_drawn: figs
            .iter()
            .filter(|f| f.drawn() > 0)
            .map(|f| f.number)
            .collect(),
        figures_skipped: figs
            .iter()
            .filter(|f| f.drawn() == 0)
            .map(|f| f.number)
            .collect(),
        tables: ["claims.csv".to_owned(), "results.csv".to_owned()]
            .into_iter()
            .chain(tabs.iter().map(|t| t.file.clone()))
            .collect(),
        runs: a.tasks.iter().map(|t| t.runs).sum(),
        runs_failed: a.tasks.iter().map(|t| t.failed.len()).sum(),
        findings: finds
            .iter()
            .map(|(t, s)| match t {
                Some(t) if a.tasks.len() > 1 => format!("{t}: {s}"),
                _ => s.clone(),
            })
            .collect(),
    })
}
