//! With the `tch` feature, writes the LibTorch directory that torch-sys linked against
//! into the binary's rpath, so the binary starts without `LD_LIBRARY_PATH`.
//! torch-sys finds that directory (from `LIBTORCH`, or `LIBTORCH_USE_PYTORCH` and the
//! Python on `PATH`) and passes it on as `DEP_TCH_LIBTORCH_LIB` to the crates that depend
//! on it directly, as this one does with the feature on.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{dir}");
    }
}
