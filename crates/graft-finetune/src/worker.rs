//! Runs fan out into worker processes: `graft-finetune worker --store S --spec JSON` trains
//! one run (or finds it in the store) and reports on stdout, one line each:
//! `progress <step> <total> <loss>` after every step, `epoch <k> <epochs> <loss> <val>
//! <seconds>` after every epoch (val `NaN` under the final protocol), `warning <text>` (a
//! corrupt entry it moved aside), then `result <run.json>` and `artifact <id>`. The parent
//! keeps `jobs` workers busy, draws a progress bar per worker and an overall one (without
//! a terminal: one line per epoch and per finished run, with the time left), and collects
//! the outcomes. A process per run also makes each run's peak memory its own.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Instant;

use graft_store::{ArtifactId, Store};
use graft_train::{EpochRecord, Progress, progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::FinetuneError;
use crate::run::{RunResult, RunSpec, ensure_run, read_result};

/// How one queued run ended.
#[derive(Debug)]
pub enum Outcome {
    Published(ArtifactId),
    /// The worker failed (not a divergence, which is a published result): the message.
    Failed(String),
}

/// Where worker `slot` of `jobs` runs: `cuda` spreads workers over GPUs `cuda:0..`.
pub fn slot_device(device: &str, slot: usize, jobs: usize) -> String {
    if device == "cuda" && jobs > 1 {
        format!("cuda:{slot}")
    } else {
        device.to_owned()
    }
}

/// Trains `specs` with up to `jobs` worker processes of `exe`; outcomes in input order.
pub fn run_all(exe: &Path, store: &Path, specs: &[RunSpec], jobs: usize) -> Vec<Outcome> {
    let jobs = jobs.clamp(1, specs.len().max(1));
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(specs.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("finetune {bar:30} {pos}/{len} runs  {elapsed} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.tick();
    let queue: Mutex<VecDeque<usize>> = Mutex::new((0..specs.len()).collect());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..specs.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_job_threads = (threads / jobs).max(1);
    // Without a terminal the bars are invisible: one line per epoch and per finished run.
    let lines = !progress::bars_visible();
    let start = Instant::now();
    let finished = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for slot in 0..jobs {
            let (queue, results, multi, overall) = (&queue, &results, &multi, &overall);
            let finished = &finished;
            scope.spawn(move || {
                let bar = multi.insert_before(overall, ProgressBar::new(0));
                bar.set_style(
                    ProgressStyle::with_template("  {prefix:40!} {bar:24} {pos}/{len} loss {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                loop {
                    let Some(idx) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                        break;
                    };
                    let mut spec = specs[idx].clone();
                    spec.device = slot_device(&spec.device, slot, jobs);
                    bar.set_prefix(spec.label());
                    bar.set_position(0);
                    bar.set_message("");
                    let threads = (jobs > 1 && spec.device == "cpu").then_some(per_job_threads);
                    let (outcome, result) = run_worker(exe, store, &spec, threads, &bar, lines);
                    if let Outcome::Failed(msg) = &outcome {
                        multi.suspend(|| eprintln!("finetune: {} failed: {msg}", spec.label()));
                    }
                    if lines && let Ok(mut done) = finished.lock() {
                        *done += 1;
                        let left =
                            progress::time_left(start.elapsed().as_secs_f64(), *done, specs.len());
                        eprintln!(
                            "finetune: run {}/{} done: {}: {}; about {} left",
                            *done,
                            specs.len(),
                            spec.label(),
                            match (&outcome, &result) {
                                (Outcome::Failed(_), _) => "failed".to_owned(),
                                (_, Some(r)) => run_figures(r),
                                (_, None) => "published".to_owned(),
                            },
                            progress::duration(left)
                        );
                    }
                    if let Ok(mut r) = results.lock() {
                        r[idx] = Some(outcome);
                    }
                    overall.inc(1);
                }
                bar.finish_and_clear();
            });
        }
    });
    overall.finish_and_clear();
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Failed("not run".into())))
        .collect()
}

/// `ok, val 62.5 %, test 60.1 %, 45.2 s` or `diverged, 3.1 s`.
fn run_figures(r: &RunResult) -> String {
    let mut s = r.status.to_string();
    if let (Some(val), Some(test)) = (r.val_accuracy, r.test_accuracy) {
        s.push_str(&format!(
            ", val {:.1} %, test {:.1} %",
            100.0 * val,
            100.0 * test
        ));
    }
    s.push_str(&format!(", {:.1} s", r.wall_seconds));
    s
}

