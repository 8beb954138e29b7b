//! The pipeline runner: reads `pipelines/<task>.toml`, orders its stages by their inputs
//! and runs each stage's own binary (`graft-<kind>`) as a subprocess, passing parameters and
//! input artifact ids. Each stage decides freshness itself (see `graft_stage`), so the
//! runner holds no cache logic: it validates the whole pipeline first, then runs or asks
//! for status stage by stage, and prints one line per stage.
//!
//! A pipeline file:
//!
//! ```toml
//! description = "what this pipeline is for"
//!
//! [stages.prep]                 # stage name: unique in the pipeline, used by -S prep.seed=3
//! kind = "prep"                 # which stage binary: graft-prep
//! inputs = {}                   # input name -> name of the stage that produces it
//! [stages.prep.params]          # the stage's parameters; unknown ones are an error
//! source = "procedural"
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use graft_stage::{Outcome, Status};
use graft_store::{Access, ArtifactId, GcPlan, Store, holders_text};
use serde::Deserialize;
use serde_json::Value;

mod matrix;

/// The embedded default pipeline: procedural data, no download.
pub const DEFAULT_PIPELINE: &str = include_str!("../../../pipelines/default.toml");

/// The stage kinds: kind `k` runs the binary `graft-k`. `command` runs an external program
/// (`graft-command`: a script with declared inputs, outputs and their contracts).
pub const KINDS: &[&str] = &[
    "prep", "pretrain", "probe", "propose", "finetune", "report", "command",
];

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{path}: {message}")]
    Pipeline { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("override {arg:?}: {message}")]
    Override { arg: String, message: String },
    #[error("stage {stage}: {message}")]
    Stage { stage: String, message: String },
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error("{message}")]
    Gc { message: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineFile {
    #[serde(default)]
    description: Option<String>,
    /// Values named once and used as `${vars.<name>}` (see [`matrix`]).
    #[serde(default)]
    vars: toml::Table,
    stages: toml::Table,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageFile {
    kind: String,
    #[serde(default)]
    inputs: BTreeMap<String, String>,
    #[serde(default)]
    params: toml::Table,
    /// Axes to expand over, in the file's order (see [`matrix`]).
    #[serde(default)]
    matrix: Option<toml::Table>,
    /// The part of expansion names after `@`, with `${item.…}` references.
    #[serde(default)]
    name: Option<String>,
}

/// One stage of a pipeline, parameters as they will be passed: a stage of the file, or one
/// expansion of a matrix stage (`probe@dtd`).
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The stage's name: `probe`, or `probe@dtd` for an expansion.
    pub name: String,
    /// The name in the file: `probe` for `probe` and for each of its expansions.
    pub base: String,
    pub kind: String,
    /// An expansion's axes in the file's order, each with its part of the name (`None` for a
    /// table item without a `name`); empty for a stage without a matrix.
    pub item: Vec<(String, Option<String>)>,
    /// Input name -> producing stage's name.
    pub inputs: BTreeMap<String, String>,
    pub params: serde_json::Map<String, Value>,
}

/// A parsed pipeline, stages in dependency order (file order among independent ones).
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    pub source: String,
    pub description: Option<String>,
    pub stages: Vec<StageSpec>,
}

impl Pipeline {
    /// Loads `pipelines/<name>.toml` when `arg` is a bare name, the file when it is a path,
    /// and the embedded default when it is `None`.
    pub fn load(arg: Option<&str>) -> Result<Pipeline, RunnerError> {
        Pipeline::load_with(arg, &[])
    }

    /// [`Pipeline::load`] with `-S vars.<name>=<value>` overrides applied before matrix
    /// stages expand (`sets` may hold other overrides too: they are left alone here).
    pub fn load_with(arg: Option<&str>, sets: &[String]) -> Result<Pipeline, RunnerError> {
        match arg {
            None => Pipeline::parse_with(
                "default",
                "embedded default pipeline",
                DEFAULT_PIPELINE,
                sets,
            ),
            Some(a) => {
                let path = if a.ends_with(".toml") || a.contains('/') {
                    PathBuf::from(a)
                } else {
                    Path::new("pipelines").join(format!("{a}.toml"))
                };
                let text = std::fs::read_to_string(&path).map_err(|source| RunnerError::Io {
                    path: path.clone(),
                    source,
                })?;
                let name = path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Pipeline::parse_with(&name, &path.display().to_string(), &text, sets)
            }
        }
    }

