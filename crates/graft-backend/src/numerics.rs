//! One instruction level for LibTorch's CPU kernels, whatever the machine (issue 27).
//!
//! LibTorch picks its CPU kernels by the machine it runs on: ATen's own kernels use AVX-512
//! where the CPU has it and AVX2 otherwise (`ATEN_CPU_CAPABILITY`), and MKL's matrix
//! products and oneDNN have dispatchers of their own. Kernels of another vector width sum in
//! another order, so without a pin one key gives other bytes on another machine: the CI
//! pipeline's pretrain gave one artifact with LibTorch's own choice on an AVX-512 machine and
//! another with `ATEN_CPU_CAPABILITY=avx2`, what it picks by itself on most laptops and many
//! cluster nodes.
//!
//! [`pin_cpu_kernels`] runs first in every tensor stage binary (pretrain, probe, fine-tune
//! and its workers). Unless the environment sets them, it sets
//!
//! | variable | value | read by |
//! |---|---|---|
//! | `ATEN_CPU_CAPABILITY` | `avx2` | ATen's CPU kernel dispatch |
//! | `MKL_CBWR` | `AVX2,STRICT` | MKL's conditional numerical reproducibility: its AVX2 code path, and in strict mode results that do not depend on the thread count |
//! | `ONEDNN_MAX_CPU_ISA` | `AVX2` | oneDNN's dispatch |
//!
//! and executes the binary again with them, so they are in place before LibTorch or MKL
//! reads any of them (some read theirs when the library loads). AVX2 with FMA is what every
//! x86-64 machine graft supports has. A value the user sets wins, and
//! `GRAFT_CPU_KERNELS=native` leaves all three to the libraries (faster on AVX-512 machines;
//! results then depend on the machine). A run computing in bf16 on the CPU lifts graft's
//! pin ([`native_for_bf16`]: AVX2 has no bf16 arithmetic) unless the user set
//! `GRAFT_CPU_KERNELS=avx2` by name. [`record`] says what was in effect; the tensor
//! stages put it in their manifests, which are not part of an artifact's id.
//!
//! Covered: x86-64 CPUs with the tch backend. Not covered: other architectures (no pin is
//! set), GPU kernels (their own world: a `cuda` run has its own key), and the flex backend,
//! whose matrix products (the `gemm` crate) and element-wise kernels pick their instruction
//! set from the CPU by themselves with no switch to pin them.

use std::collections::BTreeMap;

/// The variables [`pin_cpu_kernels`] sets, and their values.
pub const PINS: [(&str, &str); 3] = [
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("MKL_CBWR", "AVX2,STRICT"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
];

/// The user's switch: `avx2` (the default) pins, `native` leaves the libraries' choice.
pub const MODE_VAR: &str = "GRAFT_CPU_KERNELS";

/// Set by [`pin_cpu_kernels`] before it executes the binary again: the variables it set
/// (comma-separated), so that [`record`] can tell them from the user's and the second
/// process does not execute itself once more.
pub const PINNED_VAR: &str = "GRAFT_CPU_KERNELS_PINNED";

/// What `GRAFT_CPU_KERNELS` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pin the kernels to AVX2 ([`PINS`]), the default.
    Avx2,
    /// Leave the libraries' own choice.
    Native,
}

/// An unknown `GRAFT_CPU_KERNELS` value.
#[derive(Debug, thiserror::Error)]
#[error(
    "{MODE_VAR}={value:?}: expected avx2 (the default: reproducible on every x86-64 machine) or native (the machine's own kernels)"
)]
pub struct BadMode {
    pub value: String,
}

/// `GRAFT_CPU_KERNELS` read from a value (unset or empty is [`Mode::Avx2`]).
pub fn parse_mode(value: Option<&str>) -> Result<Mode, BadMode> {
    match value.map(str::trim).unwrap_or("") {
        "" | "avx2" => Ok(Mode::Avx2),
        "native" => Ok(Mode::Native),
        other => Err(BadMode {
            value: other.to_owned(),
        }),
    }
}

/// The variables to set for `mode`: the [`PINS`] that `is_set` (the environment) does not
/// already set; none for [`Mode::Native`].
pub fn pins_to_set(mode: Mode, is_set: impl Fn(&str) -> bool) -> Vec<(&'static str, &'static str)> {
    match mode {
        Mode::Native => Vec::new(),
        Mode::Avx2 => PINS.iter().copied().filter(|(k, _)| !is_set(k)).collect(),
    }
}

/// Pins LibTorch's CPU kernels to AVX2 (see the module comment): call it first in `main`,
/// before anything touches a tensor. In a tch build on x86-64 where the environment does not
/// set all of [`PINS`] and `GRAFT_CPU_KERNELS` is not `native`, it executes the binary again
/// with them set and does not return; if that fails it warns and returns, and the run uses
/// the machine's kernels (its manifest says so). Elsewhere it only checks the switch.
pub fn pin_cpu_kernels() -> Result<(), BadMode> {
    let mode = parse_mode(std::env::var(MODE_VAR).ok().as_deref())?;
    if cfg!(all(feature = "tch", target_arch = "x86_64", unix))
        && std::env::var_os(PINNED_VAR).is_none()
    {
        let set = pins_to_set(mode, |k| std::env::var_os(k).is_some());
        if !set.is_empty() {
            reexec_with(&set);
        }
    }
    Ok(())
}

