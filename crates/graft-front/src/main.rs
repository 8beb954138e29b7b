//! `graft-front KIND ARGS...`: what `graft-KIND ARGS...` would do, answered without the
//! tensor backend where no tensor is needed.
//!
//! The stage binaries with tensors (`graft-pretrain`, `graft-probe`, `graft-finetune`) load
//! LibTorch on the tch build before `main` runs (about half a second), only to find, on a
//! rerun, that their output is in the store. This binary links the same stage libraries
//! built with the flex backend, which has nothing to load, and runs the same stage protocol
//! (`graft_stage::execute_or_delegate`): parameter checks (`--check`), `--status`, and a run
//! whose output is already in the store are answered here, exactly as the stage's binary
//! answers them; a run with work to do (or `--force`) becomes that binary, beside this one,
//! with the same arguments. The runner starts stages through it when it is there. Other
//! kinds go to their binary straight away, and so does every call when the stage binary is
//! newer than this one (built since, perhaps from changed stage code).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(kind) = args.next().and_then(|k| k.into_string().ok()) else {
        eprintln!("usage: graft-front KIND [stage arguments]  (KIND: a stage binary graft-KIND)");
        return ExitCode::FAILURE;
    };
    let rest: Vec<OsString> = args.collect();
    let binary = match std::env::current_exe() {
        Ok(exe) => exe.with_file_name(format!("graft-{kind}")),
        Err(e) => {
            eprintln!("error: graft-front: cannot locate itself: {e}");
            return ExitCode::FAILURE;
        }
    };
    let delegate = || become_binary(&binary, &rest);
    // A stage binary built after this front may hold stage code this front does not (a new
    // stage version): it decides for itself.
    if newer_than_me(&binary) {
        return delegate();
    }
    let argv = || {
        std::iter::once(OsString::from(format!("graft-{kind}")))
            .chain(rest.iter().cloned())
            .collect()
    };
    match kind.as_str() {
        "pretrain" => graft_stage::front_main::<graft_pretrain::Pretrain>(
            graft_pretrain::ABOUT,
            argv(),
            &delegate,
        ),
        "probe" => {
            graft_stage::front_main::<graft_probe::Probe>(graft_probe::ABOUT, argv(), &delegate)
        }
        "finetune" => graft_stage::front_main::<graft_finetune::Finetune>(
            graft_finetune::ABOUT,
            argv(),
            &delegate,
        ),
        _ => delegate(),
    }
}

/// Whether `binary` was modified after this program.
fn newer_than_me(binary: &PathBuf) -> bool {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (
        modified(binary),
        std::env::current_exe().ok().and_then(|me| modified(&me)),
    ) {
        (Some(theirs), Some(mine)) => theirs > mine,
        _ => true,
    }
}

/// Replaces this process with `binary args` (same stdin, stdout, stderr and environment),
/// so the caller sees the stage binary itself.
fn become_binary(binary: &PathBuf, args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let e = std::process::Command::new(binary).args(args).exec();
    eprintln!("error: graft-front: cannot start {}: {e}", binary.display());
    ExitCode::FAILURE
}
