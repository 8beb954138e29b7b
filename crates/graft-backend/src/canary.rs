//! Numeric canaries: a stage version that cannot be forgotten (issue 27 item 3).
//!
//! A stage that computes with tensors promises that its version changes whenever its output
//! for the same inputs does. Each such stage (pretrain, probe, its linear-probe head, a
//! fine-tune run) has a test that runs a tiny fixed computation (a few steps on generated
//! data) and records the blake3 of its output, with the stage version, in a golden file
//! (`golden/canary.txt` of the stage's crate):
//!
//! ```text
//! stage pretrain
//! version 6
//! flex-avx512-l1d32K-l2-1024K 4f0e...
//! tch-avx2-AuthenticAMD 91ab...
//! ```
//!
//! [`check`] compares a new output with it. One line per backend and CPU level
//! ([`level`]): the flex backend's kernels pick their instruction set by themselves, and
//! LibTorch's are pinned ([`crate::numerics`]), so one machine cannot record every line. A
//! level without a line is recorded when the test first runs there; an output that differs
//! from its line fails, with a message naming the version to bump, unless the version was
//! bumped and `GRAFT_BLESS=1` is set, which records the new version with this line only.
//! [`in_stage_environment`] runs a canary in a process set up as a stage binary's (kernels
//! pinned, one thread), since a test process is not.

use std::collections::BTreeMap;
use std::path::Path;

use crate::numerics::{MODE_VAR, Mode, PINNED_VAR, PINS, pins_to_set};

/// Set in the process [`in_stage_environment`] starts, which runs the canary itself.
pub const CHILD_VAR: &str = "GRAFT_CANARY_CHILD";

/// The backend and CPU level that decide this process's numbers. For tch,
/// `ATEN_CPU_CAPABILITY` (`native-avx512` when it is unset) and the CPU's vendor
/// (`tch-avx2-AuthenticAMD`): MKL documents its reproducible mode for Intel CPUs, and
/// whether its AVX2 branch gives another vendor's CPU the same bytes is not measured. For
/// flex, the widest of `avx512`, `avx2` (with FMA) or `baseline` the CPU has, with its L1
/// data and L2 cache sizes (`flex-avx512-l1d48K-l2-2048K`): flex's matrix products (the
/// `gemm` crate) size their blocks by the caches, and the block sizes set the order of a
/// product's sums.
pub fn level() -> String {
    let native = native_level();
    match crate::backend_name() {
        "tch" => match std::env::var("ATEN_CPU_CAPABILITY") {
            Ok(v) if !v.is_empty() => format!("tch-{v}-{}", vendor()),
            _ => format!("tch-native-{native}-{}", vendor()),
        },
        other => format!("{other}-{native}{}", cache_sizes()),
    }
}

/// The CPU's vendor as Linux reports it (`GenuineIntel`, `AuthenticAMD`), else `unknown`.
fn vendor() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("vendor_id"))
                .and_then(|rest| rest.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `-l1d<size>-l2-<size>` as Linux reports CPU 0's caches; empty where it does not.
fn cache_sizes() -> String {
    let mut out = String::new();
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    for index in 0..8 {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(format!("index{index}")).join(f))
                .map(|s| s.trim().to_owned())
                .ok()
        };
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
        else {
            continue;
        };
        match (level.as_str(), kind.as_str()) {
            ("1", "Data") => out.push_str(&format!("-l1d{size}")),
            ("2", _) => out.push_str(&format!("-l2-{size}")),
            _ => {}
        }
    }
    out
}

fn native_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2";
        }
        "baseline"
    }
    #[cfg(not(target_arch = "x86_64"))]
    std::env::consts::ARCH
}

/// For the test `test` (its full name, `tests::pretrain_canary`): in the test process, runs
/// that one test again in a child process set up as a stage binary (LibTorch's kernels
/// pinned as [`crate::numerics::pin_cpu_kernels`] pins them, one intra-op thread for
/// LibTorch and for flex's rayon pool), passes its output on, and returns `false`: the
/// caller returns. In the child it returns `true`: the caller computes its canary. Panics
/// when the child fails.
pub fn in_stage_environment(test: &str) -> bool {
    if std::env::var_os(CHILD_VAR).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = std::process::Command::new(&exe);
    for (k, _) in PINS {
        cmd.env_remove(k);
    }
    let pins = pins_to_set(Mode::Avx2, |_| false);
    let names: Vec<&str> = pins.iter().map(|(k, _)| *k).collect();
    let out = cmd
        .env_remove(MODE_VAR)
        .envs(pins.iter().copied())
        .env(PINNED_VAR, names.join(","))
        .env("OMP_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .env(CHILD_VAR, "1")
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .output()
        .expect("run the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    print!("{stdout}");
    eprint!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in a process set up as a stage binary ({}); its output is above",
        out.status
    );
    false
}

/// A canary file: the stage, its version when the lines were recorded, a line per level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    pub stage: String,
    pub version: u32,
    pub outputs: BTreeMap<String, String>,
}

impl Canary {
    /// Parses the text format of the module comment; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Canary> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let stage = lines.next()?.strip_prefix("stage ")?.trim().to_owned();
        let version = lines
            .next()?
            .strip_prefix("version ")?
            .trim()
            .parse()
            .ok()?;
        let mut outputs = BTreeMap::new();
        for line in lines {
            let (level, hash) = line.split_once(' ')?;
            outputs.insert(level.to_owned(), hash.trim().to_owned());
        }
        Some(Canary {
            stage,
            version,
            outputs,
        })
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "# The blake3 of a tiny fixed computation's output, per backend and CPU level: see\n\
             # graft_backend::canary. Re-recorded (GRAFT_BLESS=1) only with a version bump.\n\
             stage {}\nversion {}\n",
            self.stage, self.version
        );
        for (level, hash) in &self.outputs {
            s.push_str(&format!("{level} {hash}\n"));
        }
        s
    }
}

