//! The findings: sentences made from the report's own numbers, per task and across tasks.
//!
//! Every sentence that compares two methods or placements is written from the 95 %
//! confidence interval of the difference of their mean test accuracies over seeds
//! ([`crate::stats::compare_means`]): "beats … by X points (95 % CI a to b)" or "is below …"
//! when the interval excludes zero, "cannot tell (… includes zero)" when it does not, and
//! "cannot tell (one seed: no interval)" with fewer than two seeds on either side.

use std::collections::{BTreeMap, BTreeSet};

use graft_graph::EdgeKind;
use graft_tables::Method;

use super::tables::{fmt_acc, fmt_count, train};
use crate::analysis::{Analysis, Series, TaskAnalysis, is_rank, rank_tolerance};
use crate::figures::p_is;
use crate::stats::{Comparison, MeanStd, compare_means};

fn pct(m: &MeanStd) -> String {
    format!("{} %", fmt_acc(m))
}

/// The verdict on `a − b` as the end of a sentence whose subject is `a`: `beats <b> by 2.1
/// points (95 % CI 0.4 to 3.8; paired over 3 seeds)`, `is below <b> by …`, `against <b>:
/// cannot tell (95 % CI -0.5 to 1.2 includes zero; …)` or `against <b>: cannot tell (one
/// seed: no interval)`; `None` when either side has no finished run.
pub fn verdict(a: &[(i64, f64)], b_text: &str, b: &[(i64, f64)]) -> Option<String> {
    let basis = |d: &crate::stats::Difference| {
        if d.paired {
            format!("paired over {} seeds", d.n_a)
        } else {
            format!("Welch, {} and {} runs", d.n_a, d.n_b)
        }
    };
    Some(match compare_means(a, b) {
        Comparison::Missing => return None,
        Comparison::OneSeed { .. } => {
            format!("against {b_text}: cannot tell (one seed: no interval)")
        }
        Comparison::Interval(d) if d.lo > 0.0 => format!(
            "beats {b_text} by {:.1} points (95 % CI {:.1} to {:.1}; {})",
            d.diff,
            d.lo,
            d.hi,
            basis(&d)
        ),
        Comparison::Interval(d) if d.hi < 0.0 => format!(
            "is below {b_text} by {:.1} points (95 % CI {:.1} to {:.1}; {})",
            -d.diff,
            -d.hi,
            -d.lo,
            basis(&d)
        ),
        Comparison::Interval(d) => format!(
            "against {b_text}: cannot tell (difference {:+.1} points, 95 % CI {:.1} to {:.1} \
             includes zero; {})",
            d.diff,
            d.lo,
            d.hi,
            basis(&d)
        ),
    })
}

fn plural(k: i64) -> &'static str {
    if k == 1 { "" } else { "s" }
}

fn budget_sentence(s: &Series, t: &TaskAnalysis) -> Option<String> {
    let best = s.points.iter().max_by(|a, b| {
        a.test
            .mean
            .total_cmp(&b.test.mean)
            .then(b.adapters.cmp(&a.adapters))
    })?;
    // Several placements pooled at one budget are draws of a randomised heuristic.
    let draws = |p: &crate::analysis::Point| {
        if s.points.iter().any(|p| p.placements > 1) {
            format!(" over {} draw{}", p.placements, plural(p.placements as i64))
        } else {
            String::new()
        }
    };
    let subject = |p: &crate::analysis::Point| {
        format!(
            "{} with {} adapter{} ({} trainable parameters, {} test accuracy{})",
            s.label,
            p.adapters,
            plural(p.adapters),
            fmt_count(p.params),
            pct(&p.test),
            draws(p)
        )
    };
    Some(match &t.parallel_all {
        Some(pa) => {
            let pa_text = format!(
                "parallel-all ({} adapters, {} trainable parameters, {})",
                pa.adapters,
                fmt_count(pa.params),
                pct(&pa.test)
            );
            // The fewest adapters whose mean reaches parallel-all's, else the best budget.
            let (p, lead) = match s.points.iter().find(|p| p.test.mean >= pa.test.mean) {
                Some(p) => (p, String::new()),
                None => (best, "at its best, ".to_owned()),
            };
            format!(
                "{lead}{} {}.",
                subject(p),
                verdict(&p.values, &pa_text, &pa.by_seed)?
            )
        }
        None => format!(
            "{} is best with {} adapter{} ({} trainable parameters): {} test accuracy{} (no \
             parallel-all run to compare with).",
            s.label,
            best.adapters,
            plural(best.adapters),
            fmt_count(best.params),
            pct(&best.test),
            draws(best)
        ),
    })
}

