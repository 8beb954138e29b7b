//! The one integration test binary: drives the built stage binaries and the runner
//! through real stores in temporary directories. `make test` builds the binaries first.

mod bad_input;
mod bands;
mod bench_scripts;
mod command;
mod common;
mod dtd;
mod executors;
mod faults;
mod finetune;
mod front;
mod gc;
mod heuristic_curve;
mod invariants;
mod pipeline;
mod progress;
mod replicates;
mod store;
mod vtab;
