//! Regression bands: checks of one pipeline's results that a healthy run passes and a
//! regression in training, a heuristic's inputs or the probe fails. `.ci/run` checks
//! `pipelines/ci.toml` against `pipelines/bands/ci.toml` with the `graft-bands` binary.
//!
//! A bands file names the pipeline and the stages whose last artifacts (the store's slots
//! `<pipeline>/<stage>`) are checked, then the bands:
//!
//! - `[[above]]`: baseline `a` above baseline `b` (`linear-probe`, `full`, `parallel-all`,
//!   `random-init`: parallel-all's adapters on a randomly initialised backbone) by at least
//!   `margin` points of mean test accuracy over the seeds, every run of both finished;
//! - `[ranks]`: every edge of the probe table present once, with its numerical rank (the
//!   `rank` column, and the rank at each of [`graft_tables::RANK_TOLERANCES`] from the
//!   singular values) within [1, d], d the probed model's width;
//! - `[[picks]]`: the edges a score-driven heuristic proposed (every budget, every draw) sit
//!   high among all n² edges by the probe score it names in its rows: their mean percentile
//!   is at least `min_percentile`. A heuristic that stops following its score, or a probe
//!   whose scores stop telling edges apart, crosses it.
//!
//! The margins are the file's to set, from measured seed-to-seed variation (its comments
//! say which measurement each comes from); this module only compares. [`check`] is pure:
//! [`load`] reads the artifacts, [`Bands::read`] the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use graft_store::Store;
use graft_tables::{Method, RANK_TOLERANCES};
use serde::Deserialize;

use crate::analysis::{Reference, TaskAnalysis, analyse_task};
use crate::inputs::TaskData;

/// Errors reading a bands file or the artifacts it names; each names the file, field or slot.
#[derive(Debug, thiserror::Error)]
pub enum BandsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("store {store}: no slot {slot}: run pipeline {pipeline} on this store first")]
    NoSlot {
        store: PathBuf,
        slot: String,
        pipeline: String,
    },
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error(transparent)]
    Report(#[from] crate::ReportError),
}

/// A bands file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bands {
    /// The pipeline whose results are checked: its slots `<pipeline>/<stage>` name them.
    pub pipeline: String,
    /// The probe stage (`probe.parquet`, `model.json`).
    pub probe: String,
    /// The fine-tune stage (`runs.parquet`, `proposals.parquet`).
    pub finetune: String,
    /// Baseline `a` above baseline `b` by at least `margin` points.
    #[serde(default)]
    pub above: Vec<Above>,
    /// The probe's ranks within [1, d].
    #[serde(default)]
    pub ranks: Option<RankBand>,
    /// Score-driven heuristics pick edges their score ranks high.
    #[serde(default)]
    pub picks: Vec<Picks>,
}

/// The band "`heuristic` picks edges its probe score ranks high".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Picks {
    pub name: String,
    /// The `heuristic` of its proposal rows (`gga`, `top-k`); they must name a `score`.
    pub heuristic: String,
    /// Least mean percentile, in [0, 1], of its distinct edges among all n² edges by that
    /// score (0: the lowest score, 1: the highest; ties at their mid-rank). Edges drawn at
    /// random average 0.5.
    pub min_percentile: f64,
}

/// One band of the form "a above b by at least `margin` points".
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Above {
    pub name: String,
    pub a: Baseline,
    pub b: Baseline,
    /// Least difference of mean test accuracies, a − b, in points (may be negative: "not
    /// more than |margin| below").
    pub margin: f64,
}

/// The band on the probe's ranks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankBand {
    pub name: String,
}

/// A quantity a band compares: one baseline of the fine-tune stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    LinearProbe,
    Full,
    ParallelAll,
    RandomInit,
}