/// Sentences comparing the baselines: full fine-tuning and parallel-all against the linear
/// probe, parallel-all on the pretrained backbone against the same adapters on a randomly
/// initialised one, LoRA against parallel-all.
fn baseline_sentences(t: &TaskAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    let mut pair = |a: &Option<crate::analysis::Reference>,
                    a_name: &str,
                    b: &Option<crate::analysis::Reference>,
                    b_name: &str| {
        if let (Some(a), Some(b)) = (a, b)
            && let Some(v) = verdict(
                &a.by_seed,
                &format!("{b_name} ({})", pct(&b.test)),
                &b.by_seed,
            )
        {
            out.push(format!("{a_name} ({}) {v}.", pct(&a.test)));
        }
    };
    pair(
        &t.full,
        "full fine-tuning",
        &t.linear_probe,
        "the linear probe",
    );
    pair(
        &t.parallel_all,
        "parallel-all",
        &t.linear_probe,
        "the linear probe",
    );
    pair(
        &t.parallel_all,
        "parallel-all on the pretrained backbone",
        &t.random_init,
        "the same adapters on a randomly initialised backbone",
    );
    pair(&t.lora, "LoRA", &t.parallel_all, "parallel-all");
    out
}

/// The sweep's spread in points beside the seed-to-seed standard deviation of its edges
/// trained at several seeds: a spread within a few standard deviations is mostly noise.
fn sweep_noise_sentence(n: &crate::analysis::SweepNoise) -> String {
    let span = format!(
        "the {} single-sweep edges span {:.1} points of test accuracy ({:.1} % to {:.1} %)",
        n.edges,
        n.spread(),
        n.lo,
        n.hi
    );
    match (n.mean_std, n.max_std) {
        (Some(mean), Some(max)) => {
            let times = if mean > 0.0 {
                format!(", {:.1} times the average", n.spread() / mean)
            } else {
                String::new()
            };
            format!(
                "{span}; on the {} of them trained at two or more seeds the seed-to-seed \
                 standard deviation is {mean:.2} points on average and {max:.2} at most{times}.",
                n.repeated
            )
        }
        _ => format!(
            "{span}; none of them finished at more than one seed, so the sweep's seed noise is \
             not measured (the fine-tune stage's sweep_repeats trains some sweep edges at every \
             seed)."
        ),
    }
}

