//! For tests only: what a test needs from outside the workspace, and what happens when it is
//! not there.
//!
//! Some checks compare graft with something external: the ViT with timm, the tables with
//! pyarrow and pandas (both from the project's `.venv`), the report with Chromium. A test
//! that cannot run its check has not passed, so [`require`] fails the test when the external
//! part is missing. A developer without it can opt out by name with
//! `GRAFT_ALLOW_MISSING=venv,chromium` (or `all`); `.ci/run` never sets it. Each check
//! appends `ran <check>` or `skipped <check> (...)` to the file named by
//! `GRAFT_EXTERNAL_LOG` (the Makefile sets it), whose summary `make test` prints, since
//! cargo hides what passing tests print.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What a check needs: the name a developer gives in `GRAFT_ALLOW_MISSING`, and how to
/// get it.
#[derive(Debug, Clone, Copy)]
pub struct Need {
    pub name: &'static str,
    pub how: &'static str,
}

/// The project's virtual environment (PyTorch, timm, pyarrow, pandas).
pub const VENV: Need = Need {
    name: "venv",
    how: "`make venv` creates .venv with PyTorch, timm, pyarrow and pandas",
};

/// A Chromium binary for rendering the report.
pub const CHROMIUM: Need = Need {
    name: "chromium",
    how: "`apt-get install chromium`, or set GRAFT_CHROMIUM to a Chromium binary",
};

/// The environment variable naming the needs a developer allows to be missing.
pub const ALLOW_VAR: &str = "GRAFT_ALLOW_MISSING";
/// The environment variable naming the file each check appends its line to.
pub const LOG_VAR: &str = "GRAFT_EXTERNAL_LOG";

/// Whether `allow` (the value of [`ALLOW_VAR`]) lets `need` be missing.
pub fn allowed(allow: &str, need: &str) -> bool {
    allow
        .split(',')
        .map(str::trim)
        .any(|a| a == need || a == "all")
}

/// The external part `found` for `check` (a test's name), or, when it is missing: a panic
/// naming what is missing and how to get it, unless [`ALLOW_VAR`] lists `need`, in which
/// case the skip is printed and logged and the test returns early on `None`. A present
/// part is returned with a [`Running`] the test ends with [`Running::passed`].
pub fn require<T>(check: &str, need: Need, found: Option<T>) -> Option<(T, Running)> {
    require_with(
        &std::env::var(ALLOW_VAR).unwrap_or_default(),
        check,
        need,
        found,
    )
}

/// [`require`] with the opt-outs given rather than read from the environment.
fn require_with<T>(allow: &str, check: &str, need: Need, found: Option<T>) -> Option<(T, Running)> {
    if let Some(found) = found {
        return Some((
            found,
            Running {
                check: check.to_owned(),
            },
        ));
    }
    if !allowed(allow, need.name) {
        panic!(
            "{check}: {} is missing ({}); to skip this check knowingly, set {ALLOW_VAR}={}",
            need.name, need.how, need.name
        );
    }
    let line = format!(
        "skipped {check} ({} missing, {ALLOW_VAR}={allow})",
        need.name
    );
    eprintln!("{line}");
    log(&line);
    None
}

/// A check whose external part was there; [`Running::passed`] records that it ran.
#[must_use = "call passed() when the check has passed"]
pub struct Running {
    check: String,
}

impl Running {
    pub fn passed(self) {
        log(&format!("ran {}", self.check));
    }
}

fn log(line: &str) {
    let Some(path) = std::env::var_os(LOG_VAR).filter(|p| !p.is_empty()) else {
        return;
    };
    let path = PathBuf::from(path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{LOG_VAR}={}: {e}", path.display()));
    // One write per line: appends from parallel tests and processes do not interleave.
    file.write_all(format!("{line}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{LOG_VAR}={}: {e}", path.display()));
}

/// The workspace root (this crate lives in `crates/graft-external`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The project's `.venv` Python, when it is there.
pub fn venv_python() -> Option<PathBuf> {
    let py = workspace_root().join(".venv/bin/python");
    py.exists().then_some(py)
}

/// Chromium: `GRAFT_CHROMIUM` when set, else `chromium` or `chromium-browser` on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(c) = std::env::var_os("GRAFT_CHROMIUM").filter(|c| !c.is_empty()) {
        return Some(PathBuf::from(c));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|b| dir.join(b)))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opt_outs_are_by_name_or_all() {
        assert!(allowed("venv,chromium", "chromium"));
        assert!(allowed(" venv , chromium ", "venv"));
        assert!(allowed("all", "venv"));
        assert!(!allowed("", "venv"));
        assert!(!allowed("chromium", "venv"));
        assert!(!allowed("venvs", "venv"));
    }

    /// A present part comes back as it was (the check is not logged: it ran nothing).
    #[test]
    fn a_present_part_is_handed_back() {
        let (v, _running) = require_with("", "present", VENV, Some(7)).unwrap();
        assert_eq!(v, 7);
    }

    /// The default: no opt-out, so a missing part fails the test that needs it; an opt-out
    /// for other names does not change that.
    #[test]
    fn a_missing_part_fails_without_its_opt_out() {
        let need = Need {
            name: "nothing-here",
            how: "it never is",
        };
        for allow in ["", "venv,chromium"] {
            let e = std::panic::catch_unwind(|| require_with::<()>(allow, "a check", need, None))
                .err()
                .expect("a missing part must fail");
            let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(
                msg.contains("a check: nothing-here is missing (it never is)")
                    && msg.contains("GRAFT_ALLOW_MISSING=nothing-here"),
                "{msg}"
            );
        }
    }
}
