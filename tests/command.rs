//! The command stage (issue 15): an external program as a stage, keyed on its script's
//! content and its interpreter, publishing only outputs that meet their contracts. The
//! Python example runs beside the built-in heuristics through the fine-tune stage; bad
//! outputs, failing and hanging programs are refused with nothing published.

use std::path::{Path, PathBuf};
use std::process::Command;

use graft_tables::{ProposalRow, RunRow, RunStatus, Table};

use crate::common::*;

/// The project's Python with pandas and pyarrow (`make venv` creates it; CI always has it).
fn python() -> PathBuf {
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is absent: run `make venv` (the command stage's tests run the Python example)",
        py.display()
    );
    py
}

fn example_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/heuristics/top_per_node.py")
}

/// The stages up to the probe on a tiny model, as TOML.
const PROBED: &str = r#"
[stages.src]
kind = "prep"
params = { source = "procedural", task = "source", image_size = 16, train = 64, val = 16, test = 16 }
[stages.tgt]
kind = "prep"
params = { source = "procedural", task = "textures", image_size = 16, seed = 1, train = 48, val = 16, test = 16 }
[stages.pretrain]
kind = "pretrain"
inputs = { dataset = "src" }
params = { preset = "vit-cpu-tiny", epochs = 1, batch = 32 }
[stages.probe]
kind = "probe"
inputs = { dataset = "tgt", base = "pretrain" }
params = { batch = 16, batches = 1, head_epochs = 1 }
"#;

/// A store with a probe artifact; returns the probe's id.
fn probed(dir: &Path, store: &Path) -> String {
    let path = dir.join("probed.toml");
    std::fs::write(&path, PROBED).unwrap();
    ok(graft(store).args(["run", path.to_str().unwrap()]));
    slot_artifact(store, "probed/probe")
}

fn command(store: &Path) -> Command {
    let mut c = Command::new(bin_dir().join("graft-command"));
    c.arg("--store").arg(store).env_remove("GRAFT_STORE");
    c
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

#[test]
fn python_heuristic_is_trained_beside_gga_and_top_k() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let path = dir.path().join("py.toml");
    std::fs::write(
        &path,
        format!(
            r#"{PROBED}
[stages.propose]
kind = "propose"
inputs = {{ probe = "probe" }}
params = {{ budgets = [1, 2], heuristics = [{{ name = "gga" }}, {{ name = "top-k" }}] }}
[stages.mine]
kind = "command"
inputs = {{ probe = "probe", proposals = "propose" }}
[stages.mine.params]
program = {py}
script = {script}
args = ["{{script}}", "--probe", "{{input.probe}}", "--with", "{{input.proposals}}", "--out", "{{out}}", "--budgets", "1,2"]
outputs = [{{ file = "proposals.parquet", contract = "proposals" }}]
[stages.finetune]
kind = "finetune"
inputs = {{ dataset = "tgt", base = "pretrain", proposals = "mine" }}
params = {{ proposals = true, baselines = [], seeds = [0], epochs = 1, batch = 32, jobs = 2 }}
[stages.report]
kind = "report"
inputs = {{ probe-target = "probe", finetune-target = "finetune" }}
params = {{ tasks = ["target"] }}
"#,
            py = toml_str(&python()),
            script = toml_str(&example_script()),
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let first = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&first, "mine"), "ran", "{first}");

    let objects = store.join("objects");
    let mine = objects.join(slot_artifact(&store, "py/mine"));
    let rows = ProposalRow::read(&mine.join(ProposalRow::FILE)).unwrap();
    let heuristics: Vec<&str> = rows.iter().map(|r| r.heuristic.as_str()).collect();
    assert_eq!(
        heuristics,
        [
            "gga",
            "gga",
            "top-k",
            "top-k",
            "top-per-node",
            "top-per-node"
        ],
        "the propose stage's rows first, then the script's"
    );
    let proposed = ProposalRow::read(
        &objects
            .join(slot_artifact(&store, "py/propose"))
            .join(ProposalRow::FILE),
    )
    .unwrap();
    assert_eq!(
        &rows[..4],
        &proposed[..],
        "kept rows are unchanged, ids and counts included"
    );
    for r in &rows[4..] {
        assert_eq!(r.budget, r.adapters);
        assert_eq!(r.score.as_deref(), Some("effective_rank"));
        let outs: std::collections::BTreeSet<i32> = r.edges.iter().map(|e| e.j).collect();
        assert_eq!(outs.len(), r.edges.len(), "one adapter per node: {r:?}");
        assert!(r.trainable_params > 0 && r.forward_flops > 0);
    }
    // The fine-tune stage trained the script's placements.
    let runs = RunRow::read(
        &objects
            .join(slot_artifact(&store, "py/finetune"))
            .join(RunRow::FILE),
    )
    .unwrap();
    for r in &rows {
        assert!(
            runs.iter()
                .any(|run| run.placement_id == r.placement_id && run.status == RunStatus::Ok),
            "{} ({}) not trained: {runs:#?}",
            r.placement_id,
            r.heuristic
        );
    }
    let report = objects.join(slot_artifact(&store, "py/report"));
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains("top-per-node"),
        "the report lists the heuristic"
    );

    let again = ok(graft(&store).args(["run", p]));
    for stage in ["mine", "finetune", "report"] {
        assert_eq!(status_of(&again, stage), "fresh", "{again}");
    }
    ok(graft(&store).arg("verify"));
}

