//! The claims section: the seed paper's claims about the method, each estimated on every
//! replicate the report has and pooled over them, with a 95 % interval and a verdict.
//!
//! - **C1** placement matters: the share of the single-adapter sweep's variance that its
//!   edges explain beyond seed noise (an F ratio against the seed noise of sweep edges
//!   trained at several seeds).
//! - **C2** the gradient's rank predicts accuracy: Spearman's ρ of each probe score with
//!   single-adapter accuracy on the sweep's edges.
//! - **C3** the extended space helps: the best long-range or recurrent single edge against
//!   the best parallel one, at equal numbers of edges; the best random-k draw against
//!   parallel-all at its adapter count, where the pipeline trained one.
//! - **C4** gga against parallel-all, per budget (paired by seed within a replicate).
//! - **C5** gga against top-k (is the distance discount worth anything) and against
//!   random-k (is the rank worth anything), per budget.
//! - **C6** the best placement depends on the task: Spearman's ρ between two tasks'
//!   single-adapter maps on the sweep's edges, read against ρ = 0.5.
//!
//! **Replicates.** The replicate is the report's `replicates` axis when it has one (the
//! backbone of `pipelines/replicates.toml`: claims are then per task, pooled over
//! backbones), else the task (the default's two targets, VTAB-1k's 19 tasks: all on one
//! backbone). A replicate with a run that did not finish is left out of every claim, named
//! with the reason. **Pooling** ([`pool`]): a difference is pooled as the t interval of the
//! replicates' estimates; a correlation by Fisher's z with a random-effects variance;
//! correlations between pairs of tasks of one backbone by a jackknife over tasks.
//! **Verdicts** come from intervals only: "holds" when the interval lies on the claim's side
//! of its null (0; 0.5 for C6), "does not hold" when it lies wholly on the other side,
//! "cannot tell" otherwise or without an interval.

mod estimates;
mod forest;
pub mod pool;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::analysis::{Analysis, TaskAnalysis};
use pool::Interval;

pub use forest::forest_svgs;
pub use render::{csv, html, markdown};

/// One of the seed paper's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    C1,
    C2,
    C3,
    C4,
    C5,
    C6,
}

impl Claim {
    pub const ALL: [Claim; 6] = [
        Claim::C1,
        Claim::C2,
        Claim::C3,
        Claim::C4,
        Claim::C5,
        Claim::C6,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Claim::C1 => "C1",
            Claim::C2 => "C2",
            Claim::C3 => "C3",
            Claim::C4 => "C4",
            Claim::C5 => "C5",
            Claim::C6 => "C6",
        }
    }

    /// The claim as the report states it.
    pub fn statement(self) -> &'static str {
        match self {
            Claim::C1 => "placement matters: single edges differ by more than seed noise",
            Claim::C2 => "the probe's score predicts single-adapter accuracy (ρ > 0)",
            Claim::C3 => "the extended space (long-range, recurrent) beats parallel edges",
            Claim::C4 => "gga beats parallel-all",
            Claim::C5 => "gga beats top-k (the discount) and random-k (the rank)",
            Claim::C6 => {
                "the best placement depends on the task: two tasks' single-adapter maps share \
                 little (ρ < 0.5)"
            }
        }
    }

    /// The value an interval is read against, and whether the claim holds above it.
    pub fn null(self) -> (f64, bool) {
        match self {
            Claim::C6 => (0.5, false),
            _ => (0.0, true),
        }
    }
}

/// What an interval says of a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    DoesNotHold,
    CannotTell,
}

impl Verdict {
    pub fn text(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::DoesNotHold => "does not hold",
            Verdict::CannotTell => "cannot tell",
        }
    }

    /// The verdict of `claim` on an interval; "cannot tell" without one.
    pub fn of(claim: Claim, ci: Option<(f64, f64)>) -> Verdict {
        let (null, holds_above) = claim.null();
        let Some((lo, hi)) = ci else {
            return Verdict::CannotTell;
        };
        let (above, below) = (lo > null, hi < null);
        match (holds_above, above, below) {
            (true, true, _) | (false, _, true) => Verdict::Holds,
            (true, _, true) | (false, true, _) => Verdict::DoesNotHold,
            _ => Verdict::CannotTell,
        }
    }
}

/// One replicate's estimate of one comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The replicate (`backbone 3`, `textures`, `textures vs colours`).
    pub replicate: String,
    pub value: f64,
    /// The 95 % interval; `None` where none exists (one seed).
    pub ci: Option<(f64, f64)>,
    /// How the interval was made (`paired over 3 seeds`).
    pub basis: String,
    /// The pairs a correlation is over; `None` for a difference.
    pub pairs: Option<usize>,
    pub verdict: Verdict,
}

