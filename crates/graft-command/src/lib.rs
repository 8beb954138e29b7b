//! The command stage: an external program (a Python heuristic, an R script, a binary) run as
//! a pipeline stage with the same key, rerun reasons, locking and atomic publish as every
//! graft stage, and outputs that are checked before anything is published.
//!
//! Principal types: [`CommandStage`] (the [`Stage`]), [`CommandParams`], the output
//! [`contract::Contract`]s in [`contract::REGISTRY`] (`proposals`: a placement table checked
//! against the probed model's graph; `file`: anything, unchecked), and [`program::run`].
//!
//! Decisions behind the shape:
//! - The key holds what the program's result depends on as far as graft can see: the
//!   content of the declared `script` (a file, or every file of a directory), the
//!   interpreter's version string (`program version_args...`, by default
//!   `python --version`), `args`, `outputs`, `bottleneck` and the input artifact ids. The
//!   program's and script's paths and the timeout are locations, not in the key. What the
//!   program reads without declaring it (an imported package, a file it opens) is the
//!   user's responsibility.
//! - The program runs in a private temporary directory of the store (its working directory,
//!   also `{out}`), in its own process group, killed with the group at `timeout`. Inputs
//!   are passed as directories (`{input.NAME}` in `args`, `GRAFT_INPUT_<NAME>` in its
//!   environment). Only the declared outputs are published, and only after every one meets
//!   its contract; a table contract publishes graft's own write of the checked rows, with
//!   derived columns (placement ids, counts) recomputed, so equal tables are equal bytes
//!   whatever library wrote them.
//! - The stage's input names are those `args` refer to plus those the contracts read
//!   (`probe` for `proposals`), so a pipeline's `inputs` table must match them.

pub mod contract;
pub mod fingerprint;
pub mod program;
pub mod proposals;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, ArtifactId, Publisher};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use contract::{Contract, ContractError};
pub use program::ProgramError;

/// Names of the key inputs that are fingerprints, not artifacts; no input may take them.
pub const SCRIPT_FINGERPRINT: &str = "script";
pub const INTERPRETER_FINGERPRINT: &str = "interpreter";

/// One file the program must write, and the contract it must meet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// File name in the program's output directory (and in the published artifact).
    pub file: String,
    /// A name of [`contract::REGISTRY`].
    pub contract: String,
}

/// Parameters of the command stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandParams {
    /// The program to run: a name looked up in `PATH` or a path (`.venv/bin/python`).
    /// Location: its identity enters the key through `version_args`.
    pub program: String,
    /// The script (a file or a directory) whose content enters the key; `{script}` in
    /// `args` is its absolute path. Location: only its content is in the key.
    #[serde(default)]
    pub script: Option<String>,
    /// Arguments, with `{out}`, `{script}` and `{input.NAME}` placeholders.
    #[serde(default)]
    pub args: Vec<String>,
    /// Arguments that make `program` print its version, whose output enters the key;
    /// empty: the program file's content enters instead.
    #[serde(default = "default_version_args")]
    pub version_args: Vec<String>,
    /// The files the program must write, each with its contract.
    pub outputs: Vec<OutputSpec>,
    /// Seconds before the program is killed (location: not in the key).
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    /// Adapter bottleneck r, for the parameter counts and FLOPs of proposal tables.
    #[serde(default = "default_bottleneck")]
    pub bottleneck: usize,
}

fn default_version_args() -> Vec<String> {
    vec!["--version".into()]
}
fn default_timeout() -> f64 {
    3600.0
}
fn default_bottleneck() -> usize {
    8
}

/// Errors of the command stage.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("{0}")]
    Contract(#[from] ContractError),
    #[error(
        "outputs[{index}]: the program did not write {file} (it wrote: {wrote}); nothing was published"
    )]
    Missing {
        index: usize,
        file: String,
        wrote: String,
    },
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
}

