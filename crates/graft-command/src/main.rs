//! `graft-command`: the command stage binary. See the `graft_command` crate.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_command::CommandStage>(
        "Run an external program as a cached stage; publish its outputs only when they meet their contracts",
    )
}
