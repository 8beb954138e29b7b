//! `graft-prep`: the dataset-prep stage binary. See the `graft_prep` crate for what it does.

use std::process::ExitCode;

use clap::Parser;
use graft_prep::Prep;
use graft_stage::StageArgs;

/// Prepare a data set (DTD, an image folder or a procedural task) as Parquet tables in the store.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    stage: StageArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    let outcome = graft_stage::execute::<Prep>(&cli.stage)?;
    graft_stage::print_outcome(&outcome, cli.stage.json);
    Ok(())
}
