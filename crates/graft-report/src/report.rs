//! The report's text: the tables ([`TableData`], each also written as CSV), the generated
//! findings, and the two pages (`report.html`, `summary.md`). [`build`] runs the analysis
//! and the figures and returns every file as text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use graft_graph::EdgeKind;
use graft_tables::Method;

use crate::analysis::{Analysis, Series, TaskAnalysis, analyse};
use crate::figures::{Figure, Panel, figures, p_is};
use crate::inputs::TaskData;
use crate::stats::MeanStd;
use crate::{ReportError, fmt_num};

const NOT_RECORDED: &str = "not recorded";
/// Rows of one table in `summary.md`; the CSV and the HTML page have all.
const MD_ROWS: usize = 60;

/// One cell of a table; [`Cell::Acc`] is two CSV columns (`<name>_mean`, `<name>_std`).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(Option<i64>),
    /// A number with this many decimals in the pages (full precision in CSV).
    Num(Option<f64>, usize),
    /// Accuracy in percent over seeds.
    Acc(Option<MeanStd>),
    /// A correlation ("undefined" when missing).
    Rho(Option<f64>),
    /// A p-value (scientific notation below 10⁻⁴ in the pages).
    P(Option<f64>),
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    fn display(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(Some(v)) => v.to_string(),
            Cell::Num(Some(v), d) if v.is_finite() => format!("{v:.d$}"),
            Cell::Acc(Some(m)) => fmt_acc(m),
            Cell::P(Some(p)) if *p < 1e-4 => format!("{p:.1e}"),
            Cell::P(Some(p)) => format!("{p:.4}"),
            Cell::P(None) | Cell::Rho(None) => "undefined".into(),
            Cell::Rho(Some(r)) => format!("{r:.3}"),
            Cell::Int(None) | Cell::Num(..) => NOT_RECORDED.into(),
            Cell::Acc(None) => "no finished run".into(),
        }
    }

    fn csv(&self) -> Vec<String> {
        match self {
            Cell::Text(s) => vec![s.clone()],
            Cell::Int(v) => vec![v.map(|v| v.to_string()).unwrap_or_default()],
            Cell::Num(v, _) | Cell::P(v) | Cell::Rho(v) => vec![
                v.filter(|v| v.is_finite())
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            ],
            Cell::Acc(m) => vec![
                m.map(|m| m.mean.to_string()).unwrap_or_default(),
                m.and_then(|m| m.std)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            ],
        }
    }
}

/// A column: its name, and whether it holds [`Cell::Acc`].
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub acc: bool,
}

fn cols(names: &[&str]) -> Vec<Column> {
    names
        .iter()
        .map(|n| Column {
            name: (*n).to_owned(),
            acc: n.ends_with("accuracy"),
        })
        .collect()
}

/// A table shown in the report and written as `file`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableData {
    pub file: String,
    pub title: String,
    /// One line under the title.
    pub note: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<Cell>>,
    /// Rows shown in the pages (the CSV has all).
    pub shown: Option<usize>,
}

impl TableData {
    /// The CSV text: header, then one line per row; an accuracy column is `_mean`, `_std`.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let header: Vec<String> = self
            .columns
            .iter()
            .flat_map(|c| {
                if c.acc {
                    vec![format!("{}_mean", c.name), format!("{}_std", c.name)]
                } else {
                    vec![c.name.clone()]
                }
            })
            .collect();
        out.push_str(&csv_line(&header));
        for row in &self.rows {
            let fields: Vec<String> = row.iter().flat_map(Cell::csv).collect();
            out.push_str(&csv_line(&fields));
        }
        out
    }

    fn shown_rows(&self) -> &[Vec<Cell>] {
        let k = self.shown.unwrap_or(self.rows.len()).min(self.rows.len());
        &self.rows[..k]
    }
}

fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    quoted.join(",") + "\n"
}

/// `71.2 ± 0.4` (`71.2` with one value).
pub fn fmt_acc(m: &MeanStd) -> String {
    match m.std {
        Some(s) => format!("{:.1} ± {:.1}", m.mean, s),
        None => format!("{:.1}", m.mean),
    }
}

