//! The Slurm executor: the runs that are not in the store become one job array.
//!
//! [`run_array`] writes each run's spec to `<store>/slurm/<batch>/task-<k>.json` beside a
//! batch script `job.sh` that runs `graft-finetune worker --spec-file` on task
//! `$SLURM_ARRAY_TASK_ID`, submits it with `sbatch --array`, and polls the store and
//! `squeue` until `squeue` no longer lists the job. Each task publishes its run into the
//! store as a local worker does, so the outcome of a task is read from the store: its run is
//! there, or the task failed, and then its Slurm state and the tail of its log
//! (`<batch>/<k>.log`) say why. The store, the binary and the batch directory must be on a
//! filesystem every node shares; the store path must be absolute so every node can find
//! it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use graft_store::{Lookup, Store};
use indicatif::{ProgressBar, ProgressStyle};

use crate::FinetuneError;
use crate::run::RunSpec;
use crate::worker::Outcome;

/// Where and how the array runs; none of it enters a key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlurmOptions {
    /// `--partition`.
    pub partition: Option<String>,
    /// `--time`, Slurm's syntax (`30`, `1:00:00`, `1-00:00:00`).
    pub time: Option<String>,
    /// `--gpus-per-task` (with `--ntasks=1`), when above 0.
    pub gpus_per_task: u32,
    /// `--cpus-per-task`, when above 0; the worker's thread count.
    pub cpus_per_task: u32,
    /// More `sbatch` arguments, passed as they are (`--account=x`, `--qos=y`).
    pub args: Vec<String>,
    /// The array's concurrency limit (`--array=0-N%limit`), when above 0.
    pub max_parallel: usize,
}

/// An error of talking to Slurm.
fn spec_err(message: impl Into<String>) -> FinetuneError {
    FinetuneError::Spec(message.into())
}

/// Quotes `s` for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The batch script of an array: one worker per task, its spec chosen by the task id.
pub fn batch_script(exe: &Path, store: &Path, dir: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # graft-finetune: one fine-tune run per array task (written by the stage; rerunning\n\
         # the stage submits a new array for the runs that are still missing).\n\
         n=${{SLURM_CPUS_PER_TASK:-1}}\n\
         export RAYON_NUM_THREADS=$n OMP_NUM_THREADS=$n MKL_NUM_THREADS=$n\n\
         exec {} worker --store {} --spec-file {}/task-\"$SLURM_ARRAY_TASK_ID\".json\n",
        quote(&exe.to_string_lossy()),
        quote(&store.to_string_lossy()),
        quote(&dir.to_string_lossy()),
    )
}

/// The `sbatch` arguments for an array of `tasks` tasks in `dir`.
pub fn sbatch_args(opts: &SlurmOptions, dir: &Path, tasks: usize) -> Vec<String> {
    let mut array = format!("--array=0-{}", tasks.saturating_sub(1));
    if opts.max_parallel > 0 {
        array.push_str(&format!("%{}", opts.max_parallel));
    }
    let mut args = vec![
        "--parsable".to_owned(),
        "--job-name=graft-finetune".to_owned(),
        array,
        format!("--output={}/%a.log", dir.display()),
    ];
    if let Some(p) = &opts.partition {
        args.push(format!("--partition={p}"));
    }
    if let Some(t) = &opts.time {
        args.push(format!("--time={t}"));
    }
    // Slurm 23.11 and later refuse --gpus-per-task without a task count.
    if opts.gpus_per_task > 0 {
        args.push("--ntasks=1".to_owned());
        args.push(format!("--gpus-per-task={}", opts.gpus_per_task));
    }
    if opts.cpus_per_task > 0 {
        args.push(format!("--cpus-per-task={}", opts.cpus_per_task));
    }
    args.extend(opts.args.iter().cloned());
    args.push(dir.join("job.sh").display().to_string());
    args
}

