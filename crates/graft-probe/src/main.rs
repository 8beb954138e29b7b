//! `graft-probe`: the gradient-rank probe stage binary. See the `graft_probe` crate.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_probe::Probe>(graft_probe::ABOUT)
}
