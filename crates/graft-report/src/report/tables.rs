//! The tables of the report ([`TableData`]), each shown in the pages and written as CSV.

use std::collections::BTreeSet;

use super::findings::protocol_text;
use crate::analysis::{Analysis, Reference, SWEEP, TaskAnalysis};
use crate::fmt_num;
use crate::stats::{MeanStd, ci95_half_width};
use graft_tables::RANK_TOLERANCES;

const NOT_RECORDED: &str = "not recorded";

/// One cell of a table; [`Cell::Acc`] is two CSV columns (`<name>_mean`, `<name>_std`).
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Text(String),
    Int(Option<i64>),
    /// A number with this many decimals in the pages (full precision in CSV).
    Num(Option<f64>, usize),
    /// Accuracy in percent over seeds.
    Acc(Option<MeanStd>),
    /// Accuracy in percent over seeds with the half-width of its 95 % confidence interval
    /// (three CSV columns: `_mean`, `_std`, `_ci95`).
    AccCi(Option<MeanStd>),
    /// A correlation ("undefined" when missing).
    Rho(Option<f64>),
    /// A p-value (scientific notation below 10⁻⁴ in the pages).
    P(Option<f64>),
}

impl Cell {
    fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    pub(crate) fn display(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Int(Some(v)) => v.to_string(),
            Cell::Num(Some(v), d) if v.is_finite() => format!("{v:.d$}"),
            Cell::Acc(Some(m)) => fmt_acc(m),
            Cell::AccCi(Some(m)) => match ci95_half_width(m) {
                Some(h) => format!("{} (95 % CI ± {h:.1})", fmt_acc(m)),
                None => format!("{} (one seed: no interval)", fmt_acc(m)),
            },
            Cell::P(Some(p)) if *p < 1e-4 => format!("{p:.1e}"),
            Cell::P(Some(p)) => format!("{p:.4}"),
            Cell::P(None) | Cell::Rho(None) => "undefined".into(),
            Cell::Rho(Some(r)) => format!("{r:.3}"),
            Cell::Int(None) | Cell::Num(..) => NOT_RECORDED.into(),
            Cell::Acc(None) | Cell::AccCi(None) => "no finished run".into(),
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
            Cell::AccCi(m) => vec![
                m.map(|m| m.mean.to_string()).unwrap_or_default(),
                m.and_then(|m| m.std)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                m.as_ref()
                    .and_then(ci95_half_width)
                    .map(|h| h.to_string())
                    .unwrap_or_default(),
            ],
        }
    }
}

/// A column: its name, and whether it holds [`Cell::Acc`] (or, with `ci`, [`Cell::AccCi`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub acc: bool,
    pub ci: bool,
}

fn cols(names: &[&str]) -> Vec<Column> {
    names
        .iter()
        .map(|n| Column {
            name: (*n).to_owned(),
            acc: n.ends_with("accuracy"),
            ci: false,
        })
        .collect()
}