#[test]
fn editing_the_script_reruns_it_and_what_follows_and_touching_it_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    probed(dir.path(), &store);
    let script = dir.path().join("heuristic.py");
    let original = std::fs::read_to_string(example_script()).unwrap();
    std::fs::write(&script, &original).unwrap();
    let path = dir.path().join("edit.toml");
    std::fs::write(
        &path,
        format!(
            r#"{PROBED}
[stages.mine]
kind = "command"
inputs = {{ probe = "probe" }}
[stages.mine.params]
program = {py}
script = {script}
args = ["{{script}}", "--probe", "{{input.probe}}", "--out", "{{out}}"]
outputs = [{{ file = "proposals.parquet", contract = "proposals" }}]
[stages.after]
kind = "command"
inputs = {{ proposals = "mine" }}
[stages.after.params]
program = "sh"
version_args = []
args = ["-c", "wc -c < {{input.proposals}}/proposals.parquet > size.txt"]
outputs = [{{ file = "size.txt", contract = "file" }}]
"#,
            py = toml_str(&python()),
            script = toml_str(&script),
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let first = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&first, "mine"), "ran", "{first}");
    assert_eq!(status_of(&first, "after"), "ran", "{first}");

    // Rewritten with the same bytes (a new mtime): fresh.
    std::thread::sleep(std::time::Duration::from_millis(50));
    std::fs::write(&script, &original).unwrap();
    let touched = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&touched, "mine"), "fresh", "{touched}");
    assert_eq!(status_of(&touched, "after"), "fresh", "{touched}");

    // A comment: the stage reruns, says why, and reproduces its output (early cutoff).
    std::fs::write(&script, format!("{original}\n# a comment\n")).unwrap();
    let status = ok(graft(&store).args(["status", p]));
    assert_eq!(status_of(&status, "mine"), "stale", "{status}");
    assert!(status.contains("input script changed"), "{status}");
    let comment = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&comment, "mine"), "ran", "{comment}");
    assert!(comment.contains("input script changed"), "{comment}");
    assert_eq!(short_id(&comment, "mine"), short_id(&first, "mine"));
    assert_eq!(status_of(&comment, "after"), "fresh", "{comment}");

    // A change of what it proposes: it and everything after it rerun.
    std::fs::write(
        &script,
        original.replace("default=\"effective_rank\"", "default=\"frobenius\""),
    )
    .unwrap();
    let edited = ok(graft(&store).args(["run", p]));
    assert_eq!(status_of(&edited, "mine"), "ran", "{edited}");
    assert_ne!(short_id(&edited, "mine"), short_id(&first, "mine"));
    assert_eq!(status_of(&edited, "after"), "ran", "{edited}");
    assert!(edited.contains("input proposals changed"), "{edited}");

    // Another argument list is another key.
    let args = ok(graft(&store).args([
        "status",
        p,
        "-S",
        r#"mine.args=["{script}", "--probe", "{input.probe}", "--out", "{out}", "--budgets", "2"]"#,
    ]));
    assert_eq!(status_of(&args, "mine"), "stale", "{args}");
    assert!(args.contains("params.args changed"), "{args}");
}