fn correlation_sentence(name: &str, c: &crate::analysis::ScoreCorrelation) -> String {
    let set = "single-sweep edges, chosen independently of the probe";
    match &c.spearman {
        Some(s) if s.p.is_some() => {
            let p = s.p.unwrap_or(f64::NAN);
            if p < 0.05 {
                format!(
                    "{name} correlates {} with single-adapter accuracy at ρ = {:.2} ({}, n = {} \
                     {set}).",
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
                     (ρ = {:.2}, {}, n = {} {set}).",
                    s.rho,
                    p_is(p),
                    s.n
                )
            }
        }
        _ => format!(
            "the correlation of {name} with single-adapter accuracy is undefined: {} \
             {set}, have both, or the score is the same for all of them.",
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
    let epochs = train(t).map(|x| x.epochs).map_or_else(
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

/// One task's findings, in the order a reader asks: how the numbers were made, the
/// baselines, the heuristics' budgets, single edges, the probe's correlations, its cost.
fn task_findings(t: &TaskAnalysis) -> Vec<String> {
    if t.runs == 0 {
        return vec!["no fine-tuning runs were recorded, so there is nothing to report.".into()];
    }
    let mut out = runs_findings(t);
    out.extend(baseline_findings(t));
    out.extend(budget_findings(t));
    out.extend(single_findings(t));
    out.extend(correlation_findings(t));
    out.push(cost_finding(t));
    out.extend(flops_finding(t));
    out
}

/// The protocol, the runs and seeds, what did not finish.
fn runs_findings(t: &TaskAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    let finished = t.runs - t.failed.len();
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
    out
}

/// The linear probe's and full fine-tuning's accuracy, and the baselines compared.
fn baseline_findings(t: &TaskAnalysis) -> Vec<String> {
    let mut out = Vec::new();
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
    out.extend(baseline_sentences(t));
    out
}

/// The bottleneck and one sentence per budgeted heuristic.
fn budget_findings(t: &TaskAnalysis) -> Vec<String> {
    let mut out = Vec::new();
    if t.series.is_empty() {
        return out;
    }
    if let Some(r) = train(t).map(|x| x.bottleneck) {
        out.push(format!("every adapter has bottleneck r = {r}."));
    }
    out.extend(t.series.iter().filter_map(|s| budget_sentence(s, t)));
    out
}

/// The best single edges and how many of the best three are recurrent.
fn single_findings(t: &TaskAnalysis) -> Vec<String> {
    if t.single.is_empty() {
        return vec![
            "no edge was trained alone, so nothing is said about single placements.".into(),
        ];
    }
    let mut out = Vec::new();
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
    out
}

/// The sweep's spread against seed noise, each rank's correlation with single-adapter
/// accuracy, and the strongest score when it is not a rank.
fn correlation_findings(t: &TaskAnalysis) -> Vec<String> {
    if let Some(why) = &t.sweep_missing {
        return vec![format!(
            "the probe's scores are not correlated with single-adapter accuracy (not measured): \
             {why}."
        )];
    }
    let mut out = Vec::new();
    if let Some(n) = t.sweep_noise() {
        out.push(sweep_noise_sentence(&n));
    }
    for c in t.correlations.iter().filter(|c| is_rank(c.score)) {
        let name = format!(
            "gradient rank at tolerance {}",
            rank_tolerance(c.score).unwrap_or("?")
        );
        out.push(correlation_sentence(&name, c));
    }
    let abs_rho = |c: &crate::analysis::ScoreCorrelation| {
        c.spearman.filter(|s| s.p.is_some()).map(|s| s.rho.abs())
    };
    // The first score with the largest |ρ|, so that a rank wins a tie.
    let mut strongest: Option<&crate::analysis::ScoreCorrelation> = None;
    for c in &t.correlations {
        if let Some(r) = abs_rho(c)
            && strongest.and_then(abs_rho).is_none_or(|b| r > b)
        {
            strongest = Some(c);
        }
    }
    if let Some(c) = strongest
        && !is_rank(c.score)
        && let Some(s) = c.spearman
    {
        out.push(format!(
            "of the {} probe scores, {} has the strongest correlation (ρ = {:.2}, {}).",
            t.correlations.len(),
            c.score.replace('_', " "),
            s.rho,
            s.p.map_or("p n/a".into(), p_is)
        ));
    }
    out
}

/// The probe's time against training steps and an adapter run.
fn cost_finding(t: &TaskAnalysis) -> String {
    let Some(cost) = &t.data.cost else {
        return "the probe's cost was not recorded.".into();
    };
    let ps = cost.total_seconds;
    let mut parts = vec![format!("the probe took {ps:.2} s")];
    let steps = cost.cost_in_train_steps;
    parts.push(format!("the time of {steps:.1} training steps"));
    if let Some(r) = t.adapter_run_seconds.filter(|r| *r > 0.0) {
        parts.push(format!(
            "{:.1} % of one adapter fine-tuning run ({r:.1} s on average)",
            100.0 * ps / r
        ));
    }
    format!("{}.", parts.join(", "))
}

/// What placements with and without recurrent edges cost in forward FLOPs.
fn flops_finding(t: &TaskAnalysis) -> Option<String> {
    let b = t
        .backbone_flops
        .or_else(|| t.placements.iter().map(|p| p.flops).min())
        .filter(|f| *f > 0)?;
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
        Some(s + ".")
    } else if !fwd.is_empty() {
        Some(format!(
            "no finished placement has a recurrent edge; forward-only placements cost at most \
             {:.2}× the backbone's forward FLOPs.",
            max(&fwd)
        ))
    } else {
        None
    }
}

/// The findings, each one sentence made from the report's own numbers, per task (`None`:
/// across tasks).
pub fn findings(a: &Analysis) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    for t in &a.tasks {
        for s in task_findings(t) {
            out.push((Some(t.task.clone()), capitalise(&s, t)));
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

/// Capitalises a sentence unless it opens with a label of the task's heuristics' proposals
/// (`gga γ=0.6`, `top-k`, `parallel-all`): those are written as the heuristic writes them.
fn capitalise(s: &str, t: &TaskAnalysis) -> String {
    let opens_with = |label: &str| {
        s.strip_prefix(label)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', ',']))
    };
    // Baselines' labels (`full`, `linear-probe`) are method names, not heuristics' labels.
    if t.data
        .proposals
        .iter()
        .any(|p| p.heuristic != "baseline" && opens_with(&p.label))
    {
        return s.to_owned();
    }
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}
