//! `graft-bands`: checks a pipeline's last results in a store against a bands file
//! (`pipelines/bands/ci.toml`); one line per band, exit status 1 when any band is crossed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use graft_report::bands::{Bands, check, load};
use graft_store::Store;

/// Check a pipeline's results against regression bands.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The artifact store the pipeline ran on.
    #[arg(long, env = "GRAFT_STORE", default_value = "artifacts")]
    store: PathBuf,
    /// The bands file (`pipelines/bands/ci.toml`).
    bands: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match graft_stage::catch_panic(|| run(&cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {}", graft_stage::error_line(e.as_ref()));
            ExitCode::from(2)
        }
        Err(panic) => {
            eprintln!("error: graft-bands: {panic}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let bands = Bands::read(&cli.bands)?;
    let store = Store::open(&cli.store)?;
    let task = load(&store, &bands)?;
    let outcomes = check(&bands, &task);
    for o in &outcomes {
        println!("{o}");
    }
    let crossed = outcomes.iter().filter(|o| !o.held).count();
    if crossed == 0 {
        println!(
            "bands: all {} held ({}, pipeline {})",
            outcomes.len(),
            cli.bands.display(),
            bands.pipeline
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "bands: {crossed} of {} crossed ({}, pipeline {})",
            outcomes.len(),
            cli.bands.display(),
            bands.pipeline
        );
        Ok(ExitCode::FAILURE)
    }
}