#[cfg(unix)]
fn reexec_with(set: &[(&str, &str)]) {
    let names: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
    exec_again("pin", |c| {
        c.envs(set.iter().copied()).env(PINNED_VAR, names.join(","));
    });
}

#[cfg(not(unix))]
fn reexec_with(_set: &[(&str, &str)]) {}

/// Marks a process whose kernels graft left to the machine for a bf16 run
/// ([`native_for_bf16`]); [`record`] says so.
pub const BF16_VAR: &str = "GRAFT_CPU_KERNELS_BF16";

/// What a bf16 run on the CPU does with graft's pin: lifts it. AVX2 has no bf16 arithmetic,
/// so under the pin LibTorch's bf16 matrix products leave oneDNN's AVX-512 BF16 kernels for
/// a generic path, slower than f32; and bf16 promises no bit-identity across machines
/// anyway (its roundings differ with the kernel). Call it once the run is known to have
/// work, before anything touches a tensor: when graft pinned this process
/// ([`PINNED_VAR`]) and `GRAFT_CPU_KERNELS` is not set to `avx2` by the user, it executes
/// the binary again without graft's pins and with `GRAFT_CPU_KERNELS=native` (its workers
/// inherit both) and does not return. Pins the user set stay, and so does everything when
/// the user asked for `avx2` by name: the user's choice wins over the precision's.
pub fn native_for_bf16() {
    if !cfg!(all(feature = "tch", target_arch = "x86_64", unix)) {
        return;
    }
    let Ok(pinned) = std::env::var(PINNED_VAR) else {
        return;
    };
    if std::env::var(MODE_VAR).is_ok_and(|m| m.trim() == "avx2") {
        return;
    }
    let names: Vec<String> = pinned
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    #[cfg(unix)]
    exec_again("take the machine's own CPU kernels for bf16", |c| {
        for name in &names {
            c.env_remove(name);
        }
        c.env_remove(PINNED_VAR)
            .env(MODE_VAR, "native")
            .env(BF16_VAR, "1");
    });
}

/// Executes this binary again with its arguments and the environment `configure` sets;
/// returns (with a warning naming `why`) only when that fails.
#[cfg(unix)]
fn exec_again(why: &str, configure: impl FnOnce(&mut std::process::Command)) {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!(
                "warning: cannot find this binary to {why} ({e}): computing with the kernels in effect"
            );
            return;
        }
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let mut command = std::process::Command::new(&exe);
    command.arg0(arg0).args(args);
    configure(&mut command);
    let error = command.exec();
    eprintln!(
        "warning: cannot execute {} again to {why} ({error}): computing with the kernels in effect",
        exe.display()
    );
}

/// The CPU kernel settings this process computes with, for a manifest: the backend, the
/// switch, and each of [`PINS`] with its value and who set it (`graft`, `environment`, or
/// `unset`: the library's own choice), e.g. `"ATEN_CPU_CAPABILITY": "avx2 (graft)"`.
pub fn record() -> BTreeMap<String, String> {
    let pinned = std::env::var(PINNED_VAR).unwrap_or_default();
    let by_graft: Vec<&str> = pinned.split(',').filter(|s| !s.is_empty()).collect();
    let mut out = BTreeMap::new();
    out.insert("backend".to_owned(), crate::backend_name().to_owned());
    let mode = match (std::env::var(MODE_VAR), std::env::var_os(BF16_VAR)) {
        (Ok(m), Some(_)) => format!("{m} (graft, for bf16)"),
        (Ok(m), None) => m,
        (Err(_), _) => "avx2 (default)".to_owned(),
    };
    out.insert(MODE_VAR.to_owned(), mode);
    for (name, _) in PINS {
        let value = match std::env::var(name) {
            Ok(v) if by_graft.contains(&name) => format!("{v} (graft)"),
            Ok(v) => format!("{v} (environment)"),
            Err(_) => "unset".to_owned(),
        };
        out.insert(name.to_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switch_reads_avx2_by_default_and_refuses_what_it_does_not_know() {
        assert_eq!(parse_mode(None).unwrap(), Mode::Avx2);
        assert_eq!(parse_mode(Some("")).unwrap(), Mode::Avx2);
        assert_eq!(parse_mode(Some("avx2")).unwrap(), Mode::Avx2);
        assert_eq!(parse_mode(Some(" native ")).unwrap(), Mode::Native);
        let e = parse_mode(Some("avx512")).unwrap_err().to_string();
        assert!(
            e.contains("GRAFT_CPU_KERNELS=\"avx512\"") && e.contains("native"),
            "{e}"
        );
    }

    #[test]
    fn the_users_values_win_and_native_sets_nothing() {
        let all = pins_to_set(Mode::Avx2, |_| false);
        assert_eq!(all, PINS.to_vec());
        let some = pins_to_set(Mode::Avx2, |k| k == "MKL_CBWR");
        assert_eq!(
            some,
            [
                ("ATEN_CPU_CAPABILITY", "avx2"),
                ("ONEDNN_MAX_CPU_ISA", "AVX2")
            ]
        );
        assert!(pins_to_set(Mode::Avx2, |_| true).is_empty());
        assert!(pins_to_set(Mode::Native, |_| false).is_empty());
    }
}
