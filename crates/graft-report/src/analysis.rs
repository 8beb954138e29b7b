//! From the tables to the numbers the report shows: runs aggregated per placement
//! ([`PlacementStats`]), the single-adapter map, accuracy against budget per heuristic
//! ([`Series`]), probe scores against single-adapter accuracy and the cross-task
//! correlations. No I/O and no drawing here.
//!
//! The scores are [`SCORES`]: the gradient rank at the relative tolerances 1e-2, 1e-3 and
//! 1e-4, each recomputed from the probe's stored singular values with graft-tables' one
//! rank rule (whatever tolerance the probe's own `rank` column used), and the five continuous
//! scores of the probe table.
//!
//! The probe's scores are correlated only with the edges the `single-sweep` heuristic
//! trained ([`TaskAnalysis::sweep`]): those were chosen without looking at the probe. The
//! budget-1 placements of gga and top-k were chosen by the probe's own score, so pooling
//! them in would inflate ρ by selection; the heat map ([`TaskAnalysis::single`]) shows every
//! edge trained alone.
//!
//! Heuristics are known only through the proposals table: each row's `label` names it in
//! tables and legends, and every `budgeted` heuristic's rows make a curve, so a heuristic
//! added anywhere (a registry line, a command stage's script) is reported with no change
//! here.

use std::collections::{BTreeMap, BTreeSet};

use graft_graph::{Edge, EdgeKind};
use graft_tables::{Method, ProbeRow, ProposalRow, RunRow, RunStatus};

use crate::inputs::TaskData;
use crate::stats::{MeanStd, Spearman, mean_std, spearman};

/// The heuristic whose single-adapter placements are chosen independently of the probe.
pub const SWEEP: &str = graft_tables::SWEEP_HEURISTIC;

/// The probe scores correlated with single-adapter accuracy, in the report's order: the
/// numerical rank at three relative tolerances, recomputed from the stored singular values
/// ([`graft_tables::RANK_TOLERANCES`]), then the continuous scores of the probe table.
pub const SCORES: [&str; 8] = [
    "rank@1e-2",
    "rank@1e-3",
    "rank@1e-4",
    "frobenius",
    "spectral",
    "nuclear",
    "stable_rank",
    "effective_rank",
];

/// The value of report score `name` ([`SCORES`]) for one probe row: a rank at one of the
/// three tolerances from its singular values, else the probe table's column; `None` for a
/// name that is neither.
pub fn score_of(r: &ProbeRow, name: &str) -> Option<f64> {
    match graft_tables::RANK_TOLERANCES
        .iter()
        .find(|(n, _)| *n == name)
    {
        Some((_, tol)) => Some(r.rank_at(*tol) as f64),
        None => r.score(name),
    }
}

/// Whether report score `name` is a rank at one of the three tolerances.
pub fn is_rank(name: &str) -> bool {
    name.starts_with("rank@")
}

/// The relative tolerance of a rank score (`rank@1e-3` -> `1e-3`), as written in its name.
pub fn rank_tolerance(name: &str) -> Option<&str> {
    name.strip_prefix("rank@")
}

/// One run that did not give an accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedRun {
    pub placement_id: String,
    pub seed: i64,
    pub status: RunStatus,
    pub error: String,
}

/// All runs of one placement (or baseline), aggregated over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementStats {
    pub placement_id: String,
    pub method: Method,
    /// Labels of every proposal row naming this placement (sorted, distinct).
    pub heuristics: Vec<String>,
    pub edges: Vec<Edge>,
    pub adapters: i64,
    pub params: i64,
    pub flops: i64,
    /// Validation and test accuracy in percent over the seeds that finished.
    pub val: Option<MeanStd>,
    pub test: Option<MeanStd>,
    /// Test accuracy (%) of each finished run, `(seed, accuracy)`, for intervals.
    pub test_by_seed: Vec<(i64, f64)>,
    pub runs: usize,
    pub failed: Vec<FailedRun>,
    pub wall_seconds: Option<f64>,
}

