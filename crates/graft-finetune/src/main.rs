//! `graft-finetune`: the fine-tune stage binary (see the `graft_finetune` crate), and with
//! `worker` as first argument one of its worker processes.

fn main() -> std::process::ExitCode {
    // Before anything touches a tensor: LibTorch's CPU kernels at one instruction level.
    if let Err(e) = graft_backend::numerics::pin_cpu_kernels() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        return match graft_stage::catch_panic(|| graft_finetune::worker::worker_main(&args[1..])) {
            Ok(Ok(())) => std::process::ExitCode::SUCCESS,
            Ok(Err(e)) => {
                eprintln!("error: {}", graft_stage::error_line(&e));
                std::process::ExitCode::FAILURE
            }
            Err(panic) => {
                eprintln!("error: finetune worker: {panic}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    graft_stage::main::<graft_finetune::Finetune>(graft_finetune::ABOUT)
}