    /// Parses pipeline TOML; `source` names it in errors.
    pub fn parse(name: &str, source: &str, text: &str) -> Result<Pipeline, RunnerError> {
        Pipeline::parse_with(name, source, text, &[])
    }

    /// [`Pipeline::parse`] with the `-S vars.<name>=<value>` overrides among `sets`.
    pub fn parse_with(
        name: &str,
        source: &str,
        text: &str,
        sets: &[String],
    ) -> Result<Pipeline, RunnerError> {
        let err = |message: String| RunnerError::Pipeline {
            path: source.to_owned(),
            message,
        };
        let table: toml::Table = toml::from_str(text).map_err(|e| err(toml_error(text, &e)))?;
        let file: PipelineFile = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let path = e.path().to_string();
                let message = e.into_inner().message().trim().to_owned();
                err(if path == "." {
                    message
                } else {
                    format!("{path}: {message}")
                })
            })?;
        let mut templates = Vec::new();
        for (stage_name, value) in file.stages {
            templates.push(template(stage_name, value).map_err(err)?);
        }
        let mut vars = match serde_json::to_value(&file.vars) {
            Ok(Value::Object(m)) => m,
            _ => return Err(err("vars must be a table".into())),
        };
        for arg in sets.iter().filter(|a| is_var_override(a)) {
            set_var(&mut vars, arg)?;
        }
        let stages = matrix::expand(templates, &vars).map_err(err)?;
        let stages = order(stages).map_err(err)?;
        Ok(Pipeline {
            name: name.to_owned(),
            source: source.to_owned(),
            description: file.description,
            stages,
        })
    }

    /// The names a person can give `-S` and `--force`: each stage of the file (a matrix
    /// stage stands for all its expansions) and each expansion.
    pub fn stage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for s in &self.stages {
            if s.name != s.base && !names.contains(&s.base) {
                names.push(s.base.clone());
            }
            names.push(s.name.clone());
        }
        names
    }

    /// Does `name` (a stage, an expansion, or a matrix stage's name for all its expansions)
    /// pick `spec`?
    pub fn names(spec: &StageSpec, name: &str) -> bool {
        spec.name == name || spec.base == name
    }

    /// Applies every override of `sets` but the `vars.` ones (which [`Pipeline::load_with`]
    /// applied).
    pub fn apply_overrides(&mut self, sets: &[String]) -> Result<(), RunnerError> {
        for arg in sets.iter().filter(|a| !is_var_override(a)) {
            self.apply_override(arg)?;
        }
        Ok(())
    }

    /// Applies `-S stage.param=value` overrides, as if the file said so: `-S probe.batch=8`
    /// sets every expansion of a matrix stage `probe`, `-S probe@dtd.batch=8` one.
    pub fn apply_override(&mut self, arg: &str) -> Result<(), RunnerError> {
        let bad = |message: String| RunnerError::Override {
            arg: arg.to_owned(),
            message,
        };
        let (path, value) = graft_stage::parse_assignment(arg)
            .ok_or_else(|| bad("expected STAGE.PARAM=VALUE".into()))?;
        let (stage, param) = path
            .split_once('.')
            .ok_or_else(|| bad("expected STAGE.PARAM=VALUE".into()))?;
        let targets: Vec<&mut StageSpec> = self
            .stages
            .iter_mut()
            .filter(|s| Pipeline::names(s, stage))
            .collect();
        if targets.is_empty() {
            return Err(bad(format!(
                "no stage {stage:?} in this pipeline (stages: {})",
                self.stage_names().join(", ")
            )));
        }
        for spec in targets {
            spec.params.insert(param.to_owned(), value.clone());
        }
        Ok(())
    }
}

/// `-S vars.<name>=…`: an override of the pipeline's `vars`, applied before expansion.
fn is_var_override(arg: &str) -> bool {
    arg.trim_start().starts_with("vars.")
}