impl Baseline {
    pub fn name(self) -> &'static str {
        match self {
            Baseline::LinearProbe => "linear probe",
            Baseline::Full => "full fine-tuning",
            Baseline::ParallelAll => "parallel-all",
            Baseline::RandomInit => "parallel-all on a random-init backbone",
        }
    }

    fn reference(self, t: &TaskAnalysis) -> Option<&Reference> {
        match self {
            Baseline::LinearProbe => t.linear_probe.as_ref(),
            Baseline::Full => t.full.as_ref(),
            Baseline::ParallelAll => t.parallel_all.as_ref(),
            Baseline::RandomInit => t.random_init.as_ref(),
        }
    }

    /// Whether a placement of the analysis is this baseline (to find its runs that did not
    /// finish).
    fn is(self, p: &crate::analysis::PlacementStats) -> bool {
        match self {
            Baseline::LinearProbe => p.method == Method::LinearProbe,
            Baseline::Full => p.method == Method::Full,
            Baseline::ParallelAll => {
                p.method == Method::Adapters && p.heuristics.iter().any(|h| h == "parallel-all")
            }
            Baseline::RandomInit => p.method == Method::AdaptersRandomInit,
        }
    }
}

impl Bands {
    /// Reads and checks a bands file; every error names the file and the field.
    pub fn read(path: &Path) -> Result<Bands, BandsError> {
        let text = std::fs::read_to_string(path).map_err(|source| BandsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Bands::parse(&text).map_err(|message| BandsError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses bands TOML: unknown fields, a margin that is not finite, an empty or repeated
    /// name and a band comparing a baseline with itself are refused.
    pub fn parse(text: &str) -> Result<Bands, String> {
        let value: toml::Value = toml::from_str(text).map_err(|e| e.message().trim().to_owned())?;
        let bands: Bands = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().message().trim().to_owned();
            if path == "." {
                message
            } else {
                format!("{path}: {message}")
            }
        })?;
        for (field, v) in [
            ("pipeline", &bands.pipeline),
            ("probe", &bands.probe),
            ("finetune", &bands.finetune),
        ] {
            if v.trim().is_empty() {
                return Err(format!("{field} must not be empty"));
            }
        }
        let mut names = BTreeSet::new();
        let all = bands
            .above
            .iter()
            .enumerate()
            .map(|(k, b)| (format!("above[{k}]"), &b.name))
            .chain(bands.ranks.iter().map(|r| ("ranks".to_owned(), &r.name)))
            .chain(
                bands
                    .picks
                    .iter()
                    .enumerate()
                    .map(|(k, b)| (format!("picks[{k}]"), &b.name)),
            );
        for (at, name) in all {
            if name.trim().is_empty() {
                return Err(format!("{at}.name must not be empty"));
            }
            if !names.insert(name.as_str()) {
                return Err(format!("{at}.name {name:?} is used twice"));
            }
        }
        for (k, b) in bands.above.iter().enumerate() {
            if !b.margin.is_finite() {
                return Err(format!(
                    "above[{k}].margin = {} must be a finite number of points",
                    b.margin
                ));
            }
            if b.a == b.b {
                return Err(format!(
                    "above[{k}]: a and b are both {:?}: a band compares two baselines",
                    b.a.name()
                ));
            }
        }
        for (k, b) in bands.picks.iter().enumerate() {
            if !(0.0..=1.0).contains(&b.min_percentile) {
                return Err(format!(
                    "picks[{k}].min_percentile = {} must be within [0, 1]",
                    b.min_percentile
                ));
            }
            if b.heuristic.trim().is_empty() {
                return Err(format!("picks[{k}].heuristic must not be empty"));
            }
        }
        Ok(bands)
    }
}

/// Reads the last artifacts of the bands' probe and fine-tune stages from the store's slots
/// and analyses them as the report does.
pub fn load(store: &Store, bands: &Bands) -> Result<TaskAnalysis, BandsError> {
    let artifact = |stage: &str| {
        let slot = format!("{}/{stage}", bands.pipeline);
        let record = store.read_slot(&slot)?.ok_or_else(|| BandsError::NoSlot {
            store: store.root().to_path_buf(),
            slot: slot.clone(),
            pipeline: bands.pipeline.clone(),
        })?;
        Ok::<_, BandsError>(store.artifact(&record.artifact)?)
    };
    let probe = artifact(&bands.probe)?;
    let finetune = artifact(&bands.finetune)?;
    let data = TaskData::read(&bands.pipeline, probe.dir(), finetune.dir())?;
    Ok(analyse_task(data))
}

/// The outcome of one band.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub name: String,
    pub held: bool,
    /// The numbers compared, and on failure what crossed the band.
    pub detail: String,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.held { "held   " } else { "CROSSED" };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

/// Checks every band against one analysed task, in file order (the `above` bands, then the
/// ranks, then the picks).
pub fn check(bands: &Bands, t: &TaskAnalysis) -> Vec<Outcome> {
    let mut out: Vec<Outcome> = bands.above.iter().map(|b| check_above(b, t)).collect();
    if let Some(r) = &bands.ranks {
        out.push(check_ranks(r, t));
    }
    out.extend(bands.picks.iter().map(|b| check_picks(b, t)));
    out
}

/// Percentile of `x` among `all` (ties at their mid-rank), in [0, 1]; 0.5 for one value.
fn percentile(x: f64, all: &[f64]) -> f64 {
    if all.len() < 2 {
        return 0.5;
    }
    let below = all.iter().filter(|v| **v < x).count() as f64;
    let equal = all.iter().filter(|v| **v == x).count() as f64;
    (below + 0.5 * (equal - 1.0)) / (all.len() as f64 - 1.0)
}

fn check_picks(band: &Picks, t: &TaskAnalysis) -> Outcome {
    let outcome = |held: bool, detail: String| Outcome {
        name: band.name.clone(),
        held,
        detail,
    };
    let rows: Vec<&graft_tables::ProposalRow> = t
        .data
        .proposals
        .iter()
        .filter(|p| p.heuristic == band.heuristic && p.method == Method::Adapters)
        .collect();
    if rows.is_empty() {
        return outcome(
            false,
            format!(
                "the fine-tune stage's proposals have no {:?} row",
                band.heuristic
            ),
        );
    }
    let scores: BTreeSet<&str> = rows.iter().filter_map(|p| p.score.as_deref()).collect();
    let [score] = scores.into_iter().collect::<Vec<_>>()[..] else {
        return outcome(
            false,
            format!(
                "{:?} rows must name one probe score (score column) to check its picks against",
                band.heuristic
            ),
        );
    };
    let by_edge: BTreeMap<graft_graph::Edge, f64> = t
        .data
        .probe
        .iter()
        .filter_map(|r| Some((r.edge(), crate::analysis::score_of(r, score)?)))
        .filter(|(_, v)| v.is_finite())
        .collect();
    let all: Vec<f64> = by_edge.values().copied().collect();
    let edges: BTreeSet<graft_graph::Edge> = rows
        .iter()
        .flat_map(|p| p.edges.iter().map(|e| e.edge()))
        .collect();
    let mut missing = Vec::new();
    let mut pcts = Vec::new();
    for e in &edges {
        match by_edge.get(e) {
            Some(v) => pcts.push(percentile(*v, &all)),
            None => missing.push(e.to_string()),
        }
    }
    if !missing.is_empty() || pcts.is_empty() {
        return outcome(
            false,
            format!(
                "the probe table has no finite {score} for the picked edge(s) {}",
                missing.join(", ")
            ),
        );
    }
    let mean = pcts.iter().sum::<f64>() / pcts.len() as f64;
    let numbers = format!(
        "{} distinct edge(s) over {} placement(s) of {}, mean percentile by {score} among {} \
         edges {mean:.2}",
        edges.len(),
        rows.len(),
        band.heuristic,
        all.len()
    );
    if mean >= band.min_percentile {
        outcome(
            true,
            format!("{numbers}, at least {:.2} required", band.min_percentile),
        )
    } else {
        outcome(
            false,
            format!(
                "{numbers}, below the band's {:.2} (edges drawn at random average 0.50)",
                band.min_percentile
            ),
        )
    }
}

/// `45.2 % (seed 0: 44.8, seed 1: 45.6)`.
fn with_seeds(r: &Reference) -> String {
    let seeds: Vec<String> = r
        .by_seed
        .iter()
        .map(|(s, a)| format!("seed {s}: {a:.1}"))
        .collect();
    format!("{:.1} % ({})", r.test.mean, seeds.join(", "))
}

fn check_above(band: &Above, t: &TaskAnalysis) -> Outcome {
    let fail = |detail: String| Outcome {
        name: band.name.clone(),
        held: false,
        detail,
    };
    // Every run of both baselines must have finished: a diverged run is a regression too.
    for side in [band.a, band.b] {
        let unfinished: Vec<String> = t
            .placements
            .iter()
            .filter(|p| side.is(p))
            .flat_map(|p| &p.failed)
            .map(|f| format!("seed {} {}: {}", f.seed, f.status.name(), f.error))
            .collect();
        if !unfinished.is_empty() {
            return fail(format!(
                "{} has runs that did not finish ({})",
                side.name(),
                unfinished.join("; ")
            ));
        }
    }
    let (Some(a), Some(b)) = (band.a.reference(t), band.b.reference(t)) else {
        let missing: Vec<&str> = [band.a, band.b]
            .iter()
            .filter(|s| s.reference(t).is_none())
            .map(|s| s.name())
            .collect();
        return fail(format!(
            "no finished run of {} in the fine-tune stage's runs table",
            missing.join(" nor of ")
        ));
    };
    let diff = a.test.mean - b.test.mean;
    let numbers = format!(
        "{} {} − {} {} = {diff:+.1} points",
        band.a.name(),
        with_seeds(a),
        band.b.name(),
        with_seeds(b)
    );
    if diff >= band.margin {
        Outcome {
            name: band.name.clone(),
            held: true,
            detail: format!("{numbers}, at least {:+.1} required", band.margin),
        }
    } else {
        fail(format!(
            "{numbers}, below the band's {:+.1} by {:.1} points",
            band.margin,
            band.margin - diff
        ))
    }
}

fn check_ranks(band: &RankBand, t: &TaskAnalysis) -> Outcome {
    let outcome = |held: bool, detail: String| Outcome {
        name: band.name.clone(),
        held,
        detail,
    };
    let Some(model) = &t.data.model else {
        return outcome(
            false,
            "the probe artifact has no model.json, so d is unknown".into(),
        );
    };
    let d = model.dims.dim as i64;
    let n = t.nodes;
    let rows = &t.data.probe;
    let mut edges: Vec<_> = rows.iter().map(|r| (r.i, r.j)).collect();
    edges.sort_unstable();
    edges.dedup();
    if rows.len() != n * n || edges.len() != n * n {
        return outcome(
            false,
            format!(
                "the probe table has {} rows over {} distinct edges; the graph has n² = {} edges",
                rows.len(),
                edges.len(),
                n * n
            ),
        );
    }
    let mut bad = Vec::new();
    for r in rows {
        let mut ranks = vec![("rank".to_owned(), r.rank)];
        ranks.extend(
            RANK_TOLERANCES
                .iter()
                .map(|(name, tol)| ((*name).to_owned(), r.rank_at(*tol) as i64)),
        );
        for (name, v) in ranks {
            if !(1..=d).contains(&v) {
                bad.push(format!("({}, {}) {name} = {v}", r.i, r.j));
            }
        }
    }
    let (lo, hi) = rows.iter().fold((i64::MAX, i64::MIN), |(l, h), r| {
        (l.min(r.rank), h.max(r.rank))
    });
    if bad.is_empty() {
        outcome(
            true,
            format!(
                "{} edges, rank {lo} to {hi} (and at tolerances 1e-2, 1e-3, 1e-4) within [1, {d}]",
                rows.len()
            ),
        )
    } else {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        outcome(
            false,
            format!(
                "{} rank value(s) outside [1, {d}]: {}{}",
                bad.len(),
                shown.join(", "),
                if bad.len() > shown.len() { ", ..." } else { "" }
            ),
        )
    }
}
