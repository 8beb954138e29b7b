//! `graft-prep`: the dataset-prep stage binary. See the `graft_prep` crate for what it does.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_prep::Prep>(
        "Prepare a data set (DTD, an image folder or a procedural task) as Parquet tables in the store",
    )
}
