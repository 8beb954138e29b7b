//! Each replicate's estimate of each claim, from one task's analysis.

use std::collections::BTreeMap;

use graft_graph::{Edge, EdgeKind};
use graft_tables::Method;

use super::pool::{self, Interval};
use super::{Claim, ClaimRow, Estimate, Scope, Verdict};
use crate::analysis::{SCORES, Series, TaskAnalysis};
use crate::stats::{Comparison, compare_means, f_quantile, mean_std, student_t_quantile};

/// An estimate and its interval, with how it was made.
pub(super) struct Value {
    pub value: f64,
    pub ci: Option<(f64, f64)>,
    pub basis: String,
    /// The pairs a correlation is over.
    pub pairs: Option<usize>,
}

fn value(value: f64, ci: Option<(f64, f64)>, basis: String) -> Value {
    Value {
        value,
        ci,
        basis,
        pairs: None,
    }
}

/// One comparison measured on one replicate, or why it could not be.
pub(super) struct Measured {
    pub claim: Claim,
    pub comparison: String,
    pub unit: &'static str,
    pub result: Result<Value, String>,
}

const POINTS: &str = "points";
const RHO: &str = "ρ";
const SHARE: &str = "% of variance";

/// Claims C1 to C5 on one task.
pub(super) fn of_task(t: &TaskAnalysis) -> Vec<Measured> {
    let mut out = vec![Measured {
        claim: Claim::C1,
        comparison: "share of the sweep's variance from the edge".into(),
        unit: SHARE,
        result: placement_matters(t),
    }];
    out.extend(SCORES.iter().map(|score| Measured {
        claim: Claim::C2,
        comparison: (*score).to_owned(),
        unit: RHO,
        result: rank_predicts(t, score),
    }));
    out.push(Measured {
        claim: Claim::C3,
        comparison: "best long-range or recurrent edge vs best parallel edge".into(),
        unit: POINTS,
        result: extended_single(t),
    });
    out.push(extended_random(t));
    out.extend(against_parallel_all(t));
    out.extend(against_heuristics(t));
    out
}

/// Test accuracy (%) by seed of every sweep edge trained alone.
fn sweep_runs(t: &TaskAnalysis) -> BTreeMap<Edge, Vec<(i64, f64)>> {
    t.placements
        .iter()
        .filter(|p| p.method == Method::Adapters && p.edges.len() == 1)
        .filter(|p| t.sweep.contains_key(&p.edges[0]))
        .map(|p| (p.edges[0], p.test_by_seed.clone()))
        .collect()
}

/// The seed most sweep edges finished at (the sweep's own seed), with each edge's accuracy
/// at it.
fn at_common_seed(runs: &BTreeMap<Edge, Vec<(i64, f64)>>) -> Option<(i64, Vec<(Edge, f64)>)> {
    let mut count: BTreeMap<i64, usize> = BTreeMap::new();
    for s in runs.values().flatten().map(|v| v.0) {
        *count.entry(s).or_default() += 1;
    }
    let seed = count
        .iter()
        .max_by_key(|(s, c)| (**c, -**s))
        .map(|(s, _)| *s)?;
    let values = runs
        .iter()
        .filter_map(|(e, v)| v.iter().find(|x| x.0 == seed).map(|x| (*e, x.1)))
        .collect();
    Some((seed, values))
}

/// The pooled within-edge variance of sweep edges trained at two or more seeds, with its
/// degrees of freedom and the number of such edges.
fn seed_noise(runs: &BTreeMap<Edge, Vec<(i64, f64)>>) -> Option<(f64, usize, usize)> {
    let (mut ss, mut df, mut edges) = (0.0, 0usize, 0usize);
    for v in runs.values().filter(|v| v.len() >= 2) {
        let m = mean_std(v.iter().map(|x| x.1))?;
        ss += m.std.unwrap_or(0.0).powi(2) * (m.n - 1) as f64;
        df += m.n - 1;
        edges += 1;
    }
    (df > 0).then(|| (ss / df as f64, df, edges))
}

const NO_NOISE: &str = "no sweep edge finished at two or more seeds, so the seed noise is not \
                        measured (the fine-tune stage's sweep_repeats trains some at every seed)";

