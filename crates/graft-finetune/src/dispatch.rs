//! Dispatch: the runs that are not in the store train in worker processes here
//! ([`worker::run_all`], `jobs` at a time) or as one Slurm job array ([`slurm::run_array`]);
//! the others are read from the store.

use graft_stage::BoxError;
use graft_store::{Artifact, Lookup, Store};

use crate::run::RunSpec;
use crate::{FinetuneParams, slurm, worker};

/// Where each run's artifact came from.
#[derive(Debug, Default)]
pub struct Dispatched {
    /// Per spec, in order: its artifact, when cached or trained now.
    pub found: Vec<Option<Artifact>>,
    /// The specs (by index) whose worker failed, with why.
    pub failures: Vec<(usize, String)>,
    /// Runs sent to workers (trained or failed).
    pub trained: usize,
    /// Runs found in the store.
    pub cached: usize,
}

/// Looks every spec up in the store (a corrupt entry is warned about, moved aside and
/// retrained) and trains the missing ones with `p.executor`. `placements` is for the
/// console line only.
pub fn dispatch(
    p: &FinetuneParams,
    store: &Store,
    specs: &[RunSpec],
    placements: usize,
) -> Result<Dispatched, BoxError> {
    let mut found: Vec<Option<Artifact>> = Vec::with_capacity(specs.len());
    let mut todo = Vec::new();
    for (k, spec) in specs.iter().enumerate() {
        // The same corrupt-entry path as every lookup: warned, moved aside, retrained.
        match store.settle(&spec.key())? {
            Lookup::Hit(a) => found.push(Some(a)),
            other => {
                if let Lookup::Corrupt(c) = other {
                    eprintln!("warning: {c}");
                }
                found.push(None);
                todo.push(k);
            }
        }
    }
    let cached = specs.len() - todo.len();
    let workers = p.jobs.min(todo.len().max(1));
    let how = match p.executor.as_str() {
        "slurm" => "as a Slurm job array".to_owned(),
        _ => format!(
            "with {workers} worker{}",
            if workers == 1 { "" } else { "s" }
        ),
    };
    let seeds = match &p.sweep_seeds {
        None => format!("{} seeds", p.seeds.len()),
        Some(s) => format!(
            "{} seeds, {} for the sweep{}",
            p.seeds.len(),
            s.len(),
            match p.sweep_repeats {
                0 => String::new(),
                k => format!(" but {k} repeated edges"),
            }
        ),
    };
    eprintln!(
        "finetune: {} runs ({} placements, {seeds}): {cached} cached, {} to train {how} on {}",
        specs.len(),
        placements,
        todo.len(),
        p.device
    );
    let mut failures = Vec::new();
    if !todo.is_empty() {
        let exe = std::env::current_exe()?;
        let todo_specs: Vec<RunSpec> = todo.iter().map(|&k| specs[k].clone()).collect();
        let outcomes = match p.executor.as_str() {
            "slurm" => slurm::run_array(&exe, store, &todo_specs, &crate::slurm_options(p))?,
            _ => worker::run_all(&exe, store.root(), &todo_specs, worker::Layout::of(p)),
        };
        for (k, outcome) in todo.iter().zip(outcomes) {
            match outcome {
                worker::Outcome::Published(id) => found[*k] = Some(store.artifact(&id)?),
                worker::Outcome::Failed(msg) => failures.push((*k, msg)),
            }
        }
    }
    Ok(Dispatched {
        found,
        failures,
        trained: todo.len(),
        cached,
    })
}