impl PlacementStats {
    /// `2 parallel, 1 recurrent`; `none` without adapters.
    pub fn kinds_text(&self) -> String {
        let mut counts: BTreeMap<EdgeKind, usize> = BTreeMap::new();
        for e in &self.edges {
            *counts.entry(e.kind()).or_default() += 1;
        }
        if counts.is_empty() {
            return "none".into();
        }
        counts
            .iter()
            .map(|(k, c)| format!("{c} {}", k.name()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn edges_text(&self) -> String {
        if self.edges.is_empty() {
            return "none".into();
        }
        self.edges
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn has_recurrent(&self) -> bool {
        self.edges.iter().any(|e| e.kind() == EdgeKind::Recurrent)
    }

    /// The colour class of figure 5: the method for baselines, the edge kind when all
    /// edges share one, else `mixed, with recurrent` or `mixed, forward only`.
    pub fn category(&self) -> String {
        if self.method != Method::Adapters {
            return self.method.name().to_owned();
        }
        if self.heuristics.iter().any(|h| h == "parallel-all") {
            return "parallel-all".into();
        }
        let kinds: BTreeSet<EdgeKind> = self.edges.iter().map(|e| e.kind()).collect();
        match kinds.len() {
            0 => "no adapters".into(),
            1 => kinds
                .iter()
                .next()
                .map(|k| k.name())
                .unwrap_or("")
                .to_owned(),
            _ if self.has_recurrent() => "mixed, with recurrent".into(),
            _ => "mixed, forward only".into(),
        }
    }

    /// `ok` when every run finished, else e.g. `1 of 3 diverged`.
    pub fn status_text(&self) -> String {
        if self.failed.is_empty() {
            return "ok".into();
        }
        let mut by: BTreeMap<RunStatus, usize> = BTreeMap::new();
        for f in &self.failed {
            *by.entry(f.status).or_default() += 1;
        }
        by.iter()
            .map(|(s, c)| format!("{c} of {} {s}", self.runs))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One point of a heuristic's curve: every finished run of every placement the heuristic
/// proposed with this many adapters (seeds, and draws for `random-k`).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub adapters: i64,
    pub params: i64,
    pub test: MeanStd,
    /// Every finished run pooled, `(seed, accuracy %)`: a seed repeats across draws.
    pub values: Vec<(i64, f64)>,
    /// Distinct placements pooled (draws of `random-k`).
    pub placements: usize,
}

/// A heuristic's accuracy against the number of adapters.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// `gga`, `top-k`, ...
    pub heuristic: String,
    /// Legend label: the rows' `label` (`gga γ=0.6`).
    pub label: String,
    pub points: Vec<Point>,
}

/// A reference accuracy drawn as a horizontal line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    pub label: &'static str,
    pub test: MeanStd,
    /// `(seed, accuracy %)` of each finished run.
    pub by_seed: Vec<(i64, f64)>,
    pub adapters: i64,
    pub params: i64,
    pub flops: i64,
}

/// One probe score against single-adapter test accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreCorrelation {
    pub score: &'static str,
    /// (score, accuracy %, edge) for every edge of the sweep with both.
    pub points: Vec<(f64, f64, Edge)>,
    /// `None` when it cannot be computed (fewer than two pairs, a constant side).
    pub spearman: Option<Spearman>,
}

/// Everything computed for one task.
#[derive(Debug, Clone, Default)]
pub struct TaskAnalysis {
    pub task: String,
    pub nodes: usize,
    pub placements: Vec<PlacementStats>,
    /// Mean test accuracy (%) over seeds of every edge trained alone (the sweep and the
    /// budget-1 placements of every heuristic): the heat map.
    pub single: BTreeMap<Edge, MeanStd>,
    /// The edges the `single-sweep` heuristic trained alone (chosen independently of the
    /// probe): the only set the probe's scores are correlated with.
    pub sweep: BTreeMap<Edge, MeanStd>,
    /// Why the correlations were not measured (no sweep); `None` when they were.
    pub sweep_missing: Option<String>,
    pub series: Vec<Series>,
    pub parallel_all: Option<Reference>,
    pub linear_probe: Option<Reference>,
    pub full: Option<Reference>,
    /// Adapters on parallel-all over a randomly initialised backbone.
    pub random_init: Option<Reference>,
    /// LoRA on every block's query and value projections.
    pub lora: Option<Reference>,
    pub correlations: Vec<ScoreCorrelation>,
    pub runs: usize,
    pub failed: Vec<FailedRun>,
    /// Distinct seeds among the runs.
    pub seeds: Vec<i64>,
    /// Mean wall time of a finished adapter run (seconds).
    pub adapter_run_seconds: Option<f64>,
    /// Mean seconds per epoch, from the fine-tune manifest's run measurements.
    pub epoch_seconds: Option<f64>,
    /// Backbone forward FLOPs per image without adapters.
    pub backbone_flops: Option<i64>,
    pub data: TaskData,
}

impl TaskAnalysis {
    /// The best `k` single edges by mean test accuracy (ties by edge).
    pub fn best_single(&self, k: usize) -> Vec<(Edge, MeanStd)> {
        let mut v: Vec<(Edge, MeanStd)> = self.single.iter().map(|(e, m)| (*e, *m)).collect();
        v.sort_by(|a, b| b.1.mean.total_cmp(&a.1.mean).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// The single-sweep's spread against its seed noise; `None` without a sweep.
    pub fn sweep_noise(&self) -> Option<SweepNoise> {
        let means: Vec<f64> = self.sweep.values().map(|m| m.mean).collect();
        let lo = means.iter().copied().reduce(f64::min)?;
        let hi = means.iter().copied().reduce(f64::max)?;
        let stds: Vec<f64> = self.sweep.values().filter_map(|m| m.std).collect();
        Some(SweepNoise {
            edges: means.len(),
            lo,
            hi,
            repeated: stds.len(),
            mean_std: (!stds.is_empty()).then(|| stds.iter().sum::<f64>() / stds.len() as f64),
            max_std: stds.iter().copied().reduce(f64::max),
        })
    }

    /// Seeds per placement: the largest number of finished runs of any placement.
    pub fn max_seeds_per_placement(&self) -> usize {
        self.placements
            .iter()
            .filter_map(|p| p.test.map(|t| t.n))
            .max()
            .unwrap_or(0)
    }
}

/// How far the single-sweep's edges spread (mean test accuracy over seeds, in points) and
/// how much the same edge moves from seed to seed, on the sweep edges trained at two or more
/// seeds (all of them for a sweep at every seed; the repeated edges of a one-seed sweep).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SweepNoise {
    pub edges: usize,
    pub lo: f64,
    pub hi: f64,
    /// Sweep edges with a standard deviation (two or more finished seeds).
    pub repeated: usize,
    /// Mean and largest of their standard deviations.
    pub mean_std: Option<f64>,
    pub max_std: Option<f64>,
}

impl SweepNoise {
    pub fn spread(&self) -> f64 {
        self.hi - self.lo
    }
}

/// The cross-task correlation of single-adapter accuracies over the edges both swept.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossTask {
    pub a: String,
    pub b: String,
    pub spearman: Option<Spearman>,
    pub common_edges: usize,
}

/// The whole report's numbers.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub tasks: Vec<TaskAnalysis>,
    /// Every ordered pair of tasks with a sweep (a < b in task order), of the same replicate.
    pub cross: Vec<CrossTask>,
}

fn accuracy_pct(x: Option<f64>) -> Option<f64> {
    x.filter(|v| v.is_finite()).map(|v| 100.0 * v)
}

/// Aggregates one task.
pub fn analyse_task(data: TaskData) -> TaskAnalysis {
    let mut labels: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for p in &data.proposals {
        labels
            .entry(p.placement_id.as_str())
            .or_default()
            .insert(p.label.clone());
    }
    let mut by_placement: BTreeMap<&str, Vec<&RunRow>> = BTreeMap::new();
    for r in &data.runs {
        by_placement
            .entry(r.placement_id.as_str())
            .or_default()
            .push(r);
    }
    let mut placements = Vec::new();
    let mut failed_all = Vec::new();
    for (id, runs) in &by_placement {
        let first = runs[0];
        let ok: Vec<&&RunRow> = runs.iter().filter(|r| r.status.is_ok()).collect();
        let failed: Vec<FailedRun> = runs
            .iter()
            .filter(|r| !r.status.is_ok())
            .map(|r| FailedRun {
                placement_id: r.placement_id.clone(),
                seed: r.seed,
                status: r.status,
                error: r
                    .error
                    .clone()
                    .unwrap_or_else(|| "no error recorded".into()),
            })
            .collect();
        failed_all.extend(failed.iter().cloned());
        let heuristics = match labels.get(id) {
            Some(l) => l.iter().cloned().collect(),
            None if first.method != Method::Adapters => vec![first.method.name().to_owned()],
            None => vec!["not in proposals".into()],
        };
        placements.push(PlacementStats {
            placement_id: (*id).to_owned(),
            method: first.method,
            heuristics,
            edges: first.edges.iter().map(|e| e.edge()).collect(),
            adapters: first.adapters,
            params: first.trainable_params,
            flops: first.forward_flops,
            val: mean_std(ok.iter().filter_map(|r| accuracy_pct(r.val_accuracy))),
            test: mean_std(ok.iter().filter_map(|r| accuracy_pct(r.test_accuracy))),
            test_by_seed: ok
                .iter()
                .filter_map(|r| accuracy_pct(r.test_accuracy).map(|a| (r.seed, a)))
                .collect(),
            runs: runs.len(),
            failed,
            wall_seconds: mean_std(runs.iter().filter_map(|r| wall_seconds(&data, r)))
                .map(|m| m.mean),
        });
    }
    placements.sort_by(|a, b| {
        let rank = |p: &PlacementStats| match p.method {
            Method::LinearProbe => 0,
            Method::Full => 1,
            Method::Lora => 2,
            Method::Adapters | Method::AdaptersRandomInit => 3,
        };
        rank(a)
            .cmp(&rank(b))
            .then(a.adapters.cmp(&b.adapters))
            .then(a.edges.cmp(&b.edges))
            .then(a.placement_id.cmp(&b.placement_id))
    });

    let single: BTreeMap<Edge, MeanStd> = placements
        .iter()
        .filter(|p| p.method == Method::Adapters && p.edges.len() == 1)
        .filter_map(|p| p.test.map(|t| (p.edges[0], t)))
        .collect();
    let swept_ids: BTreeSet<&str> = data
        .proposals
        .iter()
        .filter(|p| p.heuristic == SWEEP && p.method == Method::Adapters && p.adapters == 1)
        .map(|p| p.placement_id.as_str())
        .collect();
    let sweep: BTreeMap<Edge, MeanStd> = placements
        .iter()
        .filter(|p| p.method == Method::Adapters && p.edges.len() == 1)
        .filter(|p| swept_ids.contains(p.placement_id.as_str()))
        .filter_map(|p| p.test.map(|t| (p.edges[0], t)))
        .collect();
    let sweep_missing = if !sweep.is_empty() {
        None
    } else if swept_ids.is_empty() {
        Some(format!(
            "task {} has no {SWEEP} proposal: the probe's scores are correlated only with edges \
             chosen independently of the probe, and the budget-1 placements of gga and top-k \
             were chosen by its score",
            data.task
        ))
    } else {
        Some(format!(
            "none of the {} {SWEEP} placements of task {} finished",
            swept_ids.len(),
            data.task
        ))
    };

    let reference = |label: &'static str, pick: &dyn Fn(&PlacementStats) -> bool| {
        placements.iter().filter(|p| pick(p)).find_map(|p| {
            p.test.map(|test| Reference {
                label,
                test,
                by_seed: p.test_by_seed.clone(),
                adapters: p.adapters,
                params: p.params,
                flops: p.flops,
            })
        })
    };
    let parallel_all = reference("parallel-all", &|p| {
        p.heuristics.iter().any(|h| h == "parallel-all")
    });
    let linear_probe = reference("linear probe", &|p| p.method == Method::LinearProbe);
    let full = reference("full fine-tuning", &|p| p.method == Method::Full);
    let random_init = reference("random-init", &|p| p.method == Method::AdaptersRandomInit);
    let lora = reference("lora", &|p| p.method == Method::Lora);

