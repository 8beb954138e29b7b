//! Runs fan out into worker processes: `graft-finetune worker --store S --spec JSON` trains
//! one run (or finds it in the store) and reports on stdout, one line each:
//! `progress <step> <total> <loss>` for every step (a few at a time on a GPU, where the
//! loss is read back every few steps), `epoch <k> <epochs> <loss> <val> <seconds>` after
//! every epoch (val `NaN` under the final protocol), `warning <text>` (a corrupt entry it
//! moved aside), then `result <run.json>` and `artifact <id>`. The parent keeps `jobs`
//! workers busy ([`Layout`]: with `device = "cuda"`, `workers_per_gpu` of them on each GPU;
//! each with a thread count), draws a progress bar per worker and an overall one (without
//! a terminal: one line per epoch and per finished run, with the time left), and collects
//! the outcomes. A process per run also makes each run's peak memory its own.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use graft_store::{Access, ArtifactId, Store, holders_text};
use graft_train::{EpochRecord, Progress, progress};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::FinetuneError;
use crate::run::{RunResult, RunSpec, ensure_run, read_result};
use crate::workbench::Workbench;

/// How one queued run ended.
#[derive(Debug)]
pub enum Outcome {
    Published(ArtifactId),
    /// The worker failed (not a divergence, which is a published result): the message.
    Failed(String),
}

/// How the local workers are laid out over devices and cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Worker processes at once.
    pub jobs: usize,
    /// Workers per GPU when `device = "cuda"` spreads them over GPUs.
    pub workers_per_gpu: usize,
    /// CPU threads per worker; 0: the machine's cores shared out among the workers.
    pub threads: usize,
}

impl Layout {
    /// The layout `p` asks for.
    pub fn of(p: &crate::FinetuneParams) -> Layout {
        Layout {
            jobs: p.jobs,
            workers_per_gpu: p.workers_per_gpu,
            threads: p.worker_threads,
        }
    }

    /// This layout with at most `runs` workers (no idle ones).
    pub fn for_runs(self, runs: usize) -> Layout {
        Layout {
            jobs: self.jobs.clamp(1, runs.max(1)),
            ..self
        }
    }

    /// Where worker `slot` runs: `cuda` with more workers than one GPU takes puts
    /// `workers_per_gpu` of them on `cuda:0`, the next ones on `cuda:1`, and so on; any
    /// other device is every worker's.
    pub fn device(&self, device: &str, slot: usize) -> String {
        let per_gpu = self.workers_per_gpu.max(1);
        if device == "cuda" && self.jobs > per_gpu {
            format!("cuda:{}", slot / per_gpu)
        } else {
            device.to_owned()
        }
    }

    /// How many workers run on the device of worker `slot` (itself included).
    pub fn sharing(&self, device: &str, slot: usize) -> usize {
        let mine = self.device(device, slot);
        (0..self.jobs)
            .filter(|&k| self.device(device, k) == mine)
            .count()
    }

    /// CPU threads per worker on a machine with `cores` cores.
    pub fn threads_per_worker(&self, cores: usize) -> usize {
        match self.threads {
            0 => (cores / self.jobs.max(1)).max(1),
            n => n,
        }
    }

    /// `spec` as worker `slot` trains it: on its device, with its share of that device's
    /// memory for activation caches.
    pub fn assign(&self, spec: &RunSpec, slot: usize) -> RunSpec {
        let mut spec = spec.clone();
        let sharing = self.sharing(&spec.device, slot);
        spec.device = self.device(&spec.device, slot);
        spec.cache.device_memory_mib /= sharing.max(1);
        spec
    }
}