/// C1: the share of the variance of the sweep's edges (one run each, at the sweep's seed)
/// beyond seed noise, 100 (1 − 1/θ) with θ = (σ²_edge + σ²_seed) / σ²_seed, and its interval
/// from F's quantiles.
fn placement_matters(t: &TaskAnalysis) -> Result<Value, String> {
    let runs = sweep_runs(t);
    if runs.is_empty() {
        return Err(t
            .sweep_missing
            .clone()
            .unwrap_or("no sweep edge finished".into()));
    }
    let (seed, values) = at_common_seed(&runs).ok_or("no sweep edge finished")?;
    if values.len() < 3 {
        return Err(format!(
            "{} sweep edges finished at seed {seed}; C1 needs 3",
            values.len()
        ));
    }
    let (noise, df2, repeated) = seed_noise(&runs).ok_or(NO_NOISE)?;
    if noise <= 0.0 {
        return Err("the repeated sweep edges gave the same accuracy at every seed".into());
    }
    let between = mean_std(values.iter().map(|v| v.1))
        .and_then(|m| m.std)
        .ok_or("too few sweep edges")?
        .powi(2);
    let (d1, d2) = ((values.len() - 1) as f64, df2 as f64);
    let f = between / noise;
    let share = |theta: f64| 100.0 * (1.0 - 1.0 / theta);
    let lo = share(f / f_quantile(0.975, d1, d2));
    let hi = share(f / f_quantile(0.025, d1, d2));
    let basis = format!(
        "F = {f:.2} on ({d1}, {d2}) df: {} edges at seed {seed}, seed noise from {repeated} \
         edges trained at several seeds",
        values.len()
    );
    Ok(value(share(f), Some((lo, hi)), basis))
}

/// C2: Spearman's ρ of one probe score with single-adapter accuracy on the sweep.
fn rank_predicts(t: &TaskAnalysis, score: &str) -> Result<Value, String> {
    if let Some(why) = &t.sweep_missing {
        return Err(why.clone());
    }
    let c = t
        .correlations
        .iter()
        .find(|c| c.score == score)
        .ok_or_else(|| format!("no {score} in the probe table"))?;
    let s = c.spearman.ok_or_else(|| {
        format!("undefined: {score} is the same on every sweep edge, or too few edges")
    })?;
    let ci = pool::spearman_interval(s.rho, s.n).map(|i| (i.lo, i.hi));
    let p = s.p.map_or("p n/a".into(), crate::figures::p_is);
    Ok(Value {
        pairs: Some(s.n),
        ..value(s.rho, ci, format!("n = {} sweep edges, {p}", s.n))
    })
}

