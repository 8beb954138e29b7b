//! The one integration test binary: drives the built stage binaries and the runner
//! through real stores in temporary directories. `make test` builds the binaries first.

mod common;
mod dtd;
mod executors;
mod finetune;
mod pipeline;
mod store;