/// [`cols`] with every accuracy column holding [`Cell::AccCi`].
fn cols_ci(names: &[&str]) -> Vec<Column> {
    let mut c = cols(names);
    for col in &mut c {
        col.ci = col.acc;
    }
    c
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
                if c.ci {
                    vec![
                        format!("{}_mean", c.name),
                        format!("{}_std", c.name),
                        format!("{}_ci95", c.name),
                    ]
                } else if c.acc {
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

    pub(crate) fn shown_rows(&self) -> &[Vec<Cell>] {
        let k = self.shown.unwrap_or(self.rows.len()).min(self.rows.len());
        &self.rows[..k]
    }
}

pub(super) fn csv_line(fields: &[String]) -> String {
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

pub(crate) fn fmt_count(v: i64) -> String {
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
            let probe = t.data.probe.iter().find(|r| r.edge() == e);
            let mut row = vec![
                Cell::text(&t.task),
                Cell::Int(Some(e.i as i64)),
                Cell::Int(Some(e.j as i64)),
                Cell::text(e.kind().name()),
                Cell::Acc(Some(m)),
                Cell::Int(Some(m.n as i64)),
                Cell::text(if t.sweep.contains_key(&e) {
                    "yes"
                } else {
                    "no"
                }),
            ];
            row.extend(
                RANK_TOLERANCES
                    .iter()
                    .map(|(_, tol)| Cell::Int(probe.map(|r| r.rank_at(*tol) as i64))),
            );
            rows.push(row);
        }
    }
    let shown = (a.tasks.len() == 1).then_some(10);
    TableData {
        file: "single_adapter.csv".into(),
        title: "Single adapters, best first".into(),
        note: if shown.is_some() && rows.len() > 10 {
            format!(
                "The best 10 of {} edges trained alone; all of them (the data of figures 1 and \
                 6) are in single_adapter.csv. in_sweep: proposed by the single-sweep (the set \
                 the probe's scores are correlated with). rank@tol: the gradient's numerical \
                 rank at that relative tolerance, from the probe's singular values.",
                rows.len()
            )
        } else {
            "Every edge trained alone, best first per task: the data of figures 1 and 6. \
             in_sweep: proposed by the single-sweep (the set the probe's scores are correlated \
             with); the others are budget-1 placements of other heuristics. rank@tol: the \
             gradient's numerical rank at that relative tolerance, from the probe's singular \
             values."
                .into()
        },
        columns: cols(&[
            "task",
            "i",
            "j",
            "kind",
            "test_accuracy",
            "seeds_finished",
            "in_sweep",
            RANK_TOLERANCES[0].0,
            RANK_TOLERANCES[1].0,
            RANK_TOLERANCES[2].0,
        ]),
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
                    Cell::AccCi(Some(p.test)),
                    Cell::Int(Some(p.test.n as i64)),
                    Cell::Int(Some(p.placements as i64)),
                ]);
            }
        }
    }
    TableData {
        file: "budgets.csv".into(),
        title: "Accuracy by heuristic and budget".into(),
        note: "The data of figure 3: test accuracy in % (mean ± standard deviation, and the \
               half-width of the 95 % confidence interval of the mean, Student's t with runs − 1 \
               degrees of freedom) over every finished run at each budget (for random-k, over \
               seeds and draws; draws = distinct placements pooled)."
            .into(),
        columns: cols_ci(&[
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

fn baselines_table(a: &Analysis) -> TableData {
    let mut rows = Vec::new();
    for t in &a.tasks {
        let refs: [(&str, &Option<Reference>); 5] = [
            ("linear probe", &t.linear_probe),
            ("full fine-tuning", &t.full),
            ("parallel-all", &t.parallel_all),
            ("parallel-all on a random-init backbone", &t.random_init),
            ("lora", &t.lora),
        ];
        for (name, r) in refs {
            let Some(r) = r else { continue };
            rows.push(vec![
                Cell::text(&t.task),
                Cell::text(name),
                Cell::Int(Some(r.adapters)),
                Cell::Int(Some(r.params)),
                Cell::AccCi(Some(r.test)),
                Cell::Int(Some(r.test.n as i64)),
            ]);
        }
    }
    TableData {
        file: "baselines.csv".into(),
        title: "Baselines".into(),
        note: "Test accuracy in % over seeds: mean ± standard deviation and the half-width of \
               the 95 % confidence interval of the mean (Student's t with seeds − 1 degrees of \
               freedom; none with one seed)."
            .into(),
        columns: cols_ci(&[
            "task",
            "baseline",
            "adapters",
            "trainable_params",
            "test_accuracy",
            "seeds_finished",
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
                Cell::text(match &t.sweep_missing {
                    None => format!("{SWEEP} ({} edges)", t.sweep.len()),
                    Some(why) => format!("not measured: {why}"),
                }),
            ]);
        }
    }
    TableData {
        file: "correlations.csv".into(),
        title: "Probe scores against single-adapter accuracy (Spearman)".into(),
        note: "Spearman's ρ (average ranks for ties) of each probe score against the mean test \
               accuracy of the edge trained alone (rank@tol: the gradient's numerical rank at \
               that relative tolerance, recomputed from the probe's singular values; the data \
               of figures 2 and 6), over the edges of the single-sweep only \
               (chosen independently of the probe; the budget-1 placements of gga and top-k \
               were chosen by its score and are left out); two-sided p from Student's t with \
               n − 2 degrees of freedom. Empty: undefined (fewer than 3 edges or a constant \
               score)."
            .into(),
        columns: cols(&["task", "score", "rho", "p_value", "n", "edge_set"]),
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
            let c = t.data.cost.as_ref();
            let total_seconds = c.map(|c| c.total_seconds);
            let share = match (total_seconds, t.adapter_run_seconds) {
                (Some(p), Some(r)) if r > 0.0 => Some(p / r),
                _ => None,
            };
            vec![
                Cell::text(&t.task),
                Cell::Num(total_seconds, 2),
                Cell::Num(c.map(|c| c.forward_backward_seconds), 2),
                Cell::Num(c.map(|c| c.svd_seconds), 2),
                Cell::Num(c.map(|c| c.train_step_seconds), 3),
                Cell::Num(c.map(|c| c.cost_in_train_steps), 1),
                Cell::Num(t.epoch_seconds, 2),
                Cell::Num(t.adapter_run_seconds, 1),
                Cell::Num(share, 3),
                Cell::Int(c.map(|c| c.batches as i64)),
                Cell::Int(c.map(|c| c.batch as i64)),
                opt_text(c.map(|c| c.tokens.as_str())),
                opt_text(c.map(|c| c.head.as_str())),
                Cell::Num(c.map(|c| c.tolerance), 6),
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
        ci: false,
    }));
    let fmt_vec = |v: &[f64]| Some(v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(" "));
    type Getter = Box<dyn Fn(&TaskAnalysis) -> Option<String>>;
    let settings: Vec<(&str, Getter)> = vec![
        (
            "task (recorded)",
            Box::new(|t| summary(t).and_then(|s| s.task.clone())),
        ),
        ("protocol", Box::new(|t| Some(protocol_text(t)))),
        (
            "base model",
            Box::new(|t| summary(t).map(|s| s.base.clone())),
        ),
        (
            "preset",
            Box::new(|t| t.data.model.as_ref().map(|m| m.preset.clone())),
        ),
        (
            "classes",
            Box::new(|t| summary(t).map(|s| s.classes.to_string())),
        ),
        (
            "image size",
            Box::new(|t| pre(t).map(|p| p.image_size.to_string())),
        ),
        (
            "interpolation",
            Box::new(|t| pre(t).map(|p| p.interpolation.clone())),
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
                summary(t).map(|s| {
                    s.seeds
                        .iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            }),
        ),
        (
            "backend",
            Box::new(|t| summary(t).map(|s| s.backend.clone())),
        ),
        ("device", Box::new(|t| summary(t).map(|s| s.device.clone()))),
        (
            "bottleneck r",
            Box::new(|t| train(t).map(|x| x.bottleneck.to_string())),
        ),
        (
            "epochs",
            Box::new(|t| train(t).map(|x| x.epochs.to_string())),
        ),
        (
            "learning rate",
            Box::new(|t| train(t).map(|x| x.lr.to_string())),
        ),
        ("batch", Box::new(|t| train(t).map(|x| x.batch.to_string()))),
        (
            "weight decay",
            Box::new(|t| train(t).map(|x| x.weight_decay.to_string())),
        ),
        (
            "warm-up epochs",
            Box::new(|t| train(t).map(|x| x.warmup_epochs.to_string())),
        ),
        (
            "program version",
            Box::new(|t| summary(t).map(|s| s.program_version.clone())),
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

fn summary(t: &TaskAnalysis) -> Option<&graft_tables::FinetuneSummary> {
    t.data.summary.as_ref()
}

fn pre(t: &TaskAnalysis) -> Option<&graft_tables::Preprocessing> {
    summary(t).map(|s| &s.preprocessing)
}

pub(super) fn train(t: &TaskAnalysis) -> Option<&graft_tables::TrainSettings> {
    summary(t).map(|s| &s.train)
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
        baselines_table(a),
        correlations_table(a),
        single_table(a),
        curves_table(a),
        placements_table(a),
        failed_table(a),
        cost_table(a),
        setup_table(a),
    ];
    if a.tasks.len() > 1 {
        t.insert(2, cross_table(a));
    }
    t
}
