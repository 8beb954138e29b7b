//! `graft-report`: the report stage binary. See the `graft_report` crate.

fn main() -> std::process::ExitCode {
    graft_stage::main::<graft_report::Report>(
        "Write the HTML report, Markdown summary and CSV tables of probe and fine-tune artifacts",
    )
}
