//! `graft-pretrain`: the pretrain stage binary. See the `graft_pretrain` crate.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_pretrain::Pretrain>(graft_pretrain::ABOUT)
}