/// The expected largest of `m` values drawn without replacement from `xs`: the mean of the
/// best value over every subset of size m, Σᵢ x₍ᵢ₎ C(i − 1, m − 1) / C(N, m).
pub(super) fn expected_max(xs: &[f64], m: usize) -> Option<f64> {
    let n = xs.len();
    if m == 0 || m > n {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    // p_i = C(i − 1, m − 1) / C(n, m) for i = m..=n (1-based), by the ratio of successive
    // terms: p_{i+1} / p_i = i / (i − m + 1).
    let ln_choose = |a: usize, b: usize| {
        crate::stats::ln_gamma(a as f64 + 1.0)
            - crate::stats::ln_gamma(b as f64 + 1.0)
            - crate::stats::ln_gamma((a - b) as f64 + 1.0)
    };
    let total = ln_choose(n, m);
    Some(
        (m..=n)
            .map(|i| v[i - 1] * (ln_choose(i - 1, m - 1) - total).exp())
            .sum(),
    )
}

/// C3, single edges: the best of m long-range or recurrent sweep edges against the best of m
/// parallel ones (m the smaller count; the best of a random m-subset where a kind has more),
/// one run each at the sweep's seed, ± the seed noise of two runs.
fn extended_single(t: &TaskAnalysis) -> Result<Value, String> {
    let runs = sweep_runs(t);
    let (seed, values) = at_common_seed(&runs).ok_or("no sweep edge finished")?;
    let kind = |want: &dyn Fn(EdgeKind) -> bool| -> Vec<f64> {
        values
            .iter()
            .filter(|(e, _)| want(e.kind()))
            .map(|v| v.1)
            .collect()
    };
    let par = kind(&|k| k == EdgeKind::Parallel);
    let ext = kind(&|k| matches!(k, EdgeKind::LongRange | EdgeKind::Recurrent));
    let m = par.len().min(ext.len());
    if m == 0 {
        return Err(format!(
            "the sweep has {} parallel and {} long-range or recurrent edges at seed {seed}",
            par.len(),
            ext.len()
        ));
    }
    let d = expected_max(&ext, m).unwrap_or(f64::NAN) - expected_max(&par, m).unwrap_or(f64::NAN);
    let (noise, df, _) = seed_noise(&runs).ok_or(NO_NOISE)?;
    let h = student_t_quantile(0.05, df as f64) * (2.0 * noise).sqrt();
    let basis = format!(
        "best of {m} of {} extended against best of {m} of {} parallel edges at seed {seed}; \
         ± seed noise of one run each ({df} df)",
        ext.len(),
        par.len()
    );
    Ok(value(d, Some((d - h, d + h)), basis))
}

/// An estimate from the interval of a difference of means over seeds.
fn from_comparison(c: Comparison) -> Result<Value, String> {
    match c {
        Comparison::Interval(d) => Ok(value(
            d.diff,
            Some((d.lo, d.hi)),
            if d.paired {
                format!("paired over {} seeds", d.n_a)
            } else {
                format!("Welch, {} and {} runs", d.n_a, d.n_b)
            },
        )),
        Comparison::OneSeed { diff, .. } => Ok(value(diff, None, "one seed: no interval".into())),
        Comparison::Missing => Err("a side has no finished run".into()),
    }
}

/// C3, placements: the best random-k draw with as many adapters as parallel-all against it.
fn extended_random(t: &TaskAnalysis) -> Measured {
    let comparison = "best random-k draw vs parallel-all, as many adapters".to_owned();
    let result = (|| {
        let pa = t.parallel_all.as_ref().ok_or("no parallel-all run")?;
        let labels: Vec<&str> = t
            .series
            .iter()
            .filter(|s| s.heuristic == "random-k")
            .map(|s| s.label.as_str())
            .collect();
        let best = t
            .placements
            .iter()
            .filter(|p| p.adapters == pa.adapters && p.method == Method::Adapters)
            .filter(|p| p.heuristics.iter().any(|h| labels.contains(&h.as_str())))
            .filter_map(|p| p.test.map(|m| (m.mean, p)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, p)| p)
            .ok_or(format!(
                "no random-k placement with {} adapters (parallel-all's count) was trained; \
                 give the proposals that budget",
                pa.adapters
            ))?;
        from_comparison(compare_means(&best.test_by_seed, &pa.by_seed))
    })();
    Measured {
        claim: Claim::C3,
        comparison,
        unit: POINTS,
        result,
    }
}

fn plural(k: i64) -> &'static str {
    if k == 1 { "" } else { "s" }
}

fn gga_series(t: &TaskAnalysis) -> impl Iterator<Item = &Series> {
    t.series.iter().filter(|s| s.heuristic == "gga")
}

/// C4: every gga budget against parallel-all.
fn against_parallel_all(t: &TaskAnalysis) -> Vec<Measured> {
    let mut out = Vec::new();
    for s in gga_series(t) {
        for p in &s.points {
            out.push(Measured {
                claim: Claim::C4,
                comparison: format!(
                    "{} vs parallel-all, {} adapter{}",
                    s.label,
                    p.adapters,
                    plural(p.adapters)
                ),
                unit: POINTS,
                result: match &t.parallel_all {
                    Some(pa) => from_comparison(compare_means(&p.values, &pa.by_seed)),
                    None => Err("no parallel-all run".into()),
                },
            });
        }
    }
    out
}

/// C5: every gga budget against top-k and random-k at the same budget.
fn against_heuristics(t: &TaskAnalysis) -> Vec<Measured> {
    let mut out = Vec::new();
    for s in gga_series(t) {
        for other in ["top-k", "random-k"] {
            for o in t.series.iter().filter(|o| o.heuristic == other) {
                for p in &s.points {
                    let Some(q) = o.points.iter().find(|q| q.adapters == p.adapters) else {
                        continue;
                    };
                    out.push(Measured {
                        claim: Claim::C5,
                        comparison: format!(
                            "{} vs {}, {} adapter{}",
                            s.label,
                            o.label,
                            p.adapters,
                            plural(p.adapters)
                        ),
                        unit: POINTS,
                        result: from_comparison(compare_means(&p.values, &q.values)),
                    });
                }
            }
        }
    }
    out
}

