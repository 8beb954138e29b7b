//! `graft`: runs pipelines of stage binaries over an artifact store.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use graft_runner::{Mode, Pipeline, RunOptions, StageResult, describe, gc_lines, gc_roots};
use graft_store::{Access, Store, StoreLock, holders_text};

#[derive(Parser)]
#[command(
    version,
    about = "Run graft pipelines: each stage reruns only when its inputs, parameters or code changed"
)]
struct Cli {
    /// The artifact store.
    #[arg(long, global = true, env = "GRAFT_STORE", default_value = "artifacts")]
    store: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a pipeline: every stage is fresh or runs, with the reason printed.
    Run(PipelineArgs),
    /// Say which stages are fresh and why the others would run, without running anything.
    Status(PipelineArgs),
    /// Remove artifacts that the last run of no pipeline in the store reaches (lists exactly
    /// that without --yes). Refuses to delete anything when it cannot tell what to keep.
    /// With --yes it waits until no pipeline or stage is using the store.
    Gc {
        /// Directory of pipeline files, to say which kept pipelines and stages have no file
        /// there (besides the embedded default); every pipeline with slots in the store is kept.
        #[arg(long, default_value = "pipelines")]
        pipelines: PathBuf,
        /// Delete; without it, only list.
        #[arg(long)]
        yes: bool,
        /// With --yes: when a pipeline or stage is using the store, say which and delete
        /// nothing, instead of waiting for it to finish.
        #[arg(long)]
        no_wait: bool,
        /// Stop keeping a pipeline (all its slots), one slot `pipeline/stage`, or every
        /// expansion of a matrix stage `pipeline/stage` (repeatable).
        #[arg(long, value_name = "NAME")]
        forget: Vec<String>,
    },
    /// Check every artifact's files against its manifest.
    Verify,
}