/// One claim on one comparison in one scope, per replicate and pooled.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimRow {
    pub claim: Claim,
    /// The task the replicates share (`textures`), or `all tasks`.
    pub scope: String,
    /// What is compared (`gga γ=0.6 vs parallel-all, 3 adapters`, `rank@1e-3`).
    pub comparison: String,
    /// The estimate's unit: `points`, `ρ` or `% of variance`.
    pub unit: &'static str,
    pub estimates: Vec<Estimate>,
    /// Replicates that have no estimate, with the reason.
    pub not_measured: Vec<(String, String)>,
    /// Over the replicates; `None` with fewer than two.
    pub pooled: Option<Interval>,
    /// How it was pooled, or why it was not.
    pub pooled_basis: String,
    /// The pooled verdict; with one replicate, that replicate's.
    pub verdict: Verdict,
}

impl ClaimRow {
    /// `4 of 5 above 0, 2 hold alone`; `no estimate` without one.
    pub fn agreement(&self) -> String {
        if self.estimates.is_empty() {
            return "no estimate".into();
        }
        let (null, above) = self.claim.null();
        let side = |v: f64| if above { v > null } else { v < null };
        let on_side = self.estimates.iter().filter(|e| side(e.value)).count();
        let alone = self
            .estimates
            .iter()
            .filter(|e| e.verdict == Verdict::Holds)
            .count();
        format!(
            "{on_side} of {} {} {}, {alone} hold alone",
            self.estimates.len(),
            if above { "above" } else { "below" },
            fmt_null(null)
        )
    }
}

fn fmt_null(v: f64) -> String {
    if v == 0.0 { "0".into() } else { format!("{v}") }
}

/// The claims of a report.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    /// What a replicate is: `backbone`, or `task`.
    pub axis: String,
    /// Every replicate, in order, left-out ones included.
    pub replicates: Vec<String>,
    /// Replicates left out of every claim, with the reason (a run that did not finish).
    pub left_out: Vec<(String, String)>,
    /// What the verdicts are about.
    pub note: String,
    pub rows: Vec<ClaimRow>,
}

/// A group of replicates whose estimates pool: the backbones of one task, or the tasks.
struct Scope<'a> {
    name: String,
    units: Vec<(String, &'a TaskAnalysis)>,
}

/// Why a task is left out of the claims: a run that did not finish, or no runs.
fn left_out_reason(t: &TaskAnalysis) -> Option<String> {
    if t.runs == 0 {
        return Some("no fine-tuning runs".into());
    }
    let f = t.failed.first()?;
    Some(format!(
        "{} of {} runs did not finish (first: placement {} seed {} {}: {})",
        t.failed.len(),
        t.runs,
        f.placement_id,
        f.seed,
        f.status.name(),
        f.error
    ))
}

/// The replicate axis, the scopes, every replicate's name, and the tasks left out with why.
type Layout<'a> = (String, Vec<Scope<'a>>, Vec<String>, Vec<(String, String)>);

/// The replicate axis, the scopes with their usable replicates, and those left out.
fn scopes(a: &Analysis) -> Layout<'_> {
    let axis = a
        .tasks
        .iter()
        .find_map(|t| t.data.replicate.as_ref().map(|r| r.axis.clone()));
    let mut left_out = Vec::new();
    let mut names = Vec::new();
    let mut scopes: Vec<Scope> = Vec::new();
    for t in &a.tasks {
        let (scope, unit) = match (&axis, &t.data.replicate) {
            (Some(_), Some(r)) => (r.task.clone(), r.label()),
            _ if a.tasks.len() == 1 => (t.task.clone(), t.task.clone()),
            _ => ("all tasks".to_owned(), t.task.clone()),
        };
        if !names.contains(&unit) {
            names.push(unit.clone());
        }
        if let Some(why) = left_out_reason(t) {
            left_out.push((t.task.clone(), why));
            continue;
        }
        match scopes.iter_mut().find(|s| s.name == scope) {
            Some(s) => s.units.push((unit, t)),
            None => scopes.push(Scope {
                name: scope,
                units: vec![(unit, t)],
            }),
        }
    }
    (
        axis.unwrap_or_else(|| "task".into()),
        scopes,
        names,
        left_out,
    )
}

/// What the verdicts are about, from the replicate axis and the number of replicates.
fn note(axis: &str, replicates: usize, tasks: usize) -> String {
    let method = "For claims about the method, `make pipeline TASK=replicates` runs the \
                  embedded default's experiment over five pretrained backbones.";
    if axis != "task" {
        return format!(
            "The replicate is the {axis}: every claim is estimated on each of the \
             {replicates} {axis}s and pooled over them, per task; the pooled interval's unit \
             is the {axis}."
        );
    }
    if tasks == 1 {
        return format!(
            "One task on one backbone: every verdict is this replicate's alone, about this \
             pretrained backbone and this task; nothing is pooled. {method}"
        );
    }
    format!(
        "The replicate is the task ({tasks} tasks, all on one pretrained backbone): the \
         verdicts are about this backbone, pooled over its tasks. {method}"
    )
}