/// Spearman's ρ of two tasks' sweep accuracies on their shared edges, with its interval.
fn map_correlation(a: &TaskAnalysis, b: &TaskAnalysis) -> Result<(f64, usize), String> {
    let pairs: Vec<(f64, f64)> = a
        .sweep
        .iter()
        .filter_map(|(e, x)| b.sweep.get(e).map(|y| (x.mean, y.mean)))
        .collect();
    match crate::stats::spearman(&pairs) {
        Some(s) if s.n >= 4 => Ok((s.rho, s.n)),
        _ => Err(format!("{} shared sweep edges: too few for ρ", pairs.len())),
    }
}

fn correlation_estimate(replicate: String, rho: f64, n: usize) -> Estimate {
    let ci = pool::spearman_interval(rho, n).map(|i| (i.lo, i.hi));
    Estimate {
        replicate,
        value: rho,
        ci,
        basis: format!("n = {n} shared sweep edges"),
        pairs: Some(n),
        verdict: Verdict::of(Claim::C6, ci),
    }
}

/// C6: with a replicate axis, one row per pair of tasks, its ρ on every replicate, pooled
/// by random effects; without one, one row whose estimates are the pairs of tasks, pooled by
/// a jackknife over tasks (pairs share tasks).
pub(super) fn task_dependence(scopes: &[Scope], axis: &str) -> Vec<ClaimRow> {
    if axis == "task" {
        return scopes.iter().filter_map(pairs_of_tasks).collect();
    }
    // replicate -> tasks, in scope order.
    let mut by_replicate: Vec<(&str, Vec<(&str, &TaskAnalysis)>)> = Vec::new();
    for s in scopes {
        for (unit, t) in &s.units {
            match by_replicate.iter_mut().find(|(u, _)| u == unit) {
                Some((_, v)) => v.push((s.name.as_str(), t)),
                None => by_replicate.push((unit.as_str(), vec![(s.name.as_str(), t)])),
            }
        }
    }
    // (pair of tasks, estimates per replicate, replicates not measured with why).
    type PairRow = (String, Vec<Estimate>, Vec<(String, String)>);
    let mut rows: Vec<PairRow> = Vec::new();
    for (unit, tasks) in &by_replicate {
        for (k, (na, a)) in tasks.iter().enumerate() {
            for (nb, b) in &tasks[k + 1..] {
                let scope = format!("{na} vs {nb}");
                let slot = match rows.iter().position(|r| r.0 == scope) {
                    Some(i) => i,
                    None => {
                        rows.push((scope, Vec::new(), Vec::new()));
                        rows.len() - 1
                    }
                };
                match map_correlation(a, b) {
                    Ok((rho, n)) => {
                        rows[slot]
                            .1
                            .push(correlation_estimate((*unit).to_owned(), rho, n))
                    }
                    Err(why) => rows[slot].2.push(((*unit).to_owned(), why)),
                }
            }
        }
    }
    rows.into_iter()
        .map(|(scope, estimates, not_measured)| {
            let inputs = super::correlation_inputs(&estimates);
            super::row(
                super::Draft {
                    claim: Claim::C6,
                    scope,
                    comparison: "single-adapter maps of the two tasks".into(),
                    unit: RHO,
                    estimates,
                    not_measured,
                },
                pool::pool_correlations(&inputs),
                "Fisher z, random effects",
                axis,
            )
        })
        .collect()
}

/// C6 on one backbone: every pair of its tasks, pooled by the jackknife over tasks.
fn pairs_of_tasks(s: &Scope) -> Option<ClaimRow> {
    if s.units.len() < 2 {
        return None;
    }
    let (mut estimates, mut not_measured, mut pairs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (na, a)) in s.units.iter().enumerate() {
        for (j, (nb, b)) in s.units.iter().enumerate().skip(i + 1) {
            let name = format!("{na} vs {nb}");
            match map_correlation(a, b) {
                Ok((rho, n)) => {
                    pairs.push((i, j, rho));
                    estimates.push(correlation_estimate(name, rho, n));
                }
                Err(why) => not_measured.push((name, why)),
            }
        }
    }
    let pooled: Option<Interval> = pool::pool_pairs_jackknife(s.units.len(), &pairs);
    Some(super::row(
        super::Draft {
            claim: Claim::C6,
            scope: s.name.clone(),
            comparison: "single-adapter maps of two tasks".into(),
            unit: RHO,
            estimates,
            not_measured,
        },
        pooled,
        "jackknife over tasks",
        "pair",
    ))
}