/// Trains `specs` with the workers of `layout`, processes of `exe`; outcomes in input order.
pub fn run_all(exe: &Path, store: &Path, specs: &[RunSpec], layout: Layout) -> Vec<Outcome> {
    let layout = layout.for_runs(specs.len());
    let jobs = layout.jobs;
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(specs.len() as u64));
    overall.set_style(
        ProgressStyle::with_template("finetune {bar:30} {pos}/{len} runs  {elapsed} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    overall.tick();
    let queue: Mutex<VecDeque<usize>> = Mutex::new(cache_order(specs).into());
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..specs.len()).map(|_| None).collect());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // CPU threads per worker, set explicitly (intra-op), on the CPU and on a GPU alike:
    // LibTorch's default of every core in each of several workers oversubscribes them.
    let threads = layout.threads_per_worker(cores);
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
                let spawn_worker = || Worker::start(exe, store, threads);
                let mut worker: Option<Worker> = None;
                bar.set_style(
                    ProgressStyle::with_template("  {prefix:40!} {bar:24} {pos}/{len} loss {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                while let Some(idx) = queue.lock().ok().and_then(|mut q| q.pop_front()) {
                    let spec = layout.assign(&specs[idx], slot);
                    bar.set_prefix(spec.label());
                    bar.set_position(0);
                    bar.set_message("");
                    let (outcome, result) =
                        run_in_worker(&mut worker, spawn_worker, &spec, &bar, lines);
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
                if let Some(w) = worker.take() {
                    let _ = w.finish();
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

/// The order runs are handed to workers: those sharing a dataset and backbone together,
/// by the lowest node whose cached value they need (a worker advances its activation cache
/// from a lower node to a higher one), full fine-tuning last; the input order within that.
pub fn cache_order(specs: &[RunSpec]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..specs.len()).collect();
    order.sort_by_key(|&k| {
        let s = &specs[k];
        let node = match s.method {
            crate::run::Method::Full => usize::MAX,
            crate::run::Method::LinearProbe => usize::MAX - 1,
            // LoRA changes the first sub-layer: it needs node 0, the embedding.
            crate::run::Method::Lora => 0,
            _ => graft_graph::PlainStart::of(s.edges.iter().copied())
                .map_or(usize::MAX - 1, |p| p.lowest()),
        };
        let random = s.method == crate::run::Method::AdaptersRandomInit;
        (
            s.dataset_dir.clone(),
            s.base.to_string(),
            random,
            s.seed * u64::from(random),
            node,
        )
    });
    order
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

/// A running worker process that trains the specs sent to it, one at a time.
struct Worker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
    /// The last lines of its stderr.
    stderr: Arc<Mutex<VecDeque<String>>>,
    err_thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Starts a worker with `threads` CPU threads (LibTorch's, flex's rayon pool's).
    fn start(exe: &Path, store: &Path, threads: usize) -> Result<Worker, String> {
        let mut child = worker_command(exe, store, threads)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        let (Some(stdin), Some(stdout), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err("worker started without its pipes".into());
        };
        let stderr: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let tail = stderr.clone();
        let err_thread = std::thread::spawn(move || {
            let mut text = String::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.push_str(&String::from_utf8_lossy(&buf[..n]));
                while let Some(k) = text.find('\n') {
                    let line: String = text.drain(..=k).collect();
                    if let Ok(mut t) = tail.lock() {
                        t.push_back(line.trim_end().to_owned());
                        if t.len() > 20 {
                            t.pop_front();
                        }
                    }
                }
            }
            if !text.trim().is_empty()
                && let Ok(mut t) = tail.lock()
            {
                t.push_back(text.trim_end().to_owned());
            }
        });
        Ok(Worker {
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            stderr,
            err_thread: Some(err_thread),
        })
    }

    /// Ends the worker (its stdin closes, it exits) and waits for it.
    fn finish(mut self) -> String {
        drop(self.stdin);
        let status = self.child.wait();
        if let Some(t) = self.err_thread.take() {
            let _ = t.join();
        }
        let last: Vec<String> = self
            .stderr
            .lock()
            .map(|t| t.iter().rev().take(3).rev().cloned().collect())
            .unwrap_or_default();
        match status {
            Ok(s) => format!("worker exited with {s}: {}", last.join(" | ")),
            Err(e) => e.to_string(),
        }
    }
}

/// The command that starts a serving worker with `threads` CPU threads.
pub(crate) fn worker_command(exe: &Path, store: &Path, threads: usize) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("worker")
        .arg("--store")
        .arg(store)
        .arg("--serve")
        .arg("--threads")
        .arg(threads.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        cmd.env(var, threads.to_string());
    }
    cmd
}

/// Trains `spec` in `worker` (started when there is none); the worker is kept for the next
/// run unless it died. With `lines`, prints one line per epoch (the bar is invisible
/// without a terminal).
fn run_in_worker(
    worker: &mut Option<Worker>,
    start: impl Fn() -> Result<Worker, String>,
    spec: &RunSpec,
    bar: &ProgressBar,
    lines: bool,
) -> (Outcome, Option<RunResult>) {
    let json = match serde_json::to_string(spec) {
        Ok(j) => j,
        Err(e) => return (Outcome::Failed(e.to_string()), None),
    };
    if worker.is_none() {
        match start() {
            Ok(w) => *worker = Some(w),
            Err(e) => return (Outcome::Failed(e), None),
        }
    }
    let Some(w) = worker.as_mut() else {
        return (Outcome::Failed("no worker".into()), None);
    };
    let sent = writeln!(w.stdin, "{json}").and_then(|_| w.stdin.flush());
    let mut artifact = None;
    let mut result = None;
    let mut error = None;
    let mut done = false;
    let started = Instant::now();
    if sent.is_ok() {
        for line in w.stdout.by_ref().map_while(Result::ok) {
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
                    // The wall time lives in the manifest, not in run.json's text.
                    result = serde_json::from_str::<RunResult>(rest)
                        .ok()
                        .map(|r| RunResult {
                            wall_seconds: started.elapsed().as_secs_f64(),
                            ..r
                        });
                }
                Some("artifact") => artifact = parts.next().and_then(|s| ArtifactId::parse(s).ok()),
                Some("warning") => {
                    let w = line["warning".len()..].trim();
                    bar.suspend(|| eprintln!("warning: {w}"));
                }
                Some("error") => error = Some(line["error".len()..].trim().to_owned()),
                Some("done") => {
                    done = true;
                    break;
                }
                _ => {}
            }
        }
    }
    if !done {
        // The worker died (or its pipe broke) during the run: it is not reused.
        let why = worker
            .take()
            .map(Worker::finish)
            .unwrap_or_else(|| "no worker".into());
        return (Outcome::Failed(why), result);
    }
    match (artifact, error) {
        (Some(id), None) => (Outcome::Published(id), result),
        (_, Some(e)) => (Outcome::Failed(e), result),
        (None, None) => (
            Outcome::Failed("the worker reported no artifact".into()),
            result,
        ),
    }
}