/// What [`decide`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The line for this level holds this output.
    Same,
    /// Write this file: a level seen for the first time, or a bumped version blessed.
    Record(Canary),
    /// The test fails with this message.
    Fail(String),
}

/// Compares `output` of stage `stage` at `version` on `level` with `recorded` (the file,
/// if there is one); `bless` is `GRAFT_BLESS=1`. `what` names the constant to bump.
pub fn decide(
    recorded: Option<&Canary>,
    stage: &str,
    version: u32,
    level: &str,
    output: &str,
    bless: bool,
    what: &str,
) -> Verdict {
    let fresh = || Canary {
        stage: stage.to_owned(),
        version,
        outputs: [(level.to_owned(), output.to_owned())].into(),
    };
    let Some(old) = recorded else {
        return Verdict::Record(fresh());
    };
    if old.version != version {
        return if bless {
            Verdict::Record(fresh())
        } else {
            Verdict::Fail(format!(
                "{stage}: the canary was recorded at version {} and {what} is now {version}: \
                 re-record it with GRAFT_BLESS=1 (on flex and on tch: `make test`)",
                old.version
            ))
        };
    }
    match old.outputs.get(level) {
        Some(h) if h == output => Verdict::Same,
        Some(h) => Verdict::Fail(format!(
            "{stage}: the canary's output on {level} changed ({} -> {}) but {what} is still \
             {version}: this code computes other numbers than the artifacts stored under \
             version {version}; bump {what} to {}, then re-record with GRAFT_BLESS=1",
            short(h),
            short(output),
            version + 1
        )),
        None => {
            let mut new = old.clone();
            new.outputs.insert(level.to_owned(), output.to_owned());
            Verdict::Record(new)
        }
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// [`decide`] against the file at `path`: writes it when the verdict is to record, and
/// returns the failure message otherwise.
pub fn check(
    path: &Path,
    stage: &str,
    version: u32,
    output: &str,
    what: &str,
) -> Result<(), String> {
    let level = level();
    let recorded = match std::fs::read_to_string(path) {
        Ok(text) => Some(Canary::parse(&text).ok_or_else(|| {
            format!(
                "{}: not a canary file (see graft_backend::canary)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let bless = std::env::var("GRAFT_BLESS").is_ok_and(|v| v == "1");
    match decide(
        recorded.as_ref(),
        stage,
        version,
        &level,
        output,
        bless,
        what,
    ) {
        Verdict::Same => {
            println!(
                "{stage} canary on {level}: {} (version {version})",
                short(output)
            );
            Ok(())
        }
        Verdict::Record(canary) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::write(path, canary.text()).map_err(|e| format!("{}: {e}", path.display()))?;
            println!(
                "{stage} canary on {level}: recorded {} (version {version}) in {}",
                short(output),
                path.display()
            );
            Ok(())
        }
        Verdict::Fail(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(version: u32, lines: &[(&str, &str)]) -> Canary {
        Canary {
            stage: "pretrain".into(),
            version,
            outputs: lines
                .iter()
                .map(|(l, h)| (l.to_string(), h.to_string()))
                .collect(),
        }
    }

    #[test]
    fn the_file_round_trips() {
        let c = canary(6, &[("flex-avx512", "ab12"), ("tch-avx2", "cd34")]);
        assert_eq!(Canary::parse(&c.text()), Some(c));
        assert_eq!(Canary::parse("stage x\nversion seven\n"), None);
    }

    #[test]
    fn an_unbumped_change_fails_and_names_the_version_to_bump() {
        let old = canary(6, &[("tch-avx2", "aaaa")]);
        let d = |out: &str, version: u32, bless: bool| {
            decide(
                Some(&old),
                "pretrain",
                version,
                "tch-avx2",
                out,
                bless,
                "Pretrain::VERSION",
            )
        };
        assert_eq!(d("aaaa", 6, false), Verdict::Same);
        for bless in [false, true] {
            let Verdict::Fail(m) = d("bbbb", 6, bless) else {
                panic!("an unbumped change passed (bless {bless})")
            };
            assert!(m.contains("bump Pretrain::VERSION to 7"), "{m}");
        }
        let Verdict::Fail(m) = d("bbbb", 7, false) else {
            panic!()
        };
        assert!(m.contains("GRAFT_BLESS=1"), "{m}");
        assert_eq!(
            d("bbbb", 7, true),
            Verdict::Record(canary(7, &[("tch-avx2", "bbbb")]))
        );
    }

    #[test]
    fn a_new_level_is_recorded_beside_the_others() {
        let old = canary(6, &[("tch-avx2", "aaaa")]);
        let v = decide(Some(&old), "pretrain", 6, "flex-avx2", "cccc", false, "V");
        assert_eq!(
            v,
            Verdict::Record(canary(6, &[("tch-avx2", "aaaa"), ("flex-avx2", "cccc")]))
        );
        assert_eq!(
            decide(None, "pretrain", 6, "flex-avx2", "cccc", false, "V"),
            Verdict::Record(canary(6, &[("flex-avx2", "cccc")]))
        );
    }
}