/// Every claim on every scope of `a`.
pub fn claims(a: &Analysis) -> Claims {
    let (axis, scopes, replicates, left_out) = scopes(a);
    let tasks = a
        .tasks
        .iter()
        .map(|t| t.data.base_task())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let replicate_count = if axis == "task" {
        tasks
    } else {
        replicates.len()
    };
    let mut rows = Vec::new();
    for s in &scopes {
        rows.extend(scope_rows(s, &axis));
    }
    rows.extend(estimates::task_dependence(&scopes, &axis));
    rows.sort_by_key(|r| r.claim);
    Claims {
        note: note(&axis, replicate_count, tasks),
        axis,
        replicates,
        left_out,
        rows,
    }
}

/// Claims C1 to C5 on one scope: each replicate's estimates merged by comparison, pooled.
fn scope_rows(s: &Scope, axis: &str) -> Vec<ClaimRow> {
    // (claim, comparison) in order of first appearance -> (unit, estimates, not measured).
    type Acc = (&'static str, Vec<Estimate>, Vec<(String, String)>);
    let mut order: Vec<(Claim, String)> = Vec::new();
    let mut acc: BTreeMap<(Claim, String), Acc> = BTreeMap::new();
    for (unit, t) in &s.units {
        for m in estimates::of_task(t) {
            let key = (m.claim, m.comparison.clone());
            if !acc.contains_key(&key) {
                order.push(key.clone());
            }
            let slot = acc.entry(key).or_insert((m.unit, Vec::new(), Vec::new()));
            match m.result {
                Ok(v) => slot.1.push(Estimate {
                    replicate: unit.clone(),
                    value: v.value,
                    ci: v.ci,
                    basis: v.basis,
                    pairs: v.pairs,
                    verdict: Verdict::of(m.claim, v.ci),
                }),
                Err(why) => slot.2.push((unit.clone(), why)),
            }
        }
    }
    order
        .into_iter()
        .filter_map(|key| {
            let (unit, estimates, not_measured) = acc.remove(&key)?;
            let pooled = if key.0 == Claim::C2 {
                pool::pool_correlations(&correlation_inputs(&estimates))
            } else {
                pool::pool_mean(&estimates.iter().map(|e| e.value).collect::<Vec<_>>())
            };
            let how = if key.0 == Claim::C2 {
                "Fisher z, random effects"
            } else {
                "t over replicate estimates"
            };
            let draft = Draft {
                claim: key.0,
                scope: s.name.clone(),
                comparison: key.1,
                unit,
                estimates,
                not_measured,
            };
            Some(row(draft, pooled, how, axis))
        })
        .collect()
}

/// `(ρ, n)` of correlation estimates.
pub(super) fn correlation_inputs(estimates: &[Estimate]) -> Vec<(f64, usize)> {
    estimates
        .iter()
        .filter_map(|e| Some((e.value, e.pairs?)))
        .collect()
}

/// A row before pooling.
pub(super) struct Draft {
    pub claim: Claim,
    pub scope: String,
    pub comparison: String,
    pub unit: &'static str,
    pub estimates: Vec<Estimate>,
    pub not_measured: Vec<(String, String)>,
}

/// The row of `d` with its pooled interval (made `how`) and verdict; `axis` names a
/// replicate in the basis.
pub(super) fn row(d: Draft, pooled: Option<Interval>, how: &str, axis: &str) -> ClaimRow {
    let (pooled_basis, verdict) = match (&pooled, d.estimates.as_slice()) {
        (Some(p), e) => (
            format!("{how}, {} {axis}s", e.len()),
            Verdict::of(d.claim, Some((p.lo, p.hi))),
        ),
        (None, [one]) => (
            format!(
                "one {axis}: no pooled interval; the verdict is that of {}",
                one.replicate
            ),
            one.verdict,
        ),
        (None, []) => ("not measured on any replicate".into(), Verdict::CannotTell),
        (None, _) => (
            format!("{how}: too few estimates with an interval to pool"),
            Verdict::CannotTell,
        ),
    };
    ClaimRow {
        claim: d.claim,
        scope: d.scope,
        comparison: d.comparison,
        unit: d.unit,
        estimates: d.estimates,
        not_measured: d.not_measured,
        pooled,
        pooled_basis,
        verdict,
    }
}