    let series = curves(&data.proposals, &data.runs);
    let correlations = SCORES
        .iter()
        .map(|&score| {
            let points: Vec<(f64, f64, Edge)> = data
                .probe
                .iter()
                .filter_map(|r| {
                    let acc = sweep.get(&r.edge())?;
                    let s = score_of(r, score)?;
                    s.is_finite().then_some((s, acc.mean, r.edge()))
                })
                .collect();
            let pairs: Vec<(f64, f64)> = points.iter().map(|(s, a, _)| (*s, *a)).collect();
            ScoreCorrelation {
                score,
                spearman: spearman(&pairs),
                points,
            }
        })
        .collect();

    let seeds: BTreeSet<i64> = data.runs.iter().map(|r| r.seed).collect();
    let adapter_run_seconds = mean_std(
        data.runs
            .iter()
            .filter(|r| r.status.is_ok() && r.method == Method::Adapters)
            .filter_map(|r| wall_seconds(&data, r)),
    )
    .map(|m| m.mean);
    let epoch_seconds = mean_std(
        data.measurements
            .iter()
            .flat_map(|m| m.epoch_seconds.iter().copied()),
    )
    .map(|m| m.mean);
    let backbone_flops = placements
        .iter()
        .find(|p| p.method == Method::LinearProbe)
        .map(|p| p.flops)
        .or_else(|| {
            data.proposals
                .iter()
                .find(|p| p.method == Method::LinearProbe)
                .map(|p| p.forward_flops)
        });
    TaskAnalysis {
        task: data.task.clone(),
        nodes: data.nodes(),
        placements,
        single,
        sweep,
        sweep_missing,
        series,
        parallel_all,
        linear_probe,
        full,
        random_init,
        lora,
        correlations,
        runs: data.runs.len(),
        failed: failed_all,
        seeds: seeds.into_iter().collect(),
        adapter_run_seconds,
        epoch_seconds,
        backbone_flops,
        data,
    }
}