/// The worker process's `main`: `worker --store S --spec JSON` (or `--spec-file PATH`, as
/// a Slurm array task runs it) trains one run; `worker --store S --serve` trains the specs
/// it reads from stdin, one JSON line each, ending each with a `done` line (a run that
/// fails says `error <message>` first) and keeping its datasets and activation caches
/// from one run to the next, until stdin closes. `--threads N` sets the intra-op threads.
pub fn worker_main(args: &[String]) -> Result<(), FinetuneError> {
    let mut store: Option<PathBuf> = None;
    let mut spec: Option<String> = None;
    let mut serve = false;
    let mut threads: Option<usize> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--store" => store = it.next().map(PathBuf::from),
            "--spec" => spec = it.next().cloned(),
            "--serve" => serve = true,
            "--threads" => {
                threads = Some(
                    it.next()
                        .and_then(|n| n.parse().ok())
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            FinetuneError::Spec("worker: --threads needs a positive integer".into())
                        })?,
                )
            }
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
    let Some(store) = store else {
        return Err(FinetuneError::Spec(
            "worker: needs --store and --spec (or --spec-file, or --serve)".into(),
        ));
    };
    if let Some(n) = threads {
        graft_backend::set_threads(n);
    }
    let store = Store::open(&store)?;
    // Held while it trains and publishes: `gc --yes` waits (a Slurm task on another node
    // holds it as the stage that submitted it does).
    let _lock = store.lock_store(Access::Shared, "finetune worker", |h| {
        eprintln!(
            "finetune worker: waiting for {} to finish with the store",
            holders_text(h)
        )
    })?;
    match (spec, serve) {
        (Some(spec), false) => {
            let spec: RunSpec = serde_json::from_str(&spec)
                .map_err(|e| FinetuneError::Spec(format!("worker: --spec: {e}")))?;
            let mut bench = Workbench::new(spec.cache);
            serve_one(&store, &spec, &mut bench)
        }
        (None, true) => {
            let mut bench: Option<Workbench> = None;
            for line in std::io::stdin().lock().lines() {
                let line = line.map_err(|e| FinetuneError::Io {
                    path: "stdin".into(),
                    source: e,
                })?;
                if line.trim().is_empty() {
                    continue;
                }
                let outcome = serde_json::from_str::<RunSpec>(&line)
                    .map_err(|e| FinetuneError::Spec(format!("worker: spec: {e}")))
                    .and_then(|spec| {
                        let bench = bench.get_or_insert_with(|| Workbench::new(spec.cache));
                        serve_one(&store, &spec, bench)
                    });
                if let Err(e) = outcome {
                    println!("error {}", e.to_string().replace('\n', " | "));
                }
                println!("done");
                std::io::stdout().flush().ok();
            }
            Ok(())
        }
        _ => Err(FinetuneError::Spec(
            "worker: needs one of --spec, --spec-file or --serve".into(),
        )),
    }
}

/// Trains (or finds) one run and reports it on stdout.
fn serve_one(store: &Store, spec: &RunSpec, bench: &mut Workbench) -> Result<(), FinetuneError> {
    let (artifact, warnings) = ensure_run(store, spec, bench, |p| match p {
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
