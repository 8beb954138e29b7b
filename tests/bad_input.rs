//! The bad-input catalogue: every way a user can give graft something wrong that we know of,
//! through the runner (pipeline files, `-S`, `--force`) and through the stage binaries run
//! by hand. Each case must exit non-zero with one `error:` line that names the field or file,
//! repeats nothing, shows no panic, and leaves the store exactly as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// One bad input: the binary, its arguments after `--store S`, and what its error must say.
struct Case {
    name: &'static str,
    bin: &'static str,
    args: Vec<String>,
    expect: Vec<String>,
}

/// What every case's store holds: one procedural prep artifact (pipeline `base`).
const BASE: &str = r#"
[stages.prep]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 16, seed = 1, train = 24, val = 12, test = 12 }
"#;

/// A pipeline file `<name>.toml` in `dir`: the base prep stage, then `extra`.
fn pipeline_file(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("{BASE}\n{extra}")).unwrap();
    path
}

/// A pipeline file holding exactly `text`.
fn raw_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `cmd`, killing it after `limit`: a case that hangs fails instead of hanging the suite.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still running after {limit:?}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `a: b: b` says `b` twice: the wording bug of errors that print their source themselves.
fn repeated_part(line: &str) -> Option<&str> {
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    parts
        .windows(2)
        .find(|w| w[0] == w[1] && !w[0].is_empty())
        .map(|w| w[0])
}

#[test]
fn repeated_parts_are_found() {
    assert_eq!(
        repeated_part("error: x.toml: No such file (os error 2): No such file (os error 2)"),
        Some("No such file (os error 2)")
    );
    assert_eq!(
        repeated_part("error: x.toml: No such file (os error 2)"),
        None
    );
}

