//! `graft-pretrain`: the pretrain stage binary. See the `graft_pretrain` crate.

fn main() -> std::process::ExitCode {
    // Before anything touches a tensor: LibTorch's CPU kernels at one instruction level.
    if let Err(e) = graft_backend::numerics::pin_cpu_kernels() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    graft_stage::main::<graft_pretrain::Pretrain>(graft_pretrain::ABOUT)
}
