//! `graft-pretrain`: the pretrain stage binary. See the `graft_pretrain` crate.

use std::process::ExitCode;

use clap::Parser;
use graft_pretrain::Pretrain;
use graft_stage::StageArgs;

/// Pretrain a small ViT preset from scratch on a dataset artifact.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    stage: StageArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match graft_stage::execute::<Pretrain>(&cli.stage) {
        Ok(outcome) => {
            graft_stage::print_outcome(&outcome, cli.stage.json);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {:#}", anyhow::Error::from(e));
            ExitCode::FAILURE
        }
    }
}