fn runner_file(name: &'static str, file: PathBuf, expect: &[&str]) -> Case {
    Case {
        name,
        bin: "graft",
        args: vec!["run".into(), file.display().to_string()],
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

fn stage(name: &'static str, bin: &'static str, args: &[&str], expect: &[&str]) -> Case {
    Case {
        name,
        bin,
        args: args.iter().map(|s| s.to_string()).collect(),
        expect: expect.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn bad_inputs_are_named_errors_that_leave_the_store_unchanged() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let base = pipeline_file(dir.path(), "base", "");
    ok(graft(&store).args(["run", base.to_str().unwrap()]));
    let dataset = slot_artifact(&store, "base/prep");
    let absent = "0".repeat(64);
    let d = dir.path();
    let b = base.to_str().unwrap();

    let stage_after_prep = |name: &str, kind: &str, params: &str| {
        let inputs = match kind {
            "pretrain" => r#"{ dataset = "prep" }"#,
            "probe" | "finetune" => r#"{ dataset = "prep", base = "prep" }"#,
            _ => "{}",
        };
        format!("[stages.{name}]\nkind = \"{kind}\"\ninputs = {inputs}\nparams = {params}\n")
    };
    let pretrain = |p: &str| stage_after_prep("pretrain", "pretrain", p);
    let probe = |p: &str| stage_after_prep("probe", "probe", p);
    let finetune = |p: &str| stage_after_prep("finetune", "finetune", p);
    let propose = |p: &str| {
        format!(
            "[stages.fake-probe]\nkind = \"prep\"\nparams = {{ source = \"procedural\" }}\n\
             [stages.propose]\nkind = \"propose\"\ninputs = {{ probe = \"fake-probe\" }}\nparams = {p}\n"
        )
    };

    let cases = vec![
        // The pipeline file itself.
        runner_file(
            "toml syntax",
            raw_file(d, "syntax", "[stages.a\nkind = 'prep'\n"),
            &["syntax.toml"],
        ),
        runner_file(
            "unknown top-level key",
            raw_file(
                d,
                "top",
                "descripton = \"x\"\n[stages.a]\nkind = \"prep\"\n",
            ),
            &["top.toml", "descripton"],
        ),
        runner_file(
            "description of the wrong type",
            raw_file(d, "desc", "description = 3\n[stages.a]\nkind = \"prep\"\n"),
            &["desc.toml", "description"],
        ),
        runner_file(
            "unknown stage kind",
            raw_file(d, "kind", "[stages.a]\nkind = \"prepp\"\n"),
            &["kind.toml", "stages.a.kind", "prepp"],
        ),
        runner_file(
            "unknown key in a stage",
            raw_file(d, "parms", "[stages.a]\nkind = \"prep\"\nparms = {}\n"),
            &["parms.toml", "stages.a", "parms"],
        ),
        runner_file(
            "params not a table",
            raw_file(d, "params3", "[stages.a]\nkind = \"prep\"\nparams = 3\n"),
            &["params3.toml", "stages.a"],
        ),
        runner_file(
            "input from a stage that is not there",
            pipeline_file(
                d,
                "nowhere",
                "[stages.b]\nkind = \"pretrain\"\ninputs = { dataset = \"nowhere\" }\n",
            ),
            &["nowhere.toml", "stages.b.inputs.dataset", "nowhere"],
        ),
        runner_file(
            "inputs in a cycle",
            raw_file(
                d,
                "cycle",
                "[stages.a]\nkind = \"prep\"\ninputs = { x = \"b\" }\n[stages.b]\nkind = \"prep\"\ninputs = { x = \"a\" }\n",
            ),
            &["cycle.toml", "cycle", "a, b"],
        ),
        // Stage parameters, found by the stages' --check before anything runs.
        runner_file(
            "prep: a string where a number goes",
            raw_file(
                d,
                "size-type",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"procedural\", image_size = \"big\" }\n",
            ),
            &[
                "size-type.toml",
                "stages.prep.params.image_size: invalid type: string \"big\", expected u32",
            ],
        ),
        runner_file(
            "prep: unknown parameter",
            raw_file(
                d,
                "imag",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"procedural\", imag_size = 16 }\n",
            ),
            &["imag.toml", "stages.prep.params", "imag_size"],
        ),
        runner_file(
            "prep: image size 0",
            raw_file(
                d,
                "size0",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"procedural\", image_size = 0 }\n",
            ),
            &["size0.toml", "stages.prep.params", "image_size"],
        ),
        runner_file(
            "prep: unknown source",
            raw_file(
                d,
                "source",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"nonsense\" }\n",
            ),
            &["source.toml", "stages.prep.params.source", "nonsense"],
        ),
        runner_file(
            "prep: negative seed",
            raw_file(
                d,
                "seed",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"procedural\", seed = -1 }\n",
            ),
            &["seed.toml", "stages.prep.params.seed", "-1"],
        ),
        runner_file(
            "prep: mean of two channels",
            raw_file(
                d,
                "mean",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"procedural\", mean = [0.5, 0.5] }\n",
            ),
            &["mean.toml", "stages.prep.params.mean"],
        ),
        runner_file(
            "prep: image folder that is not there",
            raw_file(
                d,
                "folder",
                "[stages.prep]\nkind = \"prep\"\nparams = { source = \"image-folder\", path = \"no-such-folder\" }\n",
            ),
            &["folder.toml", "stages.prep.params", "no-such-folder"],
        ),
        runner_file(
            "propose: budgets of strings",
            pipeline_file(d, "budgets", &propose(r#"{ budgets = ["x"] }"#)),
            &[
                "budgets.toml",
                "stages.propose.params.budgets[0]: invalid type: string \"x\"",
            ],
        ),
        runner_file(
            "propose: unknown heuristic",
            pipeline_file(
                d,
                "heuristic",
                &propose(r#"{ heuristics = [{ name = "nosuch" }] }"#),
            ),
            &[
                "heuristic.toml",
                "stages.propose.params",
                "heuristics[0]",
                "nosuch",
            ],
        ),
        runner_file(
            "propose: gamma out of range",
            pipeline_file(
                d,
                "gamma",
                &propose(r#"{ heuristics = [{ name = "gga", gamma = 1.5 }] }"#),
            ),
            &[
                "gamma.toml",
                "stages.propose.params",
                "heuristics[0].gamma = 1.5",
            ],
        ),
        runner_file(
            "propose: single-sweep with the retired stride",
            pipeline_file(
                d,
                "stride",
                &propose(r#"{ heuristics = [{ name = "single-sweep", stride = 6 }] }"#),
            ),
            &[
                "stride.toml",
                "stages.propose.params",
                "heuristics[0].stride is no longer a field of single-sweep",
                "use per_kind",
            ],
        ),
        runner_file(
            "propose: input missing",
            pipeline_file(d, "no-input", "[stages.propose]\nkind = \"propose\"\n"),
            &["no-input.toml", "stages.propose.inputs.probe: missing"],
        ),
        runner_file(
            "propose: input it does not take",
            pipeline_file(
                d,
                "extra-input",
                "[stages.propose]\nkind = \"propose\"\ninputs = { probe = \"prep\", bogus = \"prep\" }\n",
            ),
            &[
                "extra-input.toml",
                "stages.propose.inputs.bogus",
                "not an input",
            ],
        ),
        runner_file(
            "pretrain: unknown preset",
            pipeline_file(d, "preset", &pretrain(r#"{ preset = "vit-huge" }"#)),
            &["preset.toml", "stages.pretrain.params", "vit-huge"],
        ),
        runner_file(
            "pretrain: learning rate 0",
            pipeline_file(d, "lr", &pretrain(r#"{ lr = 0.0 }"#)),
            &["lr.toml", "stages.pretrain.params", "lr = 0"],
        ),
        runner_file(
            "pretrain: min_test_accuracy as a percentage",
            pipeline_file(d, "bar", &pretrain(r#"{ min_test_accuracy = 85 }"#)),
            &[
                "bar.toml",
                "stages.pretrain.params",
                "min_test_accuracy = 85 must be in [0, 1]",
            ],
        ),
        runner_file(
            "pretrain: epochs as a word",
            pipeline_file(d, "epochs", &pretrain(r#"{ epochs = "ten" }"#)),
            &["epochs.toml", "stages.pretrain.params.epochs: invalid type"],
        ),
        runner_file(
            "pretrain: device that is no device",
            pipeline_file(d, "gpu", &pretrain(r#"{ device = "gpu" }"#)),
            &["gpu.toml", "stages.pretrain.params", "device = \"gpu\""],
        ),
        runner_file(
            "pretrain: cuda on this build",
            pipeline_file(d, "cuda-pretrain", &pretrain(r#"{ device = "cuda" }"#)),
            &[
                "cuda-pretrain.toml",
                "stages.pretrain.params",
                "device = \"cuda\"",
                "CUDA",
            ],
        ),
        runner_file(
            "probe: cuda on this build",
            pipeline_file(d, "cuda-probe", &probe(r#"{ device = "cuda" }"#)),
            &[
                "cuda-probe.toml",
                "stages.probe.params",
                "device = \"cuda\"",
                "CUDA",
            ],
        ),
        runner_file(
            "finetune: cuda on this build",
            pipeline_file(
                d,
                "cuda-finetune",
                &finetune(r#"{ device = "cuda", baselines = ["full"] }"#),
            ),
            &[
                "cuda-finetune.toml",
                "stages.finetune.params",
                "device = \"cuda\"",
                "CUDA",
            ],
        ),
        runner_file(
            "finetune: nothing to train",
            pipeline_file(d, "nothing", &finetune("{ baselines = [] }")),
            &["nothing.toml", "stages.finetune.params", "nothing to train"],
        ),
        runner_file(
            "finetune: seeds as a string",
            pipeline_file(
                d,
                "seeds",
                &finetune(r#"{ seeds = "0", baselines = ["full"] }"#),
            ),
            &["seeds.toml", "stages.finetune.params.seeds: invalid type"],
        ),
        runner_file(
            "finetune: unknown baseline",
            pipeline_file(d, "baseline", &finetune(r#"{ baselines = ["fulll"] }"#)),
            &[
                "baseline.toml",
                "stages.finetune.params",
                "baselines",
                "\"fulll\" is not a baseline",
            ],
        ),
        runner_file(
            "probe: checkpoint file that is not there",
            pipeline_file(
                d,
                "checkpoint",
                "[stages.probe]\nkind = \"probe\"\ninputs = { dataset = \"prep\" }\nparams = { preset = \"vit-cpu-tiny\", checkpoint = \"no-such.safetensors\" }\n",
            ),
            &[
                "checkpoint.toml",
                "stages.probe.params",
                "checkpoint = \"no-such.safetensors\": no such file",
            ],
        ),
        runner_file(
            "report: no tasks",
            pipeline_file(
                d,
                "tasks",
                "[stages.report]\nkind = \"report\"\nparams = { tasks = 3 }\n",
            ),
            &["tasks.toml", "stages.report.params.tasks: invalid type"],
        ),
        // The runner's own command line.
        stage(
            "pipeline file that is not there",
            "graft",
            &["run", "no-such-pipeline.toml"],
            &["no-such-pipeline.toml", "No such file"],
        ),
        stage(
            "override of a stage that is not there",
            "graft",
            &["run", b, "-S", "nostage.seed=1"],
            &["nostage.seed=1", "nostage"],
        ),
        stage(
            "override without a value",
            "graft",
            &["run", b, "-S", "prep.seed"],
            &["prep.seed", "STAGE.PARAM=VALUE"],
        ),
        stage(
            "override of the wrong type",
            "graft",
            &["run", b, "-S", "prep.image_size=big"],
            &["base.toml", "stages.prep.params.image_size: invalid type"],
        ),
        stage(
            "--force of a stage that is not there",
            "graft",
            &["run", b, "--force", "nostage"],
            &["--force nostage", "base.toml"],
        ),
        // Stage binaries run by hand.
        stage(
            "prep by hand: a string where a number goes",
            "graft-prep",
            &["-p", "source=procedural", "-p", "image_size=big"],
            &["prep: bad parameter image_size: invalid type: string \"big\", expected u32"],
        ),
        stage(
            "prep by hand: parameter without a value",
            "graft-prep",
            &["-p", "noequals"],
            &["prep", "\"noequals\" is not KEY=VALUE"],
        ),
        stage(
            "prep by hand: --params-json not an object",
            "graft-prep",
            &["--params-json", "[1]"],
            &["prep", "--params-json must be a JSON object"],
        ),
        stage(
            "propose by hand: input id that is no id",
            "graft-propose",
            &["-i", "probe=xyz"],
            &["propose", "probe=xyz"],
        ),
        stage(
            "propose by hand: input not in the store",
            "graft-propose",
            &["-i", &format!("probe={absent}")],
            &["propose", &format!("probe={absent}")],
        ),
        stage(
            "pretrain by hand: --device cuda",
            "graft-pretrain",
            &["--device", "cuda", "-i", &format!("dataset={dataset}")],
            &["pretrain: bad parameter", "device = \"cuda\"", "CUDA"],
        ),
        stage(
            "finetune by hand: cuda with four jobs",
            "graft-finetune",
            &[
                "-p",
                "device=cuda",
                "-p",
                "jobs=4",
                "-p",
                "baselines=[\"full\"]",
                "-p",
                "preset=vit-cpu-tiny",
                "-i",
                &format!("dataset={dataset}"),
            ],
            &["finetune: bad parameter", "device = \"cuda\""],
        ),
    ];
    assert!(cases.len() >= 30, "{} cases", cases.len());

    let mut failures = Vec::new();
    for case in &cases {
        let before = snapshot(&store);
        let mut cmd = Command::new(bin_dir().join(case.bin));
        cmd.arg("--store")
            .arg(&store)
            .args(&case.args)
            .current_dir(d)
            .env_remove("GRAFT_STORE")
            .env_remove("DTD_DIR")
            .env_remove("RUST_BACKTRACE");
        let out = run_bounded(&mut cmd, Duration::from_secs(60));
        let err = stderr(&out);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut wrong = Vec::new();
        if out.status.success() || out.status.code().is_none() {
            wrong.push(format!("exit {:?}", out.status));
        }
        if lines.len() != 1 || !lines[0].starts_with("error: ") {
            wrong.push("not one `error:` line".to_owned());
        }
        for e in &case.expect {
            if !err.contains(e.as_str()) {
                wrong.push(format!("does not say {e:?}"));
            }
        }
        if err.contains("panicked") {
            wrong.push("panicked".to_owned());
        }
        if let Some(part) = lines.iter().find_map(|l| repeated_part(l)) {
            wrong.push(format!("repeats {part:?}"));
        }
        if snapshot(&store) != before {
            wrong.push("changed the store".to_owned());
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n    stderr: {}",
                case.name,
                wrong.join(", "),
                err.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "the catalogue took {:?}",
        started.elapsed()
    );
}

/// An unknown `GRAFT_CPU_KERNELS` (issue 27) is refused by every tensor stage binary and by
/// their front before anything else, `--check` included: one line naming the variable and
/// what it accepts, a non-zero exit, nothing in the store.
#[test]
fn an_unknown_cpu_kernels_switch_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let calls: [(&str, &[&str]); 4] = [
        ("graft-pretrain", &["--check"]),
        ("graft-probe", &["--check"]),
        ("graft-finetune", &["--check"]),
        ("graft-front", &["finetune", "--check"]),
    ];
    for (bin, args) in calls {
        let mut cmd = Command::new(bin_dir().join(bin));
        cmd.env("GRAFT_CPU_KERNELS", "avx512")
            .args(args)
            .arg("--store")
            .arg(&store);
        let out = run_bounded(&mut cmd, Duration::from_secs(60));
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{bin} accepted GRAFT_CPU_KERNELS=avx512"
        );
        assert_eq!(
            err.trim(),
            "error: GRAFT_CPU_KERNELS=\"avx512\": expected avx2 (the default: reproducible on every x86-64 machine) or native (the machine's own kernels)",
            "{bin}"
        );
        assert!(!store.exists(), "{bin} made the store");
    }
}
