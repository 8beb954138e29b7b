//! `graft-probe`: the gradient-rank probe stage binary. See the `graft_probe` crate.

fn main() -> std::process::ExitCode {
    // Before anything touches a tensor: LibTorch's CPU kernels at one instruction level.
    if let Err(e) = graft_backend::numerics::pin_cpu_kernels() {
        eprintln!("error: {e}");
        return std::process::ExitCode::FAILURE;
    }
    graft_stage::main::<graft_probe::Probe>(graft_probe::ABOUT)
}