/// One refusal: a program and what its error must say.
struct Refusal {
    what: &'static str,
    /// Python source (run with the project's Python), or `sh:` and a shell command.
    program: &'static str,
    timeout: f64,
    expect: &'static [&'static str],
}

const WRITE: &str = r#"
import os, sys, pyarrow as pa, pyarrow.parquet as pq
edge = pa.struct([("i", pa.int32()), ("j", pa.int32())])
def write(columns):
    pq.write_table(pa.table(columns), os.path.join(os.environ["GRAFT_OUT"], "proposals.parquet"))
"#;

const REFUSALS: &[Refusal] = &[
    Refusal {
        what: "a missing output file",
        program: "print('wrote nothing useful'); open('other.txt', 'w').write('x')",
        timeout: 60.0,
        expect: &["did not write proposals.parquet", "it wrote: other.txt"],
    },
    Refusal {
        what: "a wrong column type",
        program: "write({'heuristic': ['h'], 'budget': ['one'], 'edges': pa.array([[{'i': 0, 'j': 1}]], pa.list_(edge))})",
        timeout: 60.0,
        expect: &[
            "proposals.parquet",
            "column \"budget\"",
            "has type",
            "expected an integer",
        ],
    },
    Refusal {
        what: "an edge outside the graph",
        program: "write({'heuristic': ['h', 'h'], 'edges': pa.array([[{'i': 0, 'j': 1}], [{'i': 0, 'j': 1}, {'i': 2, 'j': 99}]], pa.list_(edge))})",
        timeout: 60.0,
        expect: &[
            "proposals.parquet",
            "row 1, column \"edges\"",
            "edge (2, 99) is outside the graph",
        ],
    },
    Refusal {
        what: "an empty placement",
        program: "write({'heuristic': ['h'], 'edges': pa.array([[]], pa.list_(edge))})",
        timeout: 60.0,
        expect: &[
            "proposals.parquet",
            "row 0, column \"edges\"",
            "at least one edge",
        ],
    },
    Refusal {
        what: "a placement id that does not match its edges",
        program: "write({'heuristic': ['h'], 'placement_id': ['mine'], 'edges': pa.array([[{'i': 0, 'j': 1}]], pa.list_(edge))})",
        timeout: 60.0,
        expect: &["row 0, column \"placement_id\"", "does not match its edges"],
    },
    Refusal {
        what: "a program that exits non-zero",
        program: "sh:echo working; echo 'Traceback: KeyError: effective_rank' >&2; exit 3",
        timeout: 60.0,
        expect: &[
            "exited with status 3",
            "| working",
            "| Traceback: KeyError: effective_rank",
        ],
    },
    Refusal {
        what: "a program that hangs",
        program: "sh:echo waiting; sleep 600",
        timeout: 1.0,
        expect: &["timeout = 1 s", "was killed", "| waiting"],
    },
];

