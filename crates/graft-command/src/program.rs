//! Running the external program: in its own process group, stdin closed, stdout and stderr
//! forwarded to this process's stderr (stdout is the stage's outcome line) while the last
//! lines are kept for the error message, and killed with its whole group at the timeout.
//! Anything the program leaves running after it exits is killed too, and the program is
//! killed when this process dies (Ctrl-C on the runner).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Lines of output kept for an error message.
pub const TAIL_LINES: usize = 20;
/// Characters kept of one output line.
const LINE_CHARS: usize = 400;

/// What to run.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub cwd: PathBuf,
    pub env: Vec<(String, OsString)>,
    pub timeout: Duration,
    /// Forward the program's output to this process's stderr as it comes.
    pub echo: bool,
}

/// A program that ran to a zero exit status.
#[derive(Debug, Clone)]
pub struct Finished {
    pub seconds: f64,
    /// Its output, stdout and stderr interleaved.
    pub output: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("cannot start {}: {source}", program.display())]
    Start {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{} {status}{}", program.display(), show_tail(tail))]
    Failed {
        program: PathBuf,
        status: String,
        tail: Vec<String>,
    },
    #[error(
        "{} did not finish within timeout = {seconds} s and was killed{}",
        program.display(),
        show_tail(tail)
    )]
    TimedOut {
        program: PathBuf,
        seconds: f64,
        tail: Vec<String>,
    },
    #[error("{}: {source}", program.display())]
    Io {
        program: PathBuf,
        source: std::io::Error,
    },
}

fn show_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return "; it printed nothing".to_owned();
    }
    let mut s = format!("; the last {} lines of its output:", tail.len());
    for l in tail {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => format!("ended with {status}"),
    }
}

/// Runs `inv` to completion; a non-zero exit, a signal or the timeout is an error with the
/// tail of the output.
pub fn run(inv: &Invocation) -> Result<Finished, ProgramError> {
    let start = Instant::now();
    let io = |source| ProgramError::Io {
        program: inv.program.clone(),
        source,
    };
    let (reader, writer) = std::io::pipe().map_err(io)?;
    let writer2 = writer.try_clone().map_err(io)?;
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .current_dir(&inv.cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .process_group(0);
    for (k, v) in &inv.env {
        cmd.env(k, v);
    }
    // Its own group keeps a terminal's Ctrl-C from reaching it directly, so it dies with
    // this process instead (Linux: the parent-death signal).
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| ProgramError::Start {
        program: inv.program.clone(),
        source,
    })?;
    // The command holds the pipe's write ends; the reader sees end of file only when every
    // copy is closed.
    drop(cmd);
    let pgid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let echo = inv.echo;
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        let mut stderr = std::io::stderr();
        while let Ok(n) = reader.read_until(b'\n', &mut line) {
            if n == 0 {
                break;
            }
            if echo {
                let _ = stderr.write_all(&line);
            }
            let text = String::from_utf8_lossy(&line);
            all.push_str(&text);
            let text = text.trim_end();
            let short: String = text.chars().take(LINE_CHARS).collect();
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(short);
            line.clear();
        }
        let _ = tx.send((all, Vec::from(tail)));
    });

    let deadline = start + inv.timeout;
    let status = loop {
        match child.try_wait().map_err(io)? {
            Some(status) => break Some(status),
            None if Instant::now() >= deadline => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    // The group goes whether the program finished or not: nothing it started outlives it.
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    let status = match status {
        Some(s) => Some(s),
        None => {
            let _ = child.wait();
            None
        }
    };
    // A grandchild that left the group could keep the pipe open: do not wait for it forever.
    let (output, tail) = rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| (String::new(), Vec::new()));
    let seconds = start.elapsed().as_secs_f64();
    match status {
        None => Err(ProgramError::TimedOut {
            program: inv.program.clone(),
            seconds: inv.timeout.as_secs_f64(),
            tail,
        }),
        Some(s) if !s.success() => Err(ProgramError::Failed {
            program: inv.program.clone(),
            status: describe(s),
            tail,
        }),
        Some(_) => Ok(Finished { seconds, output }),
    }
}

/// The program as an absolute path: a name without `/` is looked up in `PATH`, a path is
/// made absolute against the current directory (without resolving symlinks: a virtual
/// environment's `python` must keep its own path).
pub fn resolve(program: &str) -> Result<PathBuf, String> {
    if program.contains('/') {
        let p = std::path::absolute(Path::new(program)).map_err(|e| format!("{program}: {e}"))?;
        if !p.is_file() {
            return Err(format!("{program}: no such file"));
        }
        return Ok(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return std::path::absolute(&candidate).map_err(|e| format!("{program}: {e}"));
        }
    }
    Err(format!("{program}: not found in PATH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, timeout: f64) -> Invocation {
        Invocation {
            program: resolve("sh").unwrap(),
            args: vec!["-c".into(), script.into()],
            cwd: std::env::temp_dir(),
            env: vec![("GRAFT_X".into(), "42".into())],
            timeout: Duration::from_secs_f64(timeout),
            echo: false,
        }
    }

    #[test]
    fn output_and_environment_come_through() {
        let f = run(&sh("echo out; echo err >&2; echo $GRAFT_X", 10.0)).unwrap();
        assert_eq!(f.output, "out\nerr\n42\n");
    }

    #[test]
    fn a_failure_shows_the_tail_of_its_output() {
        let e = run(&sh(
            "for i in $(seq 1 30); do echo line $i >&2; done; exit 3",
            10.0,
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("exited with status 3"), "{e}");
        assert!(e.contains("line 30") && e.contains("line 11"), "{e}");
        assert!(!e.contains("line 10\n"), "{e}");
    }

    #[test]
    fn a_hang_is_killed_at_the_timeout_with_its_children() {
        let start = Instant::now();
        // The background sleep keeps the pipe open: it must die with the group.
        let e = run(&sh("sleep 30 & echo started; sleep 30", 0.5))
            .unwrap_err()
            .to_string();
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "{:?}",
            start.elapsed()
        );
        assert!(
            e.contains("timeout = 0.5 s") && e.contains("started"),
            "{e}"
        );
    }

    #[test]
    fn programs_resolve_by_path_or_name() {
        assert!(resolve("sh").unwrap().is_absolute());
        assert!(
            resolve("no-such-program-xyz")
                .unwrap_err()
                .contains("not found")
        );
        assert!(
            resolve("./no/such/file")
                .unwrap_err()
                .contains("no such file")
        );
    }
}
