//! `graft-propose`: the placement proposal stage binary. See the `graft_propose` crate.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_propose::Propose>(
        "Propose adapter placements from a probe artifact with the registered heuristics",
    )
}