impl CommandParams {
    /// Checks every field; errors name it.
    pub fn validated(self) -> Result<CommandParams, String> {
        if self.program.trim().is_empty() {
            return Err("program is empty: name the program to run".into());
        }
        let templates = template::parse_all(&self.args)?;
        if self.script.is_none() && templates.iter().any(|t| t.uses_script()) {
            return Err("args use {script} but no script is declared".into());
        }
        // Cheap look-ups, so that `graft run` refuses a wrong path before any stage runs.
        if let Some(s) = &self.script
            && !std::path::Path::new(s).exists()
        {
            return Err(format!("script = {s:?}: no such file or directory"));
        }
        program::resolve(&self.program).map_err(|e| format!("program = {e}"))?;
        for name in self.input_names() {
            if name == SCRIPT_FINGERPRINT || name == INTERPRETER_FINGERPRINT {
                return Err(format!(
                    "input {name:?} is reserved (the key's {name} fingerprint): rename the input"
                ));
            }
        }
        if self.outputs.is_empty() {
            return Err(
                "outputs is empty: declare the files the program writes, e.g. \
                 [{ file = \"proposals.parquet\", contract = \"proposals\" }]"
                    .into(),
            );
        }
        let mut files = BTreeSet::new();
        for (k, o) in self.outputs.iter().enumerate() {
            let f = &o.file;
            if f.is_empty()
                || f.contains('/')
                || f.starts_with('.')
                || f == graft_store::MANIFEST_FILE
            {
                return Err(format!(
                    "outputs[{k}].file = {f:?} must be a plain file name (no '/', not hidden, \
                     not {})",
                    graft_store::MANIFEST_FILE
                ));
            }
            if !files.insert(f.as_str()) {
                return Err(format!("outputs[{k}].file = {f:?} is declared twice"));
            }
            if contract::contract(&o.contract).is_none() {
                return Err(format!(
                    "outputs[{k}].contract = {:?} is not a contract (known: {})",
                    o.contract,
                    contract::known()
                ));
            }
        }
        if !(self.timeout.is_finite() && self.timeout > 0.0) {
            return Err(format!(
                "timeout = {} must be a positive number of seconds",
                self.timeout
            ));
        }
        if self.bottleneck == 0 {
            return Err("bottleneck = 0 must be at least 1".into());
        }
        Ok(self)
    }

    /// Inputs `args` refer to, plus those the output contracts read.
    pub fn input_names(&self) -> BTreeSet<String> {
        let mut names = template::parse_all(&self.args)
            .map(|t| template::inputs_of(&t))
            .unwrap_or_default();
        for o in &self.outputs {
            if let Some(c) = contract::contract(&o.contract) {
                names.extend(c.needs.iter().map(|n| n.to_string()));
            }
        }
        names
    }
}

/// The stage.
pub struct CommandStage;

impl Stage for CommandStage {
    const NAME: &'static str = "command";
    // 2: a `proposals` output carries the heuristic's label, params and budgeted.
    const VERSION: u32 = 2;
    type Params = CommandParams;

    fn input_names(p: &CommandParams) -> Vec<String> {
        p.input_names().into_iter().collect()
    }

    fn validate(p: CommandParams) -> Result<CommandParams, BoxError> {
        Ok(p.validated()?)
    }

    fn location_params() -> &'static [&'static str] {
        &["program", "script", "timeout"]
    }

    fn fingerprints(p: &CommandParams) -> Result<BTreeMap<String, ArtifactId>, BoxError> {
        let mut out = BTreeMap::new();
        if let Some(s) = &p.script {
            let id = fingerprint::script(std::path::Path::new(s))
                .map_err(|e| format!("script = {s:?}: {e}"))?;
            out.insert(SCRIPT_FINGERPRINT.to_owned(), id);
        }
        let program = program::resolve(&p.program).map_err(|e| format!("program = {e}"))?;
        let (id, _) = fingerprint::interpreter(&program, &p.version_args)?;
        out.insert(INTERPRETER_FINGERPRINT.to_owned(), id);
        Ok(out)
    }

    fn run(
        p: &CommandParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        Ok(run(p, inputs, out)?)
    }
}