/// Runs `program args`, returning stdout; a failure names the command and its stderr.
fn output(program: &str, args: &[String]) -> Result<String, FinetuneError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            spec_err(format!(
                "cannot run {program} (is Slurm installed here?): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(spec_err(format!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Trains `specs` as one Slurm job array; outcomes in input order.
pub fn run_array(
    exe: &Path,
    store: &Store,
    specs: &[RunSpec],
    opts: &SlurmOptions,
) -> Result<Vec<Outcome>, FinetuneError> {
    let root = store.root();
    if !root.is_absolute() {
        return Err(spec_err(format!(
            "executor = \"slurm\": the store path {:?} is not absolute; Slurm tasks on other nodes need an absolute path to a store on a filesystem they all share",
            root.display().to_string()
        )));
    }
    let dir = batch_dir(root)?;
    for (k, spec) in specs.iter().enumerate() {
        let path = dir.join(format!("task-{k}.json"));
        let json = serde_json::to_string_pretty(spec).map_err(|e| FinetuneError::Json {
            path: path.clone(),
            message: e.to_string(),
        })?;
        write(&path, &json)?;
    }
    write(&dir.join("job.sh"), &batch_script(exe, root, &dir))?;
    let submitted = output("sbatch", &sbatch_args(opts, &dir, specs.len()))?;
    let job = submitted
        .trim()
        .split(';')
        .next()
        .filter(|j| !j.is_empty() && j.chars().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| spec_err(format!("sbatch printed {submitted:?}, not a job id")))?
        .to_owned();
    eprintln!(
        "finetune: submitted {} run{} as Slurm job array {job} (logs in {})",
        specs.len(),
        if specs.len() == 1 { "" } else { "s" },
        dir.display()
    );

    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "finetune {bar:30} {pos}/{len} runs  {elapsed} eta {eta}  slurm {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let keys: Vec<_> = specs.iter().map(RunSpec::key).collect();
    // Without a terminal the bar draws nothing: a line when the counts change, at most every
    // 10 s, instead.
    let lines = !std::io::stderr().is_terminal();
    let mut said = (String::new(), Instant::now() - Duration::from_secs(10));
    let started = Instant::now();
    loop {
        let queue = squeue(&job)?;
        let done = keys
            .iter()
            .filter(|k| matches!(store.lookup(k), Ok(Lookup::Hit(_))))
            .count();
        bar.set_position(done as u64);
        let Some(tasks) = queue else { break };
        if tasks.is_empty() {
            break;
        }
        let running = tasks.iter().filter(|(_, s)| s == "RUNNING").count();
        let pending = tasks.iter().filter(|(_, s)| s == "PENDING").count();
        let msg = format!("job {job}: {running} running, {pending} pending");
        let line = format!("finetune: {done}/{} runs in the store, {msg}", specs.len());
        if lines && line != said.0 && said.1.elapsed() >= Duration::from_secs(10) {
            eprintln!("{line}");
            said = (line, Instant::now());
        }
        bar.set_message(msg);
        // Twice a second at first, then every 5 s: squeue asks slurmctld each time.
        let poll = if started.elapsed() < Duration::from_secs(60) {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        };
        std::thread::sleep(poll);
    }
    bar.finish_and_clear();

    let states = task_states(&job);
    let mut outcomes = Vec::with_capacity(specs.len());
    for (k, key) in keys.iter().enumerate() {
        match store.lookup(key)? {
            Lookup::Hit(a) => outcomes.push(Outcome::Published(a.id().clone())),
            _ => {
                let state = states
                    .iter()
                    .find(|(t, _)| *t == k)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_else(|| {
                        "not listed by squeue (cancelled before it started?)".to_owned()
                    });
                let log = dir.join(format!("{k}.log"));
                outcomes.push(Outcome::Failed(format!(
                    "Slurm job {job}_{k} ended without its run: {state}; log {}: {}",
                    log.display(),
                    log_tail(&log, 3)
                )));
            }
        }
    }
    Ok(outcomes)
}

/// A new batch directory under `<store>/slurm/`.
fn batch_dir(root: &Path) -> Result<PathBuf, FinetuneError> {
    let base = root.join("slurm");
    std::fs::create_dir_all(&base).map_err(|e| FinetuneError::Io {
        path: base.clone(),
        source: e,
    })?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for n in 0.. {
        let dir = base.join(format!("{stamp}-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(FinetuneError::Io {
                    path: dir,
                    source: e,
                });
            }
        }
    }
    unreachable!("an unbounded range ends only by returning")
}