#[test]
fn bad_outputs_and_failing_programs_are_refused_and_nothing_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let probe = probed(dir.path(), &store);
    let before = snapshot(&store);
    for (k, case) in REFUSALS.iter().enumerate() {
        // `sh --version` is not a thing: the shell's file is its fingerprint instead.
        let (program, script, args) = match case.program.strip_prefix("sh:") {
            Some(sh) => ("sh".to_owned(), None, vec!["-c".to_owned(), sh.to_owned()]),
            None => {
                let script = dir.path().join(format!("case{k}.py"));
                std::fs::write(&script, format!("{WRITE}\n{}\n", case.program)).unwrap();
                (
                    python().display().to_string(),
                    Some(script.display().to_string()),
                    vec!["{script}".to_owned()],
                )
            }
        };
        let version_args: Vec<&str> = if script.is_none() {
            vec![]
        } else {
            vec!["--version"]
        };
        let params = serde_json::json!({
            "program": program,
            "version_args": version_args,
            "script": script,
            "args": args,
            "outputs": [{ "file": "proposals.parquet", "contract": "proposals" }],
            "timeout": case.timeout,
        });
        let start = std::time::Instant::now();
        let o = run(command(&store).args([
            "--params-json",
            &params.to_string(),
            "--input",
            &format!("probe={probe}"),
        ]));
        let err = stderr(&o);
        assert!(!o.status.success(), "{}: accepted\n{err}", case.what);
        for want in case.expect {
            assert!(err.contains(want), "{}: no {want:?} in\n{err}", case.what);
        }
        assert!(
            start.elapsed().as_secs_f64() < case.timeout + 30.0,
            "{}: took {:?}",
            case.what,
            start.elapsed()
        );
        assert_eq!(snapshot(&store), before, "{}: the store changed", case.what);
    }
}

#[test]
fn bad_parameters_are_named_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let cases: &[(&str, &str)] = &[
        (r#"{"program": "sh", "outputs": []}"#, "outputs is empty"),
        (
            r#"{"program": "sh", "outputs": [{"file": "a/b", "contract": "file"}]}"#,
            "outputs[0].file",
        ),
        (
            r#"{"program": "sh", "outputs": [{"file": "p.parquet", "contract": "proposal"}]}"#,
            "outputs[0].contract = \"proposal\" is not a contract (known: proposals, file)",
        ),
        (
            r#"{"program": "sh", "args": ["{inputs.x}"], "outputs": [{"file": "a", "contract": "file"}]}"#,
            "args[0]",
        ),
        (
            r#"{"program": "sh", "args": ["{script}"], "outputs": [{"file": "a", "contract": "file"}]}"#,
            "no script is declared",
        ),
        (
            r#"{"program": "sh", "timeout": 0, "outputs": [{"file": "a", "contract": "file"}]}"#,
            "timeout = 0",
        ),
        (
            r#"{"program": "sh", "outputs": [{"file": "a", "contract": "file", "check": 1}]}"#,
            "unknown field `check`",
        ),
    ];
    for (params, want) in cases {
        let o = run(command(&store).args(["--check", "--params-json", params]));
        assert!(!o.status.success(), "{params}: accepted");
        assert!(
            stderr(&o).contains(want),
            "{params}: no {want:?} in {}",
            stderr(&o)
        );
    }
    // The inputs a stage takes follow from its arguments and contracts.
    let o = run(command(&store).args([
        "--check",
        "--params-json",
        r#"{"program": "sh", "outputs": [{"file": "proposals.parquet", "contract": "proposals"}]}"#,
    ]));
    assert!(
        stderr(&o).contains("bad input \"probe\": missing"),
        "{}",
        stderr(&o)
    );
    // A script or program that is not there is named at once.
    let o = run(command(&store).args([
        "--check",
        "--params-json",
        r#"{"program": "sh", "script": "no-such-script.py", "outputs": [{"file": "a", "contract": "file"}]}"#,
    ]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no-such-script.py"), "{}", stderr(&o));
    let o = run(command(&store).args([
        "--check",
        "--params-json",
        r#"{"program": "no-such-interpreter", "outputs": [{"file": "a", "contract": "file"}]}"#,
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("program = no-such-interpreter: not found in PATH"),
        "{}",
        stderr(&o)
    );
    assert!(
        !store.join("objects").exists()
            || std::fs::read_dir(store.join("objects")).unwrap().count() == 0
    );
}