/// Sets one of `vars` from `-S vars.<name>=<value>`; the name must be one the file has.
fn set_var(vars: &mut serde_json::Map<String, Value>, arg: &str) -> Result<(), RunnerError> {
    let bad = |message: String| RunnerError::Override {
        arg: arg.to_owned(),
        message,
    };
    let (path, value) =
        graft_stage::parse_assignment(arg).ok_or_else(|| bad("expected vars.NAME=VALUE".into()))?;
    let name = path.trim_start_matches("vars.");
    match vars.get_mut(name) {
        Some(slot) => {
            *slot = value;
            Ok(())
        }
        None => {
            let known: Vec<&str> = vars.keys().map(String::as_str).collect();
            Err(bad(format!(
                "no var {name:?} in this pipeline (vars: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
    }
}

/// One stage of the file as written, its kind checked.
fn template(stage_name: String, value: toml::Value) -> Result<matrix::Template, String> {
    let spec: StageFile = value
        .try_into()
        .map_err(|e: toml::de::Error| format!("stages.{stage_name}: {}", e.message()))?;
    if !KINDS.contains(&spec.kind.as_str()) {
        return Err(format!(
            "stages.{stage_name}.kind = {:?} is not a stage kind (known: {})",
            spec.kind,
            KINDS.join(", ")
        ));
    }
    if let Err(why) = check_stage_name(&stage_name) {
        return Err(format!("stages.{stage_name}: the name {why}"));
    }
    let params = match serde_json::to_value(&spec.params) {
        Ok(Value::Object(m)) => m,
        _ => return Err(format!("stages.{stage_name}.params must be a table")),
    };
    let matrix = match spec.matrix {
        None => None,
        Some(axes) => Some(
            axes.into_iter()
                .map(|(axis, v)| {
                    serde_json::to_value(&v)
                        .map(|v| (axis.clone(), v))
                        .map_err(|e| format!("stages.{stage_name}.matrix.{axis}: {e}"))
                })
                .collect::<Result<Vec<_>, String>>()?,
        ),
    };
    if spec.name.is_some() && matrix.is_none() {
        return Err(format!(
            "stages.{stage_name}.name: a name template needs a matrix"
        ));
    }
    Ok(matrix::Template {
        name: stage_name,
        kind: spec.kind,
        inputs: spec.inputs,
        params,
        matrix,
        name_template: spec.name,
    })
}

/// A stage's name in the file: no `@` (expansions add it) and no `.` (`-S stage.param`).
fn check_stage_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(['@', '.', '/']) || name.contains("--") {
        return Err("must not be empty or hold '@', '.', '/' or '--'".into());
    }
    if name == "vars" {
        return Err("`vars` is taken by `-S vars.<name>=…`".into());
    }
    Ok(())
}

/// A TOML error as one line: `line 3, column 7: <message>` (the toml crate's own display
/// draws the line over several).
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    let Some(span) = e.span() else {
        return message.to_owned();
    };
    let before = &text[..span.start.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {column}: {message}")
}

/// Topological order by inputs, keeping file order among ready stages.
fn order(mut pending: Vec<StageSpec>) -> Result<Vec<StageSpec>, String> {
    let names: BTreeSet<String> = pending.iter().map(|s| s.name.clone()).collect();
    for s in &pending {
        for (input, producer) in &s.inputs {
            if !names.contains(producer) {
                return Err(format!(
                    "stages.{}.inputs.{input} = {producer:?} is not a stage of this pipeline",
                    s.name
                ));
            }
        }
    }
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut out = Vec::new();
    while !pending.is_empty() {
        let Some(pos) = pending
            .iter()
            .position(|s| s.inputs.values().all(|p| done.contains(p)))
        else {
            let cycle: Vec<&str> = pending.iter().map(|s| s.name.as_str()).collect();
            return Err(format!(
                "stages form a cycle through their inputs: {}",
                cycle.join(", ")
            ));
        };
        let s = pending.remove(pos);
        done.insert(s.name.clone());
        out.push(s);
    }
    Ok(out)
}

/// A stage's failure as an error of the pipeline file.
fn failure_error(pipeline: &Pipeline, spec: &StageSpec, f: graft_stage::Failure) -> RunnerError {
    let at = match &f.at {
        Some(at) => format!("stages.{}.{at}", spec.name),
        None => format!("stages.{}", spec.name),
    };
    let message = match &f.at {
        // The stage tells a person at a shell to pass `--input`; in a pipeline file an
        // input is named in the stage's `inputs` table.
        Some(a) if a.starts_with("inputs.") && f.message.starts_with("missing") => format!(
            "{at}: missing: {} needs it; name the stage that produces it",
            spec.kind
        ),
        _ => format!("{at}: {}", f.message),
    };
    RunnerError::Pipeline {
        path: pipeline.source.clone(),
        message,
    }
}

/// The line a stage prints on stdout when it fails under `--json`.
#[derive(Deserialize)]
struct FailureLine {
    failure: graft_stage::Failure,
}

/// Failures as `(stage label, line)`: expansions of one matrix stage that fail with the same
/// words are one line, labelled `prep@*` (all of them) or `prep@{dtd,cifar}`.
fn group_failures(
    pipeline: &Pipeline,
    failed: Vec<(&StageSpec, RunnerError)>,
) -> Vec<(String, String)> {
    // The stage's own name in the message stands for the group's label.
    const HOLE: &str = "\u{0}";
    let mut groups: Vec<(String, Vec<&StageSpec>, String)> = Vec::new();
    for (spec, e) in failed {
        let line = e
            .to_string()
            .replace(&format!("stages.{}", spec.name), &format!("stages.{HOLE}"));
        match groups
            .iter_mut()
            .find(|(base, _, l)| *base == spec.base && *l == line)
        {
            Some((_, specs, _)) => specs.push(spec),
            None => groups.push((spec.base.clone(), vec![spec], line)),
        }
    }
    groups
        .into_iter()
        .map(|(base, specs, line)| {
            let all = pipeline.stages.iter().filter(|s| s.base == base).count();
            let label = match specs.as_slice() {
                [one] => one.name.clone(),
                _ if specs.len() == all => format!("{base}@*"),
                _ => format!(
                    "{base}@{{{}}}",
                    specs
                        .iter()
                        .map(|s| s.name.trim_start_matches(&format!("{base}@")).to_owned())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            };
            let line = line.replace(HOLE, &label);
            (label, line)
        })
        .collect()
}

/// What the runner does with each stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    Status,
}

/// Options of one runner invocation.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub store: PathBuf,
    pub bin_dir: PathBuf,
    pub mode: Mode,
    /// Stages to run even when fresh (a matrix stage's name: all its expansions).
    pub force: BTreeSet<String>,
}

/// The result of one stage in a pipeline run.
#[derive(Debug, Clone)]
pub enum StageResult {
    Done(Outcome),
    /// `--status` only: an input is stale, so this stage would rerun unless early cutoff saves it.
    Waiting {
        input: String,
    },
    /// Skipped because an input is not available.
    Blocked {
        input: String,
    },
}

fn placeholder_id() -> ArtifactId {
    ArtifactId::parse(&"0".repeat(64)).expect("64 zeros is a valid id")
}

impl RunOptions {
    /// `graft-<kind> ...`, through `graft-front <kind> ...` when that binary is beside the
    /// stage binaries: it answers checks and fresh runs of the stages with tensors without
    /// starting their backend, and is the stage binary otherwise (see crates/graft-front).
    fn command(&self, pipeline: &Pipeline, spec: &StageSpec) -> Command {
        let front = self.bin_dir.join("graft-front");
        let mut cmd = if front.is_file() {
            let mut c = Command::new(front);
            c.arg(&spec.kind);
            c
        } else {
            Command::new(self.bin_dir.join(format!("graft-{}", spec.kind)))
        };
        cmd.arg("--store")
            .arg(&self.store)
            .arg("--slot")
            .arg(format!("{}/{}", pipeline.name, spec.name))
            .arg("--params-json")
            .arg(Value::Object(spec.params.clone()).to_string())
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }

    /// Runs one stage binary and reads its outcome. A stage that fails says why in a
    /// [`graft_stage::Failure`] on stdout (it is run with `--json`), reported here as an
    /// error of the pipeline file at `stages.<name>[.params.<field> | .inputs.<name>]`.
    fn invoke(
        &self,
        pipeline: &Pipeline,
        spec: &StageSpec,
        mut cmd: Command,
    ) -> Result<Outcome, RunnerError> {
        let program = cmd.get_program().to_owned();
        let out = cmd.output().map_err(|e| RunnerError::Stage {
            stage: spec.name.clone(),
            message: format!("cannot start {}: {e}", Path::new(&program).display()),
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let failure = text.lines().rev().find_map(|l| {
                serde_json::from_str::<FailureLine>(l)
                    .ok()
                    .map(|f| f.failure)
            });
            return Err(match failure {
                Some(f) => failure_error(pipeline, spec, f),
                None => RunnerError::Stage {
                    stage: spec.name.clone(),
                    message: format!("failed ({}); what it printed is above", out.status),
                },
            });
        }
        let last = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        serde_json::from_str(last).map_err(|e| RunnerError::Stage {
            stage: spec.name.clone(),
            message: format!("unreadable outcome {last:?}: {e}"),
        })
    }

    /// Checks every stage's parameters and input names before anything runs, so a bad
    /// parameter anywhere leaves the store untouched. A stage's refusal is reported as an
    /// error of the pipeline file, naming `stages.<name>.params.<field>`. Every stage is
    /// checked, so one run lists everything that is missing (data, checkpoints); the same
    /// refusal from several expansions of a matrix stage is one line (`stages.prep@*…`).
    pub fn check(&self, pipeline: &Pipeline) -> Result<(), RunnerError> {
        let mut failed = Vec::new();
        for spec in &pipeline.stages {
            let mut cmd = self.command(pipeline, spec);
            cmd.arg("--check");
            for input in spec.inputs.keys() {
                cmd.arg("--input")
                    .arg(format!("{input}={}", placeholder_id()));
            }
            if let Err(e) = self.invoke(pipeline, spec, cmd) {
                failed.push((spec, e));
            }
        }
        if failed.len() == 1 {
            return Err(failed.remove(0).1);
        }
        let groups = group_failures(pipeline, failed);
        match groups.len() {
            0 => Ok(()),
            _ => Err(RunnerError::Stage {
                stage: groups
                    .iter()
                    .map(|(label, _)| label.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                message: format!(
                    "failed the check:\n  {}",
                    groups
                        .iter()
                        .map(|(_, line)| line.as_str())
                        .collect::<Vec<_>>()
                        .join("\n  ")
                ),
            }),
        }
    }

    /// Runs (or asks the status of) every stage in order, calling `report` after each.
    /// Stops at the first failing stage. A run holds the store's lock shared throughout
    /// (recorded as `pipeline <name>`), so `gc --yes` waits for it.
    pub fn execute(
        &self,
        pipeline: &Pipeline,
        mut report: impl FnMut(&StageSpec, &StageResult, f64),
    ) -> Result<Vec<(String, StageResult)>, RunnerError> {
        self.check(pipeline)?;
        // Opening the store cleans leftovers of killed stages before anything runs.
        let store = Store::open(&self.store)?;
        // A running pipeline holds the store shared: `gc --yes` waits for it to finish, so it
        // never deletes what a stage has looked up or published and not yet recorded.
        let _lock = match self.mode {
            Mode::Run => Some(store.lock_store(
                Access::Shared,
                &format!("pipeline {}", pipeline.name),
                |h| {
                    eprintln!(
                        "graft: waiting for {} to finish with the store",
                        holders_text(h)
                    )
                },
            )?),
            Mode::Status => None,
        };
        let mut produced: BTreeMap<String, StageResult> = BTreeMap::new();
        let mut results = Vec::new();
        for spec in &pipeline.stages {
            let start = Instant::now();
            let mut ids = BTreeMap::new();
            let mut result = None;
            for (input, producer) in &spec.inputs {
                match produced.get(producer) {
                    Some(StageResult::Done(Outcome {
                        artifact: Some(id), ..
                    })) => {
                        ids.insert(input.clone(), id.clone());
                    }
                    Some(StageResult::Done(_)) | Some(StageResult::Waiting { .. })
                        if self.mode == Mode::Status =>
                    {
                        result = Some(StageResult::Waiting {
                            input: input.clone(),
                        });
                    }
                    _ => {
                        result.get_or_insert(StageResult::Blocked {
                            input: input.clone(),
                        });
                    }
                }
            }
            let result = match result {
                Some(r) => r,
                None => {
                    let mut cmd = self.command(pipeline, spec);
                    for (input, id) in &ids {
                        cmd.arg("--input").arg(format!("{input}={id}"));
                    }
                    match self.mode {
                        Mode::Status => {
                            cmd.arg("--status");
                        }
                        Mode::Run if self.force.iter().any(|f| Pipeline::names(spec, f)) => {
                            cmd.arg("--force");
                        }
                        Mode::Run => {}
                    }
                    StageResult::Done(self.invoke(pipeline, spec, cmd)?)
                }
            };
            report(spec, &result, start.elapsed().as_secs_f64());
            produced.insert(spec.name.clone(), result.clone());
            results.push((spec.name.clone(), result));
        }
        Ok(results)
    }
}

/// One line per stage, as the runner prints it.
pub fn describe(spec: &StageSpec, result: &StageResult, seconds: f64, width: usize) -> String {
    let name = &spec.name;
    match result {
        StageResult::Done(o) => {
            let mut o = o.clone();
            o.slot = name.clone();
            if o.status != Status::Stale {
                o.seconds = seconds;
            }
            o.line(width)
        }
        StageResult::Waiting { input } => {
            format!(
                "{name:<width$}  stale  {:>7} s  (input {input} is stale)",
                "-"
            )
        }
        StageResult::Blocked { input } => {
            format!(
                "{name:<width$}  -      {:>7} s  (skipped: input {input} is not available)",
                "-"
            )
        }
    }
}

/// What `gc` keeps and why: the last artifact of every slot in the store (every pipeline that
/// ran on it, wherever its file lives, and stages run by hand), less the slots `--forget`
/// names.
#[derive(Debug, Default, Clone)]
pub struct GcRoots {
    /// Artifacts of the kept slots.
    pub roots: Vec<ArtifactId>,
    /// Slots `--forget` drops (removed with `--yes`).
    pub forget: Vec<String>,
    /// Pipelines with slots in the store and no file among the known pipelines (run from a
    /// file elsewhere): kept all the same.
    pub elsewhere: Vec<String>,
    /// Kept slots whose stage is no longer in its pipeline's file: `(slot, file)`.
    pub stale_stages: Vec<(String, String)>,
}

/// The pipeline a slot belongs to: `ci` of `ci/probe`; a slot without `/` (a stage run by
/// hand) is its own.
pub fn slot_pipeline(slot: &str) -> &str {
    slot.split_once('/').map_or(slot, |(p, _)| p)
}

/// The roots of `gc`: every slot's artifact, less those of `forget` (a pipeline name, one
/// slot `pipeline/stage`, or `pipeline/stage` of a matrix stage for all its expansions). Refuses (an error naming the cause) when it cannot tell what to
/// keep: an unreadable pipelines directory or slot record, a pipeline file that does not
/// parse, a `forget` name with no slot.
pub fn gc_roots(
    store: &Store,
    pipelines_dir: &Path,
    forget: &[String],
) -> Result<GcRoots, RunnerError> {
    let files = all_pipelines(pipelines_dir)?;
    let slots = store.slots()?;
    let mut out = GcRoots::default();
    for name in forget {
        let hits: Vec<&String> = slots
            .iter()
            .map(|(slot, _)| slot)
            .filter(|slot| {
                *slot == name
                    || slot_pipeline(slot) == name
                    || slot
                        .strip_prefix(name.as_str())
                        .is_some_and(|r| r.starts_with('@'))
            })
            .collect();
        if hits.is_empty() {
            let mut known: Vec<&str> = slots.iter().map(|(s, _)| slot_pipeline(s)).collect();
            known.dedup();
            return Err(RunnerError::Gc {
                message: format!(
                    "--forget {name}: no pipeline or slot of that name in the store (pipelines with slots: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
        out.forget.extend(hits.into_iter().cloned());
    }
    out.forget.sort();
    out.forget.dedup();
    for (slot, record) in &slots {
        if out.forget.contains(slot) {
            continue;
        }
        out.roots.push(record.artifact.clone());
        let Some((pipeline, stage)) = slot.split_once('/') else {
            continue;
        };
        match files.iter().find(|p| p.name == pipeline) {
            Some(p) if !p.stages.iter().any(|s| s.name == stage) => {
                out.stale_stages.push((slot.clone(), p.source.clone()))
            }
            Some(_) => {}
            None => {
                if !out.elsewhere.iter().any(|e| e == pipeline) {
                    out.elsewhere.push(pipeline.to_owned());
                }
            }
        }
    }
    Ok(out)
}

/// Sizes for people: bytes, KiB or MiB.
pub fn human_size(bytes: u64) -> String {
    match bytes {
        b if b < 1024 => format!("{b} B"),
        b if b < 1024 * 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{:.1} MiB", b as f64 / 1048576.0),
    }
}

/// The lines `gc` prints: with `deleted` false (the dry run) they list exactly what `--yes`
/// deletes, each artifact with its size and the slot it last belonged to.
pub fn gc_lines(roots: &GcRoots, plan: &GcPlan, deleted: bool) -> Vec<String> {
    let verb = if deleted { "removed" } else { "would remove" };
    let mut out = Vec::new();
    for slot in &roots.forget {
        out.push(format!(
            "{} slot {slot}",
            if deleted { "forgot" } else { "would forget" }
        ));
    }
    for e in &plan.remove {
        out.push(format!(
            "{verb} {}  {}  {}",
            e.id,
            human_size(e.size),
            match &e.owner {
                Some(slot) => format!("last in {slot}"),
                None => "no pipeline".to_owned(),
            }
        ));
    }
    for (path, size) in &plan.corrupt {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        out.push(format!(
            "{verb} corrupt/{}  {}",
            name.unwrap_or_default(),
            human_size(*size)
        ));
    }
    for key in &plan.stale_keys {
        let name = key.file_name().map(|n| n.to_string_lossy().into_owned());
        out.push(format!(
            "{verb} key record keys/{}",
            name.unwrap_or_default()
        ));
    }
    for p in &roots.elsewhere {
        out.push(format!(
            "kept pipeline {p}: its file is not among the known pipelines (`graft gc --forget {p}` lets it go)"
        ));
    }
    for (slot, file) in &roots.stale_stages {
        out.push(format!(
            "kept slot {slot}: its stage is no longer in {file} (`graft gc --forget {slot}` lets it go)"
        ));
    }
    out.push(format!(
        "{} artifacts kept, {} unreachable, {} in corrupt/ ({}), {} stale key records{}",
        plan.kept.len(),
        plan.remove.len(),
        plan.corrupt.len(),
        human_size(plan.bytes()),
        plan.stale_keys.len(),
        if deleted {
            " removed"
        } else {
            "; run with --yes to delete"
        }
    ));
    out
}

/// The embedded default and every `*.toml` in `dir` (none when `dir` does not exist). A
/// directory that cannot be read, or a file that does not parse, is an error.
pub fn all_pipelines(dir: &Path) -> Result<Vec<Pipeline>, RunnerError> {
    let mut out = vec![Pipeline::load(None)?];
    let io = |source| RunnerError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        paths.push(entry.map_err(io)?.path());
    }
    paths.sort();
    for p in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
    {
        let pipeline = Pipeline::load(Some(&p.display().to_string()))?;
        if pipeline.name != "default" {
            out.push(pipeline);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pipeline_parses() {
        let p = Pipeline::load(None).unwrap();
        assert!(p.stages.iter().any(|s| s.kind == "prep"));
    }

    #[test]
    fn every_pipeline_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
        let all = all_pipelines(&dir).unwrap();
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "ci", "dtd", "replicates", "vtab"]);
    }

    fn testdata(name: &str) -> Pipeline {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name);
        Pipeline::load(Some(&path.display().to_string())).unwrap()
    }

    fn pipeline_file(name: &str, sets: &[String]) -> Pipeline {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../pipelines")
            .join(name);
        let mut p = Pipeline::load_with(Some(&path.display().to_string()), sets).unwrap();
        p.apply_overrides(sets).unwrap();
        p
    }

    /// The hand-written name of an expansion: `prep-dtd` for `prep@dtd`.
    fn by_hand(name: &str) -> String {
        name.replace('@', "-")
    }

    /// The 19-task matrix file expands into the five hand-written tasks' stages with their
    /// keys; with its tasks set to those five (and one title), every key is the same.
    #[test]
    fn vtab_matrix_keys_equal_the_hand_written_file() {
        let hand = matrix::tests::symbolic_keys(&testdata("vtab-five-by-hand.toml"));
        let full = matrix::tests::symbolic_keys(&pipeline_file("vtab.toml", &[]));
        assert_eq!(full.len(), 19 * 4 + 1);
        let mut compared = 0;
        for (name, key) in full.iter().filter(|(name, _)| name.contains('@')) {
            if let Some(k) = hand.get(&by_hand(name)) {
                assert_eq!(k, key, "{name}");
                compared += 1;
            }
        }
        assert_eq!(compared, 5 * 4, "{full:?}");
        let sets = [
            r#"vars.tasks=["dtd", "cifar", "oxford_flowers102", "eurosat", "svhn"]"#.to_owned(),
            r#"report.title="t""#.to_owned(),
        ];
        let five = matrix::tests::symbolic_keys(&pipeline_file("vtab.toml", &sets));
        let mut hand = testdata("vtab-five-by-hand.toml");
        hand.apply_override(r#"report.title="t""#).unwrap();
        let hand = matrix::tests::symbolic_keys(&hand);
        let five: BTreeMap<String, String> =
            five.into_iter().map(|(n, k)| (by_hand(&n), k)).collect();
        assert_eq!(five, hand);
    }

    /// The default's matrix over its two targets is the hand-written chain, key for key.
    #[test]
    fn default_matrix_keys_equal_the_hand_written_file() {
        let hand = matrix::tests::symbolic_keys(&testdata("default-by-hand.toml"));
        let matrix = matrix::tests::symbolic_keys(&Pipeline::load(None).unwrap());
        let matrix: BTreeMap<String, String> =
            matrix.into_iter().map(|(n, k)| (by_hand(&n), k)).collect();
        assert_eq!(matrix, hand);
    }

    #[test]
    fn example_pipelines_parse() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/heuristics/python.toml");
        let p = Pipeline::load(Some(&path.display().to_string())).unwrap();
        let command = p.stages.iter().find(|s| s.kind == "command").unwrap();
        let finetune = p.stages.iter().find(|s| s.kind == "finetune").unwrap();
        assert_eq!(finetune.inputs["proposals"], command.name);
    }

    #[test]
    fn orders_by_inputs_and_rejects_cycles() {
        let text = r#"
            [stages.b]
            kind = "probe"
            inputs = { dataset = "a" }
            [stages.a]
            kind = "prep"
        "#;
        let p = Pipeline::parse("t", "t.toml", text).unwrap();
        assert_eq!(
            p.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let cyc = r#"
            [stages.a]
            kind = "prep"
            inputs = { x = "b" }
            [stages.b]
            kind = "prep"
            inputs = { x = "a" }
        "#;
        let e = Pipeline::parse("t", "t.toml", cyc).unwrap_err().to_string();
        assert!(e.contains("cycle"), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let e = Pipeline::parse("t", "t.toml", "[stages.a]\nkind = \"prepp\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stages.a.kind") && e.contains("t.toml"), "{e}");
        let e = Pipeline::parse("t", "t.toml", "[stages.a]\nkind = \"prep\"\nparms = {}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("stages.a") && e.contains("parms"), "{e}");
        let e = Pipeline::parse("t", "t.toml", "[stages.a\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.toml: line 1, column 10: unclosed table, expected `]`");
        let e = Pipeline::parse(
            "t",
            "t.toml",
            "description = 3\n[stages.a]\nkind = \"prep\"\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "t.toml: description: invalid type: integer `3`, expected a string"
        );
    }

    #[test]
    fn overrides_set_params() {
        let mut p = Pipeline::parse("t", "t.toml", "[stages.prep]\nkind = \"prep\"\n").unwrap();
        p.apply_override("prep.seed=3").unwrap();
        assert_eq!(p.stages[0].params["seed"], serde_json::json!(3));
        assert!(p.apply_override("nope.seed=3").is_err());
        assert!(p.apply_override("prep=3").is_err());
    }
}
