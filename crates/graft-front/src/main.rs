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
//! with the same arguments, and so does any call whose answer is the binary's backend's
//! (`Stage::backend_decides`: a CUDA device, which only the binary's build can accept or
//! count), `--check` and `--status` included. The runner starts stages through it when it is
//! there. Other kinds go to their binary straight away, and so does every call when the
//! stage binary is newer than this one (built since, perhaps from changed stage code).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
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
    // The stage binary would refuse an unknown GRAFT_CPU_KERNELS before anything else; so
    // does its front, `--check` included.
    if matches!(kind.as_str(), "pretrain" | "probe" | "finetune")
        && let Err(e) = graft_backend::numerics::parse_mode(
            std::env::var(graft_backend::numerics::MODE_VAR)
                .ok()
                .as_deref(),
        )
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
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
fn newer_than_me(binary: &Path) -> bool {
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

#[cfg(test)]
mod tests {
    use graft_stage::{Stage, StageArgs, Status, execute_or_delegate};

    /// `--check` of stage `S` on `device` with `params` and every input the stage may want
    /// (ids in the right form; `--check` opens no store).
    fn check<S: Stage>(device: &str, params: &[&str]) -> Result<Option<Status>, String> {
        let id = "a".repeat(64);
        let args = StageArgs {
            store: "no-store-needed".into(),
            params: params.iter().map(|p| p.to_string()).collect(),
            jobs: None,
            device: Some(device.to_owned()),
            params_json: None,
            inputs: match S::NAME {
                "pretrain" => vec![format!("dataset={id}")],
                _ => vec![format!("dataset={id}"), format!("base={id}")],
            },
            slot: None,
            check: true,
            status: false,
            force: false,
            json: false,
        };
        execute_or_delegate::<S>(&args, true)
            .map(|o| o.map(|o| o.status))
            .map_err(|e| e.to_string())
    }

    /// Issue 25: what only the stage binary's backend can say (a CUDA device) is handed to
    /// the binary (`None`); `cpu` is answered here, and so is a malformed device, whose
    /// error every build gives alike.
    fn devices_go_to_the_binary<S: Stage>(params: &[&str]) {
        for device in ["cuda", "cuda:0", "cuda:1"] {
            assert_eq!(check::<S>(device, params), Ok(None), "{} {device}", S::NAME);
        }
        assert_eq!(
            check::<S>("cpu", params),
            Ok(Some(Status::Checked)),
            "{}",
            S::NAME
        );
        for device in ["gpu", "cuda:x"] {
            let e = check::<S>(device, params).unwrap_err();
            assert!(
                e.contains(&format!("device = {device:?}: expected cpu, cuda")),
                "{e}"
            );
        }
    }

    #[test]
    fn the_tensor_stages_hand_cuda_devices_to_their_binary() {
        devices_go_to_the_binary::<graft_pretrain::Pretrain>(&[]);
        devices_go_to_the_binary::<graft_probe::Probe>(&[]);
        devices_go_to_the_binary::<graft_finetune::Finetune>(&[]);
    }

    /// The process that submits a Slurm array opens no device, so the front answers it.
    #[test]
    fn a_slurm_submission_is_answered_here() {
        type F = graft_finetune::Finetune;
        let slurm = ["executor=slurm", "slurm_gpus_per_task=1"];
        assert_eq!(check::<F>("cuda", &slurm), Ok(Some(Status::Checked)));
        let e = check::<F>("cuda", &["executor=slurm"]).unwrap_err();
        assert!(
            e.contains("slurm_gpus_per_task = 0 with device = \"cuda\""),
            "{e}"
        );
    }
}