#[derive(clap::Args)]
struct PipelineArgs {
    /// A pipeline name (pipelines/<name>.toml) or file; the embedded default if omitted.
    pipeline: Option<String>,
    /// Override a parameter, as if the pipeline file said so: -S prep.seed=3 (a matrix
    /// stage's name sets every expansion, -S 'prep@dtd.seed=3' one, -S 'vars.tasks=["dtd"]'
    /// a var before the matrix stages expand).
    #[arg(short = 'S', long = "set", value_name = "STAGE.PARAM=VALUE")]
    set: Vec<String>,
    /// Run this stage even if it is fresh (repeatable; a matrix stage's name runs all its
    /// expansions).
    #[arg(long)]
    force: Vec<String>,
    /// Where the stage binaries are (default: beside this program).
    #[arg(long, env = "GRAFT_BIN_DIR")]
    bin_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match graft_stage::catch_panic(|| run(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {}", graft_stage::error_line(e.as_ref()));
            ExitCode::FAILURE
        }
        Err(panic) => {
            eprintln!("error: graft: {panic}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run(args) => pipeline(&cli.store, args, Mode::Run),
        Cmd::Status(args) => pipeline(&cli.store, args, Mode::Status),
        Cmd::Gc {
            pipelines,
            yes,
            no_wait,
            forget,
        } => {
            let store = Store::open(&cli.store)?;
            // Held while gc decides and deletes: nothing runs on the store meanwhile.
            let _lock = if yes {
                Some(gc_lock(&store, no_wait)?)
            } else {
                None
            };
            let refuse = |e: &dyn std::fmt::Display| {
                anyhow::anyhow!("gc deletes nothing: cannot tell what to keep: {e}")
            };
            let roots = gc_roots(&store, &pipelines, &forget).map_err(|e| match e {
                e @ graft_runner::RunnerError::Gc { .. } => anyhow::Error::new(e),
                e => refuse(&e),
            })?;
            let plan = store.gc_plan(&roots.roots).map_err(|e| refuse(&e))?;
            if yes {
                for slot in &roots.forget {
                    store.remove_slot(slot)?;
                }
                store.gc_apply(&plan)?;
            }
            for line in gc_lines(&roots, &plan, yes) {
                println!("{line}");
            }
            if !yes {
                let users = store.holders()?;
                if !users.is_empty() {
                    println!(
                        "the store is in use by {}: what it publishes is kept, so --yes (which waits for it) may delete less",
                        holders_text(&users)
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify => {
            let store = Store::open(&cli.store)?;
            let _lock = store.lock_store(Access::Shared, "verify", |h| {
                eprintln!("graft: waiting for {} to finish", holders_text(h))
            })?;
            let mut bad = 0;
            let ids = store.objects()?;
            for id in &ids {
                if let Err(e) = store.verify(id) {
                    bad += 1;
                    println!("corrupt: {}: {}", e.path.display(), e.reason);
                }
            }
            println!("{} artifacts, {bad} corrupt", ids.len());
            Ok(if bad == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// The store's lock for `gc --yes`, exclusive: it waits for the pipelines and stages using
/// the store (saying which), or with `no_wait` refuses, naming them.
fn gc_lock(store: &Store, no_wait: bool) -> anyhow::Result<StoreLock> {
    if no_wait {
        return store.try_lock_store(Access::Exclusive, "gc")?.map_err(|h| {
            anyhow::anyhow!(
                "gc deletes nothing: the store is in use by {}; rerun when it has finished, or without --no-wait to wait for it",
                holders_text(&h)
            )
        });
    }
    Ok(store.lock_store(Access::Exclusive, "gc", |h| {
        eprintln!(
            "gc: waiting for {} to finish with the store",
            holders_text(h)
        )
    })?)
}

fn pipeline(store: &std::path::Path, args: PipelineArgs, mode: Mode) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let mut pipeline = Pipeline::load_with(args.pipeline.as_deref(), &args.set)?;
    pipeline.apply_overrides(&args.set)?;
    for f in &args.force {
        if !pipeline.stages.iter().any(|s| Pipeline::names(s, f)) {
            bail!("--force {f}: no such stage in {}", pipeline.source);
        }
    }
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .context("cannot locate this program")?
            .parent()
            .map(PathBuf::from)
            .context("cannot locate the stage binaries")?,
    };
    let options = RunOptions {
        store: store.to_path_buf(),
        bin_dir,
        mode,
        force: args.force.into_iter().collect(),
    };
    let width = pipeline
        .stages
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4);
    println!(
        "pipeline {} ({}), store {}",
        pipeline.name,
        pipeline.source,
        store.display()
    );
    let results = options.execute(&pipeline, |spec, result, seconds| {
        println!("{}", describe(spec, result, seconds, width));
    })?;
    // Where to look: the report of every report stage that has one.
    for (name, result) in &results {
        let is_report = pipeline
            .stages
            .iter()
            .any(|s| &s.name == name && s.kind == "report");
        if let (true, StageResult::Done(o)) = (is_report, result)
            && let Some(id) = &o.artifact
        {
            let path = store.join("objects").join(id.as_str()).join("report.html");
            if path.exists() {
                println!("report: {}", path.display());
            }
        }
    }
    // What the artifacts cost to make: the stages' wall times from their manifests (the
    // time from an empty store, whichever run made them), beside this run's own time.
    if mode == Mode::Run
        && let Ok(store) = Store::open(store)
    {
        let made: f64 = results
            .iter()
            .filter_map(|(_, r)| match r {
                StageResult::Done(o) => o.artifact.as_ref(),
                _ => None,
            })
            .filter_map(|id| store.artifact(id).ok())
            .map(|a| a.manifest().wall_seconds)
            .sum();
        println!(
            "stage wall time in the manifests: {} ({made:.1} s)",
            minutes(made)
        );
    }
    println!("done in {:.2} s", start.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

/// `7 min 42 s` or `12.3 s`.
fn minutes(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else {
        let s = seconds.round() as u64;
        format!("{} min {:02} s", s / 60, s % 60)
    }
}