fn absolute(path: &std::path::Path) -> Result<PathBuf, CommandError> {
    std::path::absolute(path).map_err(|e| CommandError::Setup(format!("{}: {e}", path.display())))
}

/// Runs the program in a private directory of the store, checks every declared output
/// against its contract and writes the checked files into `out`.
pub fn run(
    p: &CommandParams,
    inputs: &BTreeMap<String, Artifact>,
    out: &Publisher,
) -> Result<BTreeMap<String, Value>, CommandError> {
    let program =
        program::resolve(&p.program).map_err(|e| CommandError::Setup(format!("program = {e}")))?;
    let (_, interpreter) =
        fingerprint::interpreter(&program, &p.version_args).map_err(CommandError::Setup)?;
    let script = match &p.script {
        Some(s) => Some(absolute(std::path::Path::new(s))?),
        None => None,
    };
    let mut dirs = BTreeMap::new();
    for (name, a) in inputs {
        dirs.insert(name.clone(), absolute(a.dir())?);
    }
    // The program's private directory: in the store's tmp/, removed when dropped (or by the
    // next process that opens the store, after a kill). It is never published itself.
    let scratch = out.store().begin()?;
    let work = absolute(scratch.dir())?;

    let templates = template::parse_all(&p.args).map_err(CommandError::Setup)?;
    let bindings = template::Bindings {
        out: &work,
        script: script.as_deref(),
        inputs: &dirs,
    };
    let args = templates.iter().map(|t| t.render(bindings)).collect();
    let mut env = vec![
        ("GRAFT_OUT".to_owned(), work.clone().into_os_string()),
        ("PYTHONDONTWRITEBYTECODE".to_owned(), "1".into()),
        ("PYTHONUNBUFFERED".to_owned(), "1".into()),
    ];
    if let Some(s) = &script {
        env.push(("GRAFT_SCRIPT".to_owned(), s.clone().into_os_string()));
    }
    for (name, dir) in &dirs {
        let var = format!(
            "GRAFT_INPUT_{}",
            name.to_ascii_uppercase().replace('-', "_")
        );
        env.push((var, dir.clone().into_os_string()));
    }
    let inv = program::Invocation {
        program: program.clone(),
        args,
        cwd: work.clone(),
        env,
        timeout: Duration::from_secs_f64(p.timeout),
        echo: true,
    };
    let finished = program::run(&inv)?;

    let wrote = || {
        let mut names: Vec<String> = std::fs::read_dir(&work)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        if names.is_empty() {
            "nothing".to_owned()
        } else {
            names.join(", ")
        }
    };
    let mut summaries = serde_json::Map::new();
    for (index, o) in p.outputs.iter().enumerate() {
        let src = work.join(&o.file);
        if !src.is_file() {
            return Err(CommandError::Missing {
                index,
                file: o.file.clone(),
                wrote: wrote(),
            });
        }
        let c = contract::contract(&o.contract).ok_or_else(|| {
            CommandError::Setup(format!(
                "outputs[{index}].contract = {:?} is not a contract",
                o.contract
            ))
        })?;
        let label = format!("{} (outputs[{index}], contract {})", o.file, c.name);
        let dst = out.file(&o.file);
        let check = contract::Check {
            src: &src,
            label: &label,
            inputs: &dirs,
            bottleneck: p.bottleneck,
            dst: &dst,
        };
        let summary = (c.check)(&check)?;
        eprintln!("command: {} meets contract {}: {summary}", o.file, c.name);
        summaries.insert(o.file.clone(), summary);
    }
    drop(scratch);
    Ok([
        ("program_seconds".to_owned(), json!(finished.seconds)),
        ("interpreter".to_owned(), json!(interpreter)),
        ("outputs".to_owned(), Value::Object(summaries)),
    ]
    .into())
}