fn write(path: &Path, text: &str) -> Result<(), FinetuneError> {
    std::fs::write(path, text).map_err(|e| FinetuneError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The job's tasks that Slurm still lists as pending or running (`squeue -h -j JOB`), as
/// (task id, state); `None` once Slurm no longer knows the job.
fn squeue(job: &str) -> Result<Option<Vec<(String, String)>>, FinetuneError> {
    let out = Command::new("squeue")
        .args(["-h", "-r", "-j", job, "-o", "%K %T"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spec_err(format!("cannot run squeue: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("Invalid job id") {
            return Ok(None);
        }
        return Err(spec_err(format!("squeue -j {job} failed: {}", err.trim())));
    }
    Ok(Some(parse_pairs(&String::from_utf8_lossy(&out.stdout))))
}

/// Final states of the job's tasks that Slurm still remembers, as (task, "STATE (reason)").
fn task_states(job: &str) -> Vec<(usize, String)> {
    let Ok(out) = Command::new("squeue")
        .args(["-h", "-r", "-t", "all", "-j", job, "-o", "%K %T %r"])
        .stdin(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let task = parts.next()?.parse().ok()?;
            let state = parts.next()?.to_lowercase();
            let reason: Vec<&str> = parts.filter(|r| *r != "None").collect();
            Some(if reason.is_empty() {
                (task, state)
            } else {
                (task, format!("{state} ({})", reason.join(" ")))
            })
        })
        .collect()
}

fn parse_pairs(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// The last `n` lines of a task's log that are not progress lines, joined by ` | `.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with("progress "))
                .collect();
            let tail = &lines[lines.len().saturating_sub(n)..];
            if tail.is_empty() {
                "(the log has no messages)".to_owned()
            } else {
                tail.join(" | ")
            }
        }
        Err(_) => "(no log: the task did not start)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbatch_arguments_carry_every_option_and_no_key() {
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("1:00:00".into()),
            gpus_per_task: 1,
            cpus_per_task: 4,
            args: vec!["--account=lab".into()],
            max_parallel: 8,
        };
        let args = sbatch_args(&opts, Path::new("/s/slurm/b"), 12);
        assert_eq!(
            args,
            [
                "--parsable",
                "--job-name=graft-finetune",
                "--array=0-11%8",
                "--output=/s/slurm/b/%a.log",
                "--partition=gpu",
                "--time=1:00:00",
                "--ntasks=1",
                "--gpus-per-task=1",
                "--cpus-per-task=4",
                "--account=lab",
                "/s/slurm/b/job.sh",
            ]
        );
        let plain = sbatch_args(&SlurmOptions::default(), Path::new("/s/b"), 1);
        assert_eq!(plain[2], "--array=0-0");
        assert_eq!(plain.len(), 5);
    }

    #[test]
    fn the_batch_script_quotes_paths_and_picks_the_task_spec() {
        let s = batch_script(
            Path::new("/opt/it's/graft-finetune"),
            Path::new("/shared/store"),
            Path::new("/shared/store/slurm/b"),
        );
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains(
            r#"exec '/opt/it'\''s/graft-finetune' worker --store '/shared/store' --spec-file '/shared/store/slurm/b'/task-"$SLURM_ARRAY_TASK_ID".json"#
        ));
    }

    #[test]
    fn a_log_tail_skips_progress_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "progress 1 4 2.0\nstarting\nprogress 2 4 1.9\nslurmstepd: error: *** JOB 12 CANCELLED ***\n").unwrap();
        assert_eq!(
            log_tail(&log, 3),
            "starting | slurmstepd: error: *** JOB 12 CANCELLED ***"
        );
        assert_eq!(
            log_tail(&dir.path().join("1.log"), 3),
            "(no log: the task did not start)"
        );
    }
}