/// Runs one worker process to its end; the run's `run.json` as the worker reported it.
/// With `lines`, prints one line per epoch (the bar is invisible without a terminal).
fn run_worker(
    exe: &Path,
    store: &Path,
    spec: &RunSpec,
    threads: Option<usize>,
    bar: &ProgressBar,
    lines: bool,
) -> (Outcome, Option<RunResult>) {
    let json = match serde_json::to_string(spec) {
        Ok(j) => j,
        Err(e) => return (Outcome::Failed(e.to_string()), None),
    };
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--store")
        .arg(store)
        .arg("--spec")
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = threads {
        for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            cmd.env(var, n.to_string());
        }
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return (
                Outcome::Failed(format!("cannot start {}: {e}", exe.display())),
                None,
            );
        }
    };
    let mut stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let mut artifact = None;
    let mut result = None;
    let started = Instant::now();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let mut parts = line.split_whitespace();
            match parts.next() {
                Some("progress") => {
                    let v: Vec<&str> = parts.collect();
                    if let [step, total, loss] = v.as_slice() {
                        bar.set_length(total.parse().unwrap_or(0));
                        bar.set_position(step.parse().unwrap_or(0));
                        bar.set_message(loss.to_string());
                    }
                }
                Some("epoch") if lines => {
                    let v: Vec<f64> = parts.filter_map(|p| p.parse().ok()).collect();
                    if let [epoch, epochs, train_loss, val_accuracy, seconds] = v[..] {
                        let record = EpochRecord {
                            epoch: epoch as usize,
                            train_loss,
                            val_accuracy: Some(val_accuracy).filter(|v| !v.is_nan()),
                            lr: 0.0,
                            seconds,
                        };
                        let elapsed = started.elapsed().as_secs_f64();
                        eprintln!(
                            "finetune: {}: {}",
                            spec.label(),
                            progress::epoch_line(&record, epochs as usize, elapsed)
                        );
                    }
                }
                Some("result") => {
                    let rest = line.trim_start().trim_start_matches("result").trim();
                    result = serde_json::from_str(rest).ok();
                }
                Some("artifact") => artifact = parts.next().and_then(|s| ArtifactId::parse(s).ok()),
                Some("warning") => {
                    let w = line["warning".len()..].trim();
                    bar.suspend(|| eprintln!("warning: {w}"));
                }
                _ => {}
            }
        }
    }
    let status = child.wait();
    let err_text = err_thread.join().unwrap_or_default();
    let outcome = match (status, artifact) {
        (Ok(s), Some(id)) if s.success() => Outcome::Published(id),
        (Ok(s), _) => {
            let last: Vec<&str> = err_text.lines().rev().take(3).collect();
            let last: Vec<&str> = last.into_iter().rev().collect();
            Outcome::Failed(format!("worker exited with {s}: {}", last.join(" | ")))
        }
        (Err(e), _) => Outcome::Failed(e.to_string()),
    };
    (outcome, result)
}

/// The worker process's `main`: `worker --store S --spec JSON` (or `--spec-file PATH`, as
/// a Slurm array task runs it).
pub fn worker_main(args: &[String]) -> Result<(), FinetuneError> {
    let mut store: Option<PathBuf> = None;
    let mut spec: Option<String> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => store = it.next().map(PathBuf::from),
            "--spec" => spec = it.next().cloned(),
            "--spec-file" => {
                let Some(path) = it.next() else { break };
                spec = Some(
                    std::fs::read_to_string(path).map_err(|e| FinetuneError::Io {
                        path: path.into(),
                        source: e,
                    })?,
                );
            }
            other => {
                return Err(FinetuneError::Spec(format!(
                    "worker: unknown argument {other:?}"
                )));
            }
        }
    }
    let (Some(store), Some(spec)) = (store, spec) else {
        return Err(FinetuneError::Spec(
            "worker: needs --store and --spec (or --spec-file)".into(),
        ));
    };
    let spec: RunSpec = serde_json::from_str(&spec)
        .map_err(|e| FinetuneError::Spec(format!("worker: --spec: {e}")))?;
    let store = Store::open(&store)?;
    let (artifact, warnings) = ensure_run(&store, &spec, |p| match p {
        Progress::Step { step, total, loss } => println!("progress {step} {total} {loss:.4}"),
        Progress::Epoch { record, epochs } => println!(
            "epoch {} {epochs} {} {} {}",
            record.epoch,
            record.train_loss,
            record.val_accuracy.unwrap_or(f64::NAN),
            record.seconds
        ),
    })?;
    for w in warnings {
        println!("warning {w}");
    }
    let result = read_result(&artifact)?;
    println!(
        "result {}",
        serde_json::to_string(&result).map_err(|e| FinetuneError::Spec(e.to_string()))?
    );
    println!("artifact {}", artifact.id());
    Ok(())
}