/// The wall time run `r` took to train, as the fine-tune manifest measured it (`None` for a
/// run it measured nothing for: failed, or written before measurements left the tables).
fn wall_seconds(data: &TaskData, r: &RunRow) -> Option<f64> {
    data.measurements
        .iter()
        .find(|m| m.placement_id == r.placement_id && m.seed == r.seed)
        .and_then(|m| m.wall_seconds)
}

/// The placements a heuristic variant proposed at one budget, with their parameter counts.
type Budget<'a> = (BTreeSet<&'a str>, Vec<i64>);

/// A heuristic variant, `(heuristic, label)`, with its placements by number of adapters.
type Variant<'a> = ((&'a str, &'a str), BTreeMap<i64, Budget<'a>>);

/// Accuracy against the number of adapters for each budgeted heuristic and label, in the
/// order they first appear in the proposals table.
fn curves(proposals: &[ProposalRow], runs: &[RunRow]) -> Vec<Series> {
    let mut acc: BTreeMap<&str, Vec<(i64, f64)>> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.status.is_ok()) {
        if let Some(a) = accuracy_pct(r.test_accuracy) {
            acc.entry(r.placement_id.as_str())
                .or_default()
                .push((r.seed, a));
        }
    }
    // (heuristic, label) -> adapters -> (placement ids, params), in order of appearance.
    let mut variants: Vec<Variant> = Vec::new();
    for p in proposals
        .iter()
        .filter(|p| p.budgeted && p.method == Method::Adapters)
    {
        let key = (p.heuristic.as_str(), p.label.as_str());
        let k = match variants.iter().position(|(v, _)| *v == key) {
            Some(k) => k,
            None => {
                variants.push((key, BTreeMap::new()));
                variants.len() - 1
            }
        };
        let slot = variants[k].1.entry(p.adapters).or_default();
        if slot.0.insert(p.placement_id.as_str()) {
            slot.1.push(p.trainable_params);
        }
    }
    let mut out = Vec::new();
    for ((heuristic, label), by_budget) in variants {
        let points: Vec<Point> = by_budget
            .into_iter()
            .filter_map(|(adapters, (ids, params))| {
                let values: Vec<(i64, f64)> = ids
                    .iter()
                    .flat_map(|id| acc.get(id).into_iter().flatten().copied())
                    .collect();
                let test = mean_std(values.iter().map(|v| v.1))?;
                let placements = ids.iter().filter(|id| acc.contains_key(*id)).count();
                let params = params.iter().sum::<i64>() / params.len().max(1) as i64;
                Some(Point {
                    adapters,
                    params,
                    test,
                    values,
                    placements,
                })
            })
            .collect();
        if !points.is_empty() {
            out.push(Series {
                heuristic: heuristic.to_owned(),
                label: label.to_owned(),
                points,
            });
        }
    }
    out
}

/// Aggregates every task and the cross-task correlations (between the tasks of one
/// replicate, when the tasks belong to replicates).
pub fn analyse(tasks: Vec<TaskData>) -> Analysis {
    let tasks: Vec<TaskAnalysis> = tasks.into_iter().map(analyse_task).collect();
    let mut cross = Vec::new();
    for (k, a) in tasks.iter().enumerate() {
        for b in &tasks[k + 1..] {
            let same_replicate = a.data.replicate.as_ref().map(|r| &r.value)
                == b.data.replicate.as_ref().map(|r| &r.value);
            if a.single.is_empty() || b.single.is_empty() || !same_replicate {
                continue;
            }
            let pairs: Vec<(f64, f64)> = a
                .single
                .iter()
                .filter_map(|(e, x)| b.single.get(e).map(|y| (x.mean, y.mean)))
                .collect();
            cross.push(CrossTask {
                a: a.task.clone(),
                b: b.task.clone(),
                spearman: spearman(&pairs),
                common_edges: pairs.len(),
            });
        }
    }
    Analysis { tasks, cross }
}