fn fmt_count(v: i64) -> String {
    let s = v.abs().to_string();
    let mut out = String::new();
    for (k, c) in s.chars().enumerate() {
        if k > 0 && (s.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0 { format!("-{out}") } else { out }
}

fn opt_text(v: Option<&str>) -> Cell {
    Cell::text(v.unwrap_or(NOT_RECORDED))
}

// ---------------------------------------------------------------- tables

fn placements_table(a: &Analysis) -> TableData {
    let mut rows = Vec::new();
    for t in &a.tasks {
        for p in &t.placements {
            let errors: Vec<String> = p
                .failed
                .iter()
                .map(|f| format!("seed {}: {}", f.seed, f.error))
                .collect();
            rows.push(vec![
                Cell::text(&t.task),
                Cell::text(protocol_name(t, &p.placement_id)),
                Cell::text(&p.placement_id),
                Cell::text(p.heuristics.join("; ")),
                Cell::text(p.method.name()),
                Cell::text(p.edges_text()),
                Cell::text(p.kinds_text()),
                Cell::Int(Some(p.adapters)),
                Cell::Int(Some(p.params)),
                Cell::Int(Some(p.flops)),
                Cell::Acc(p.val),
                Cell::Acc(p.test),
                Cell::Int(Some(p.test.map_or(0, |m| m.n) as i64)),
                Cell::Int(Some(p.runs as i64)),
                Cell::Num(p.wall_seconds, 1),
                Cell::text(p.status_text()),
                Cell::text(errors.join("; ")),
            ]);
        }
    }
    TableData {
        file: "placements.csv".into(),
        title: "Every trained placement".into(),
        note: "Runs aggregated per placement: accuracies in % as mean ± standard deviation over \
               the seeds that finished; runs that did not finish are counted in status and left \
               out of the means."
            .into(),
        columns: cols(&[
            "task",
            "protocol",
            "placement_id",
            "heuristics",
            "method",
            "edges",
            "kinds",
            "adapters",
            "trainable_params",
            "forward_flops",
            "val_accuracy",
            "test_accuracy",
            "seeds_finished",
            "runs",
            "wall_seconds_mean",
            "status",
            "errors",
        ]),
        rows,
        shown: None,
    }
}

/// The protocol of a placement's runs, as recorded (`select`, `final`).
fn protocol_name(t: &TaskAnalysis, placement_id: &str) -> String {
    let names: BTreeSet<&str> = t
        .data
        .runs
        .iter()
        .filter(|r| r.placement_id == placement_id)
        .map(|r| r.protocol.as_deref().unwrap_or("not recorded"))
        .collect();
    names.into_iter().collect::<Vec<_>>().join(", ")
}

fn single_table(a: &Analysis) -> TableData {
    let mut rows = Vec::new();
    for t in &a.tasks {
        for (e, m) in t.best_single(usize::MAX) {
            rows.push(vec![
                Cell::text(&t.task),
                Cell::Int(Some(e.i as i64)),
                Cell::Int(Some(e.j as i64)),
                Cell::text(e.kind().name()),
                Cell::Acc(Some(m)),
                Cell::Int(Some(m.n as i64)),
            ]);
        }
    }
    let shown = (a.tasks.len() == 1).then_some(10);
    TableData {
        file: "single_adapter.csv".into(),
        title: "Single adapters, best first".into(),
        note: if shown.is_some() && rows.len() > 10 {
            format!(
                "The best 10 of {} edges trained alone; all of them (the data of figure 1) are in single_adapter.csv.",
                rows.len()
            )
        } else {
            "Every edge trained alone, best first per task: the data of figure 1.".into()
        },
        columns: cols(&["task", "i", "j", "kind", "test_accuracy", "seeds_finished"]),
        rows,
        shown,
    }
}

fn curves_table(a: &Analysis) -> TableData {
    let mut rows = Vec::new();
    for t in &a.tasks {
        for s in &t.series {
            for p in &s.points {
                rows.push(vec![
                    Cell::text(&t.task),
                    Cell::text(&s.label),
                    Cell::Int(Some(p.adapters)),
                    Cell::Int(Some(p.params)),
                    Cell::Acc(Some(p.test)),
                    Cell::Int(Some(p.test.n as i64)),
                    Cell::Int(Some(p.placements as i64)),
                ]);
            }
        }
    }
    TableData {
        file: "budgets.csv".into(),
        title: "Accuracy by heuristic and budget".into(),
        note: "The data of figure 3: test accuracy in % over every finished run at each budget \
               (for random-k, over seeds and draws; draws = distinct placements pooled)."
            .into(),
        columns: cols(&[
            "task",
            "heuristic",
            "adapters",
            "trainable_params",
            "test_accuracy",
            "runs",
            "draws",
        ]),
        rows,
        shown: None,
    }
}

fn correlations_table(a: &Analysis) -> TableData {
    let mut rows = Vec::new();
    for t in &a.tasks {
        for c in &t.correlations {
            rows.push(vec![
                Cell::text(&t.task),
                Cell::text(c.score),
                Cell::Rho(c.spearman.map(|s| s.rho)),
                Cell::P(c.spearman.and_then(|s| s.p)),
                Cell::Int(Some(c.points.len() as i64)),
            ]);
        }
    }
    TableData {
        file: "correlations.csv".into(),
        title: "Probe scores against single-adapter accuracy (Spearman)".into(),
        note: "Spearman's ρ (average ranks for ties) of each probe score against the mean test \
               accuracy of the edge trained alone; two-sided p from Student's t with n − 2 \
               degrees of freedom. Empty: undefined (fewer than 3 edges or a constant score)."
            .into(),
        columns: cols(&["task", "score", "rho", "p_value", "n"]),
        rows,
        shown: None,
    }
}

fn cross_table(a: &Analysis) -> TableData {
    let rows = a
        .cross
        .iter()
        .map(|c| {
            vec![
                Cell::text(&c.a),
                Cell::text(&c.b),
                Cell::Rho(c.spearman.map(|s| s.rho)),
                Cell::P(c.spearman.and_then(|s| s.p)),
                Cell::Int(Some(c.common_edges as i64)),
            ]
        })
        .collect();
    TableData {
        file: "cross_task.csv".into(),
        title: "Cross-task Spearman of single-adapter accuracy".into(),
        note: "The data of figure 4: ρ over the edges both tasks trained alone.".into(),
        columns: cols(&["task_a", "task_b", "rho", "p_value", "n"]),
        rows,
        shown: None,
    }
}

fn cost_table(a: &Analysis) -> TableData {
    let rows = a
        .tasks
        .iter()
        .map(|t| {
            let c = &t.data.cost;
            let share = match (c.total_seconds, t.adapter_run_seconds) {
                (Some(p), Some(r)) if r > 0.0 => Some(p / r),
                _ => None,
            };
            vec![
                Cell::text(&t.task),
                Cell::Num(c.total_seconds, 2),
                Cell::Num(c.forward_backward_seconds, 2),
                Cell::Num(c.svd_seconds, 2),
                Cell::Num(c.train_step_seconds, 3),
                Cell::Num(c.cost_in_train_steps, 1),
                Cell::Num(t.epoch_seconds, 2),
                Cell::Num(t.adapter_run_seconds, 1),
                Cell::Num(share, 3),
                Cell::Int(c.batches),
                Cell::Int(c.batch),
                opt_text(c.tokens.as_deref()),
                opt_text(c.head.as_deref()),
                Cell::Num(c.tolerance, 6),
            ]
        })
        .collect();
    TableData {
        file: "cost.csv".into(),
        title: "Probe cost against training cost".into(),
        note: "Seconds of the probe (one forward and backward pass per batch, then the SVDs) \
               beside one training step, one epoch and one whole adapter fine-tuning run \
               (mean over finished runs); probe_per_run is their ratio."
            .into(),
        columns: cols(&[
            "task",
            "probe_seconds",
            "forward_backward_seconds",
            "svd_seconds",
            "train_step_seconds",
            "probe_in_train_steps",
            "epoch_seconds_mean",
            "finetune_run_seconds_mean",
            "probe_per_run",
            "probe_batches",
            "probe_batch",
            "tokens",
            "head",
            "tolerance",
        ]),
        rows,
        shown: None,
    }
}

fn setup_table(a: &Analysis) -> TableData {
    let mut columns = cols(&["setting"]);
    columns.extend(a.tasks.iter().map(|t| Column {
        name: t.task.clone(),
        acc: false,
    }));
    let fmt_vec = |v: &Option<Vec<f64>>| {
        v.as_ref()
            .map(|v| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(" "))
    };
    type Getter = Box<dyn Fn(&TaskAnalysis) -> Option<String>>;
    let settings: Vec<(&str, Getter)> = vec![
        ("task (recorded)", Box::new(|t| t.data.summary.task.clone())),
        ("protocol", Box::new(|t| Some(protocol_text(t)))),
        ("base model", Box::new(|t| t.data.summary.base.clone())),
        (
            "preset",
            Box::new(|t| t.data.model.as_ref().map(|m| m.preset.clone())),
        ),
        (
            "classes",
            Box::new(|t| t.data.summary.classes.map(|c| c.to_string())),
        ),
        (
            "image size",
            Box::new(|t| pre(t).and_then(|p| p.image_size).map(|v| v.to_string())),
        ),
        (
            "interpolation",
            Box::new(|t| pre(t).and_then(|p| p.interpolation.clone())),
        ),
        (
            "normalisation mean",
            Box::new(move |t| pre(t).and_then(|p| fmt_vec(&p.mean))),
        ),
        (
            "normalisation std",
            Box::new(move |t| pre(t).and_then(|p| fmt_vec(&p.std))),
        ),
        (
            "seeds",
            Box::new(|t| {
                t.data.summary.seeds.as_ref().map(|s| {
                    s.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            }),
        ),
        ("backend", Box::new(|t| t.data.summary.backend.clone())),
        ("device", Box::new(|t| t.data.summary.device.clone())),
        (
            "bottleneck r",
            Box::new(|t| train(t).and_then(|x| x.bottleneck).map(|v| v.to_string())),
        ),
        (
            "epochs",
            Box::new(|t| train(t).and_then(|x| x.epochs).map(|v| v.to_string())),
        ),
        (
            "learning rate",
            Box::new(|t| train(t).and_then(|x| x.lr).map(|v| v.to_string())),
        ),
        (
            "batch",
            Box::new(|t| train(t).and_then(|x| x.batch).map(|v| v.to_string())),
        ),
        (
            "weight decay",
            Box::new(|t| train(t).and_then(|x| x.weight_decay).map(|v| v.to_string())),
        ),
        (
            "warm-up epochs",
            Box::new(|t| {
                train(t)
                    .and_then(|x| x.warmup_epochs)
                    .map(|v| v.to_string())
            }),
        ),
        (
            "program version",
            Box::new(|t| t.data.summary.program_version.clone()),
        ),
    ];
    let rows = settings
        .iter()
        .map(|(name, get)| {
            let mut row = vec![Cell::text(*name)];
            row.extend(a.tasks.iter().map(|t| opt_text(get(t).as_deref())));
            row
        })
        .collect();
    TableData {
        file: "setup.csv".into(),
        title: "Setup".into(),
        note: "Preprocessing, seeds, backend, device, bottleneck and program version as the \
               fine-tune artifacts recorded them; re-runs of PETL methods differ by points with \
               these."
            .into(),
        columns,
        rows,
        shown: None,
    }
}

fn pre(t: &TaskAnalysis) -> Option<&crate::inputs::Preprocessing> {
    t.data.summary.preprocessing.as_ref()
}

fn train(t: &TaskAnalysis) -> Option<&crate::inputs::TrainSettings> {
    t.data.summary.train.as_ref()
}

fn failed_table(a: &Analysis) -> TableData {
    let rows = a
        .tasks
        .iter()
        .flat_map(|t| {
            t.failed.iter().map(move |f| {
                vec![
                    Cell::text(&t.task),
                    Cell::text(&f.placement_id),
                    Cell::Int(Some(f.seed)),
                    Cell::text(f.status.name()),
                    Cell::text(&f.error),
                ]
            })
        })
        .collect();
    TableData {
        file: "failed_runs.csv".into(),
        title: "Runs that did not finish".into(),
        note: "Diverged and failed runs: counted here and in the placement table, left out of \
               every mean and figure."
            .into(),
        columns: cols(&["task", "placement_id", "seed", "status", "error"]),
        rows,
        shown: None,
    }
}

/// Every table, in page order; the cross-task one only with two or more tasks.
pub fn tables(a: &Analysis) -> Vec<TableData> {
    let mut t = vec![
        correlations_table(a),
        single_table(a),
        curves_table(a),
        placements_table(a),
        failed_table(a),
        cost_table(a),
        setup_table(a),
    ];
    if a.tasks.len() > 1 {
        t.insert(1, cross_table(a));
    }
    t
}

// ---------------------------------------------------------------- findings

fn pct(m: &MeanStd) -> String {
    format!("{} %", fmt_acc(m))
}

fn budget_sentence(s: &Series, t: &TaskAnalysis) -> Option<String> {
    let best = s.points.iter().max_by(|a, b| {
        a.test
            .mean
            .total_cmp(&b.test.mean)
            .then(b.adapters.cmp(&a.adapters))
    })?;
    let at = |p: &crate::analysis::Point| {
        format!(
            "with {} adapter{} ({} trainable parameters)",
            p.adapters,
            if p.adapters == 1 { "" } else { "s" },
            fmt_count(p.params)
        )
    };
    let draws = if s.heuristic == "random-k" {
        format!(
            " over {} draw{}",
            best.placements,
            if best.placements == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    Some(match &t.parallel_all {
        Some(pa) => {
            let pa_text = format!(
                "parallel-all {} with {} ({} trainable parameters)",
                pct(&pa.test),
                pa.adapters,
                fmt_count(pa.params)
            );
            match s.points.iter().find(|p| p.test.mean >= pa.test.mean) {
                Some(p) => format!(
                    "{} {} reaches {} test accuracy{draws}, {pa_text}.",
                    s.label,
                    at(p),
                    pct(&p.test)
                ),
                None => format!(
                    "{} stays below parallel-all up to {} adapters: at best {} {}{draws}, {pa_text}.",
                    s.label,
                    s.points.last().map_or(0, |p| p.adapters),
                    pct(&best.test),
                    at(best)
                ),
            }
        }
        None => format!(
            "{} is best {}: {} test accuracy{draws} (no parallel-all run to compare with).",
            s.label,
            at(best),
            pct(&best.test)
        ),
    })
}

fn correlation_sentence(name: &str, c: &crate::analysis::ScoreCorrelation) -> String {
    match &c.spearman {
        Some(s) if s.p.is_some() => {
            let p = s.p.unwrap_or(f64::NAN);
            if p < 0.05 {
                format!(
                    "{name} correlates {} with single-adapter accuracy at ρ = {:.2} ({}, n = {}).",
                    if s.rho > 0.0 {
                        "positively"
                    } else {
                        "negatively"
                    },
                    s.rho,
                    p_is(p),
                    s.n
                )
            } else {
                format!(
                    "{name} shows no significant correlation with single-adapter accuracy \
                     (ρ = {:.2}, {}, n = {}).",
                    s.rho,
                    p_is(p),
                    s.n
                )
            }
        }
        _ => format!(
            "the correlation of {name} with single-adapter accuracy is undefined: {} edge(s) \
             have both, or the score is the same for all of them.",
            c.points.len()
        ),
    }
}

/// Which protocol produced a task's runs (`select`, `final`, both, or not recorded), with
/// what it means.
pub fn protocol_text(t: &TaskAnalysis) -> String {
    let names: BTreeSet<&str> = t
        .data
        .runs
        .iter()
        .map(|r| r.protocol.as_deref().unwrap_or("not recorded"))
        .collect();
    let epochs = t
        .data
        .summary
        .train
        .as_ref()
        .and_then(|x| x.epochs)
        .map_or_else(
            || "the configured epochs".to_owned(),
            |e| format!("{e} epoch{}", if e == 1 { "" } else { "s" }),
        );
    names
        .iter()
        .map(|n| match *n {
            "final" => format!(
                "final (trained on train + val for {epochs}, the last epoch's test \
                 accuracy; no model selection)"
            ),
            "select" => {
                "select (trained on train, the epoch best on val tested; val accuracy is the \
                 selected epoch's)"
                    .to_owned()
            }
            other => other.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

fn task_findings(t: &TaskAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    let finished = t.runs - t.failed.len();
    if t.runs == 0 {
        out.push("no fine-tuning runs were recorded, so there is nothing to report.".into());
        return out;
    }
    out.push(format!(
        "accuracies come from the {} protocol.",
        protocol_text(t)
    ));
    let mut s = format!(
        "{} runs of {} placements over {} {}",
        t.runs,
        t.placements.len(),
        if t.seeds.len() == 1 { "seed" } else { "seeds" },
        t.seeds
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if t.failed.is_empty() {
        s.push_str("; all finished.");
    } else {
        let mut by: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &t.failed {
            *by.entry(f.status.name()).or_default() += 1;
        }
        let parts: Vec<String> = by.iter().map(|(k, v)| format!("{v} {k}")).collect();
        s.push_str(&format!(
            "; {finished} finished and {} did not ({}): they are listed under \"Runs that did \
             not finish\" and left out of every mean.",
            t.failed.len(),
            parts.join(", ")
        ));
    }
    out.push(s);
    if t.max_seeds_per_placement() < 2 {
        out.push(
            "no placement has more than one finished seed, so no standard deviations are given \
             and differences between placements cannot be judged against seed noise."
                .into(),
        );
    }
    let mut base = Vec::new();
    if let Some(r) = &t.linear_probe {
        base.push(format!("the linear probe reaches {}", pct(&r.test)));
    }
    if let Some(r) = &t.full {
        base.push(format!(
            "full fine-tuning {} ({} trainable parameters)",
            pct(&r.test),
            fmt_count(r.params)
        ));
    }
    if !base.is_empty() {
        out.push(format!("{} test accuracy.", base.join(" and ")));
    }
    let bottleneck = t.data.summary.train.as_ref().and_then(|x| x.bottleneck);
    if !t.series.is_empty() {
        if let Some(r) = bottleneck {
            out.push(format!("every adapter has bottleneck r = {r}."));
        }
        for s in &t.series {
            if let Some(line) = budget_sentence(s, t) {
                out.push(line);
            }
        }
    }
    if t.single.is_empty() {
        out.push(
            "no edge was trained alone, so nothing is said about single placements or the \
             probe's correlation with them."
                .into(),
        );
    } else {
        let n = t.nodes;
        let best = t.best_single(3);
        if let Some((e, m)) = best.first() {
            let kind = e.kind().name();
            let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            out.push(format!(
                "{} of {} edges were trained alone; the best single edge is {e}, {article} {kind} \
                 edge, at {} test accuracy.",
                t.single.len(),
                n * n,
                pct(m)
            ));
        }
        if best.len() == 3 {
            let rec = best
                .iter()
                .filter(|(e, _)| e.kind() == EdgeKind::Recurrent)
                .count();
            let list: Vec<String> = best
                .iter()
                .map(|(e, _)| format!("{e} {}", e.kind().name()))
                .collect();
            out.push(format!(
                "the best three single edges are {}: {} of them recurrent.",
                list.join(", "),
                match rec {
                    0 => "none".to_owned(),
                    k => k.to_string(),
                }
            ));
        }
        if let Some(rank) = t.correlations.iter().find(|c| c.score == "rank") {
            out.push(correlation_sentence("gradient rank", rank));
        }
        let abs_rho = |c: &crate::analysis::ScoreCorrelation| {
            c.spearman.filter(|s| s.p.is_some()).map(|s| s.rho.abs())
        };
        // The first score with the largest |ρ|, so that rank wins a tie.
        let mut strongest: Option<&crate::analysis::ScoreCorrelation> = None;
        for c in &t.correlations {
            if let Some(r) = abs_rho(c)
                && strongest.and_then(abs_rho).is_none_or(|b| r > b)
            {
                strongest = Some(c);
            }
        }
        if let Some(c) = strongest
            && c.score != "rank"
            && let Some(s) = c.spearman
        {
            out.push(format!(
                "of the six probe scores, {} has the strongest correlation (ρ = {:.2}, {}).",
                c.score.replace('_', " "),
                s.rho,
                s.p.map_or("p n/a".into(), p_is)
            ));
        }
    }
    let cost = &t.data.cost;
    if let Some(ps) = cost.total_seconds {
        let mut parts = vec![format!("the probe took {ps:.2} s")];
        if let Some(steps) = cost.cost_in_train_steps {
            parts.push(format!("the time of {steps:.1} training steps"));
        }
        if let Some(r) = t.adapter_run_seconds.filter(|r| *r > 0.0) {
            parts.push(format!(
                "{:.1} % of one adapter fine-tuning run ({r:.1} s on average)",
                100.0 * ps / r
            ));
        }
        out.push(format!("{}.", parts.join(", ")));
    } else {
        out.push("the probe's cost was not recorded.".into());
    }
    let base_flops = t
        .backbone_flops
        .or_else(|| t.placements.iter().map(|p| p.flops).min())
        .filter(|f| *f > 0);
    if let Some(b) = base_flops {
        let ratio = |f: i64| f as f64 / b as f64;
        let finished: Vec<_> = t.placements.iter().filter(|p| p.test.is_some()).collect();
        let rec: Vec<f64> = finished
            .iter()
            .filter(|p| p.has_recurrent())
            .map(|p| ratio(p.flops))
            .collect();
        let fwd: Vec<f64> = finished
            .iter()
            .filter(|p| !p.has_recurrent() && p.method == Method::Adapters)
            .map(|p| ratio(p.flops))
            .collect();
        let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !rec.is_empty() {
            let min = rec.iter().copied().fold(f64::INFINITY, f64::min);
            let mut s = format!(
                "placements with recurrent edges ({}) cost {:.2}× to {:.2}× the backbone's forward FLOPs",
                rec.len(),
                min,
                max(&rec)
            );
            if !fwd.is_empty() {
                s.push_str(&format!(
                    ", forward-only placements at most {:.2}×",
                    max(&fwd)
                ));
            }
            out.push(s + ".");
        } else if !fwd.is_empty() {
            out.push(format!(
                "no finished placement has a recurrent edge; forward-only placements cost at most \
                 {:.2}× the backbone's forward FLOPs.",
                max(&fwd)
            ));
        }
    }
    out
}

/// The findings, each one sentence made from the report's own numbers, per task (`None`:
/// across tasks).
pub fn findings(a: &Analysis) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for t in &a.tasks {
        for s in task_findings(t) {
            out.push((Some(t.task.clone()), capitalise(&s)));
        }
    }
    if a.tasks.len() < 2 {
        out.push((
            None,
            "One task only: nothing can be said about whether the best placements carry over \
             between tasks."
                .into(),
        ));
    } else if a.cross.is_empty() {
        out.push((
            None,
            "Fewer than two tasks have a single-adapter sweep, so placements are not compared \
             across tasks."
                .into(),
        ));
    }
    for c in &a.cross {
        let s = match c.spearman {
            Some(s) if s.p.is_some_and(|p| p < 0.05) => format!(
                "Single-adapter accuracies of {} and {} correlate at ρ = {:.2} ({}, n = {}).",
                c.a,
                c.b,
                s.rho,
                p_is(s.p.unwrap_or(f64::NAN)),
                s.n
            ),
            Some(s) => format!(
                "Single-adapter accuracies of {} and {} show no significant correlation (ρ = {:.2}, {}, n = {}).",
                c.a,
                c.b,
                s.rho,
                s.p.map_or("p n/a".into(), p_is),
                s.n
            ),
            None => format!(
                "The cross-task correlation of {} and {} is undefined ({} common edges).",
                c.a, c.b, c.common_edges
            ),
        };
        out.push((None, s));
    }
    out
}

/// Capitalises a sentence unless it opens with a heuristic's name (`gga`, `top-k`).
fn capitalise(s: &str) -> String {
    let first = s.split([' ', ',']).next().unwrap_or("");
    if crate::analysis::CURVE_HEURISTICS.contains(&first) || first == "parallel-all" {
        return s.to_owned();
    }
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------- pages

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
    let mut files = vec![
        (
            "report.html".to_owned(),
            html(title, &a, &figs, &tabs, &finds),
        ),
        (
            "summary.md".to_owned(),
            markdown(title, &a, &figs, &tabs, &finds),
        ),
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
        tables: tabs.iter().map(|t| t.file.clone()).collect(),
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

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;\
max-width:1240px;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}\
.meta{color:#666}figure{margin:1.5em 0;padding:1em;border:1px solid #e3e3e3;border-radius:6px}\
figure h3{margin-top:0}figcaption{color:#444;font-style:italic;margin-top:.5em}\
.panel svg{max-width:100%;height:auto;display:block}.panel h4{margin:.6em 0 .2em}\
.skipped{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}\
.tablewrap{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:.5em 0}\
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}tr:nth-child(even) td{background:#fafafa}td.num{text-align:right;white-space:nowrap}\
.note{color:#555;font-size:.9em}";

fn html(
    title: &str,
    a: &Analysis,
    figs: &[Figure],
    tabs: &[TableData],
    finds: &[(Option<String>, String)],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(title),
        esc(title)
    );
    let _ = writeln!(
        h,
        "<p class=\"meta\">Tasks: {}. Accuracies are top-1 % on the test split, mean ± standard deviation over seeds. Tables are also in the CSV files beside this page.</p>",
        esc(&a
            .tasks
            .iter()
            .map(|t| t.task.as_str())
            .collect::<Vec<_>>()
            .join(", "))
    );
    h.push_str("<section id=\"findings\">\n<h2>Findings</h2>\n");
    let mut current: Option<&Option<String>> = None;
    for (task, s) in finds {
        if current != Some(task) {
            if current.is_some() {
                h.push_str("</ul>\n");
            }
            if a.tasks.len() > 1 || task.is_none() {
                let _ = writeln!(
                    h,
                    "<h3>{}</h3>",
                    task.as_ref()
                        .map_or("Across tasks".to_owned(), |t| format!("Task {}", esc(t)))
                );
            }
            h.push_str("<ul>\n");
            current = Some(task);
        }
        let _ = writeln!(h, "<li>{}</li>", esc(s));
    }
    if current.is_some() {
        h.push_str("</ul>\n");
    }
    h.push_str("</section>\n<section id=\"figures\">\n<h2>Figures</h2>\n");
    for f in figs {
        let _ = writeln!(
            h,
            "<figure class=\"figure\" id=\"figure-{0}\" data-figure=\"{0}\">\n<h3>Figure {0}. {1}</h3>",
            f.number,
            esc(&f.title)
        );
        for p in &f.panels {
            match p {
                Panel::Svg { heading, svg } => {
                    h.push_str("<div class=\"panel\">\n");
                    if let Some(hd) = heading {
                        let _ = writeln!(h, "<h4>{}</h4>", esc(hd));
                    }
                    h.push_str(svg.trim());
                    h.push_str("\n</div>\n");
                }
                Panel::Skipped { heading, reason } => {
                    h.push_str("<div class=\"panel\">\n");
                    if let Some(hd) = heading {
                        let _ = writeln!(h, "<h4>{}</h4>", esc(hd));
                    }
                    let _ = writeln!(
                        h,
                        "<p class=\"skipped\">Not drawn: {}.</p>\n</div>",
                        esc(reason)
                    );
                }
            }
        }
        let _ = writeln!(h, "<figcaption>{}</figcaption>\n</figure>", esc(&f.caption));
    }
    h.push_str("</section>\n<section id=\"tables\">\n<h2>Tables</h2>\n");
    for t in tabs {
        let _ = writeln!(
            h,
            "<h3 id=\"{}\">{}</h3>\n<p class=\"note\">{} (<code>{}</code>)</p>",
            esc(t.file.trim_end_matches(".csv")),
            esc(&t.title),
            esc(&t.note),
            esc(&t.file)
        );
        if t.rows.is_empty() {
            h.push_str("<p>None.</p>\n");
            continue;
        }
        h.push_str("<div class=\"tablewrap\"><table>\n<tr>");
        for c in &t.columns {
            let name = if c.acc {
                format!("{} (%)", c.name)
            } else {
                c.name.clone()
            };
            let _ = write!(h, "<th>{}</th>", esc(&name.replace('_', " ")));
        }
        h.push_str("</tr>\n");
        for row in t.shown_rows() {
            h.push_str("<tr>");
            for c in row {
                let class = if matches!(c, Cell::Text(_)) {
                    ""
                } else {
                    " class=\"num\""
                };
                let _ = write!(h, "<td{class}>{}</td>", esc(&c.display()));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table></div>\n");
    }
    h.push_str("</section>\n</body>\n</html>\n");
    h
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(
    title: &str,
    a: &Analysis,
    figs: &[Figure],
    tabs: &[TableData],
    finds: &[(Option<String>, String)],
) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# {title}\n");
    let _ = writeln!(
        m,
        "Tasks: {}. Accuracies are top-1 % on the test split, mean ± standard deviation over seeds. \
         Figures are in `report.html`; every table is also a CSV file.\n",
        a.tasks
            .iter()
            .map(|t| t.task.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    m.push_str("## Findings\n");
    let mut current: Option<&Option<String>> = None;
    for (task, s) in finds {
        if current != Some(task) {
            if a.tasks.len() > 1 || task.is_none() {
                let _ = writeln!(
                    m,
                    "\n### {}\n",
                    task.as_ref()
                        .map_or("Across tasks".to_owned(), |t| format!("Task {t}"))
                );
            } else {
                m.push('\n');
            }
            current = Some(task);
        }
        let _ = writeln!(m, "- {s}");
    }
    m.push_str("\n## Figures\n\n");
    for f in figs {
        let mut parts = Vec::new();
        for p in &f.panels {
            match p {
                Panel::Svg { heading, .. } => parts.push(match heading {
                    Some(hd) => format!("{hd}: drawn"),
                    None => "drawn".into(),
                }),
                Panel::Skipped { heading, reason } => parts.push(match heading {
                    Some(hd) => format!("{hd}: not drawn, {reason}"),
                    None => format!("not drawn: {reason}"),
                }),
            }
        }
        let _ = writeln!(
            m,
            "{}. **{}** ({}). {}",
            f.number,
            f.title,
            parts.join("; "),
            f.caption
        );
    }
    for t in tabs {
        let _ = writeln!(m, "\n## {}\n\n{} (`{}`)\n", t.title, t.note, t.file);
        if t.rows.is_empty() {
            m.push_str("None.\n");
            continue;
        }
        let names: Vec<String> = t
            .columns
            .iter()
            .map(|c| {
                md_cell(&if c.acc {
                    format!("{} (%)", c.name)
                } else {
                    c.name.clone()
                })
            })
            .collect();
        let _ = writeln!(m, "| {} |", names.join(" | "));
        let _ = writeln!(
            m,
            "|{}",
            t.columns.iter().map(|_| "---|").collect::<String>()
        );
        let shown = &t.shown_rows()[..t.shown_rows().len().min(MD_ROWS)];
        for row in shown {
            let cells: Vec<String> = row.iter().map(|c| md_cell(&c.display())).collect();
            let _ = writeln!(m, "| {} |", cells.join(" | "));
        }
        if t.rows.len() > shown.len() {
            let _ = writeln!(
                m,
                "\n({} more rows in `{}`.)",
                t.rows.len() - shown.len(),
                t.file
            );
        }
    }
    m
}
