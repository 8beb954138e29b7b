//! The stage protocol every stage binary speaks, so that running a stage by hand and running
//! it from the pipeline runner do the same thing.
//!
//! A stage implements [`Stage`]: a name, an implementation version, a typed parameter struct
//! (unknown fields rejected), the names of its input artifacts and a `run` that writes files
//! into a [`graft_store::Publisher`]. [`execute`] does the rest: parses [`StageArgs`], computes
//! the [`graft_store::StageKey`], and through [`graft_store::Store::ensure`] takes the key's
//! lock, finds the artifact or runs and publishes (a corrupt one is moved aside with a warning
//! and rebuilt), then says why it ran ([`rerun_reasons`]) and records the slot.

mod reasons;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use graft_store::{
    Access, Artifact, ArtifactId, Before, KeyInput, Lookup, PublishInfo, SlotRecord, StageKey,
    Store, StoreError, holders_text,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use reasons::rerun_reasons;

/// Boxed error of a stage's own work.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One pipeline stage.
pub trait Stage {
    /// Stage name: the key's stage field; the binary is `graft-<NAME>`.
    const NAME: &'static str;
    /// Bump when the stage's output for the same parameters and inputs would change.
    const VERSION: u32;
    /// Parameters; deserialised with unknown fields rejected and defaults filled in.
    type Params: Serialize + DeserializeOwned;

    /// Names of the input artifacts the stage needs with these parameters.
    fn input_names(params: &Self::Params) -> Vec<String>;

    /// Checks the parameters beyond their types and fills in defaults that depend on other
    /// parameters; cheap, touches nothing.
    fn validate(params: Self::Params) -> Result<Self::Params, BoxError>;

    /// Whether the answer for these parameters depends on the tensor backend the stage's
    /// binary was built with (a CUDA device: whether the build has one, how many devices it
    /// sees). A front that links the stage's library with another backend
    /// ([`execute_or_delegate`] with `delegate`, `graft-front`) hands such a call to the
    /// stage's own binary, `--check` and `--status` included. None do by default.
    fn backend_decides(_params: &Self::Params) -> bool {
        false
    }

    /// What to do once a run is known to have work (its output is not in the store, or
    /// `--force`), before [`Stage::run`] starts and before anything touches a tensor: a
    /// tensor stage computing in bf16 on the CPU executes its binary again there with the
    /// machine's own CPU kernels (`graft_backend::numerics::native_for_bf16`; the store's
    /// lock, opened close-on-exec, is let go and taken again). Nothing by default.
    fn before_work(_params: &Self::Params) -> Option<fn()> {
        None
    }

    /// Parameter names that say where something is, not what it is (a directory path).
    /// They are recorded in the manifest but left out of the key; the content they point
    /// at enters the key through [`Stage::fingerprints`].
    fn location_params() -> &'static [&'static str] {
        &[]
    }

    /// The location parameters for these parameters, where they depend on them (a name
    /// that locates data for one source and defines it for another); by default
    /// [`Stage::location_params`].
    fn location_params_of(_params: &Self::Params) -> Vec<&'static str> {
        Self::location_params().to_vec()
    }

    /// The `device` parameter of a stage that computes with tensors (`cpu`, `cuda`,
    /// `cuda:k`), whose class enters the key ([`device_class`]); `None` for the others.
    fn device(_params: &Self::Params) -> Option<&str> {
        None
    }

    /// Content fingerprints of external data (name -> blake3), added to the key's inputs.
    fn fingerprints(_params: &Self::Params) -> Result<BTreeMap<String, ArtifactId>, BoxError> {
        Ok(BTreeMap::new())
    }

    /// Does the work: reads `inputs`, writes files into `out`, returns manifest extras.
    fn run(
        params: &Self::Params,
        inputs: &BTreeMap<String, Artifact>,
        out: &graft_store::Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError>;
}

/// Command-line arguments shared by every stage binary.
#[derive(Debug, Clone, Args)]
pub struct StageArgs {
    /// The artifact store.
    #[arg(long, env = "GRAFT_STORE", default_value = "artifacts")]
    pub store: PathBuf,
    /// A parameter, `key=value`; the value is read as TOML (`3`, `0.5`, `"text"`, `[1, 2]`)
    /// or taken as a plain string. Repeatable; applied after `--params-json`.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// Worker processes, for stages that fan out (sets the `jobs` parameter).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// `cpu`, `cuda` or `cuda:k`, for stages that use tensors (sets the `device` parameter).
    #[arg(long)]
    pub device: Option<String>,
    /// All parameters as one JSON object (what the pipeline runner passes).
    #[arg(long, value_name = "JSON")]
    pub params_json: Option<String>,
    /// An input artifact, `name=id`. Repeatable.
    #[arg(short = 'i', long = "input", value_name = "NAME=ID")]
    pub inputs: Vec<String>,
    /// Name under which this run is remembered, to explain the next rerun
    /// (the runner uses `<pipeline>/<stage>`). Defaults to the stage name.
    #[arg(long)]
    pub slot: Option<String>,
    /// Only check parameters and inputs; touch nothing.
    #[arg(long, conflicts_with = "status")]
    pub check: bool,
    /// Say whether the stage is fresh, or why it would run, without running it.
    #[arg(long)]
    pub status: bool,
    /// Run even when fresh.
    #[arg(long)]
    pub force: bool,
    /// Print the outcome as one JSON object on stdout (an error too, as `{"failure": ...}`).
    #[arg(long)]
    pub json: bool,
}

impl StageArgs {
    /// A plain run on `store` with all parameters as one JSON object and `inputs`
    /// (`name=id`), as the runner passes them: what a test that runs a stage in its own
    /// process needs.
    pub fn run_json(store: &std::path::Path, params: &Value, inputs: &[String]) -> StageArgs {
        StageArgs {
            store: store.to_path_buf(),
            params: Vec::new(),
            jobs: None,
            device: None,
            params_json: Some(params.to_string()),
            inputs: inputs.to_vec(),
            slot: None,
            check: false,
            status: false,
            force: false,
            json: false,
        }
    }
}

/// Errors of the protocol; the stage's own errors arrive as [`StageError::Run`].
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// `field` is the parameter's path (`image_size`, `heuristics[2].gamma`) when known.
    #[error(
        "{stage}: bad parameter{}: {message}",
        field.as_deref().map(|f| format!(" {f}")).unwrap_or_default()
    )]
    Params {
        stage: &'static str,
        field: Option<String>,
        message: String,
    },
    #[error("{stage}: bad input {arg:?}: {message}")]
    Input {
        stage: &'static str,
        arg: String,
        message: String,
    },
    #[error("{stage}: {error}")]
    Store {
        stage: &'static str,
        #[source]
        error: StoreError,
    },
    #[error("{stage}: {error}")]
    Run {
        stage: &'static str,
        #[source]
        error: BoxError,
    },
}

impl StageError {
    /// The error as the runner reads it: what part of the stage's entry in a pipeline file
    /// it is about, so the runner can name `stages.<name>.params.<field>`.
    pub fn failure(&self) -> Failure {
        let (at, message) = match self {
            StageError::Params { field, message, .. } => (
                Some(match field {
                    Some(f) if f.starts_with('[') => format!("params{f}"),
                    Some(f) => format!("params.{f}"),
                    None => "params".to_owned(),
                }),
                message.clone(),
            ),
            StageError::Input { arg, message, .. } => {
                let name = arg.split_once('=').map_or(arg.as_str(), |(n, _)| n);
                (Some(format!("inputs.{name}")), message.clone())
            }
            StageError::Store { error, .. } => (None, error_line(error)),
            StageError::Run { error, .. } => (None, error_line(error.as_ref())),
        };
        let stage = match self {
            StageError::Params { stage, .. }
            | StageError::Input { stage, .. }
            | StageError::Store { stage, .. }
            | StageError::Run { stage, .. } => stage,
        };
        Failure {
            stage: (*stage).to_owned(),
            at,
            message,
        }
    }
}

/// A stage's error as one JSON object on stdout (with `--json`), for the runner:
/// `{"failure": {"stage": "prep", "at": "params.image_size", "message": "invalid type: ..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub stage: String,
    /// `params`, `params.<path>` or `inputs.<name>`; none for errors of the run itself.
    pub at: Option<String>,
    pub message: String,
}

/// An error and its sources as one line, leaving out a source whose text the line already
/// holds (errors that print their source themselves would otherwise repeat it).
pub fn error_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = e.source();
    }
    line
}

/// Runs `f`; a panic inside it (on this thread, or propagated from a pool thread) becomes
/// `Err` with one line: the panic message's first line and where it happened. The whole
/// message and a backtrace go to stderr only when `RUST_BACKTRACE` is set.
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        let message = panic_text(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let verbose = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        if verbose {
            eprintln!(
                "panic{at}: {message}\n{}",
                std::backtrace::Backtrace::force_capture()
            );
        }
        let first = message
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("(no message)");
        let first: String = first.chars().take(400).collect();
        let line = format!(
            "internal error: {first} (panic{at}{})",
            if verbose {
                ""
            } else {
                "; RUST_BACKTRACE=1 prints all of it"
            }
        );
        if let Ok(mut slot) = FIRST.lock() {
            slot.get_or_insert(line);
        }
    }));
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|payload| {
        FIRST
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or_else(|| format!("internal error: {}", panic_text(payload.as_ref())))
    })
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(not a text)".to_owned()
    }
}

/// What happened to a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The store already held the output for this key.
    Fresh,
    /// It ran and published.
    Ran,
    /// `--status`: it would run.
    Stale,
    /// `--check`: the parameters and inputs are valid.
    Checked,
}

/// The outcome of one stage invocation, printed as one line (or JSON with `--json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub stage: String,
    pub slot: String,
    pub status: Status,
    pub reasons: Vec<String>,
    pub key: Option<StageKey>,
    pub artifact: Option<ArtifactId>,
    pub seconds: f64,
    /// Problems that did not stop the stage (a corrupt artifact that was rebuilt).
    pub warnings: Vec<String>,
}

impl Outcome {
    /// The one human line: `prep  ran  1.20 s  (params.seed changed 0 -> 3)  -> 3fa2c9e1b2d4`.
    pub fn line(&self, name_width: usize) -> String {
        let status = match self.status {
            Status::Fresh => "fresh",
            Status::Ran => "ran",
            Status::Stale => "stale",
            Status::Checked => "ok",
        };
        let mut s = format!(
            "{:<name_width$}  {status:<5}  {:>7.2} s",
            self.slot, self.seconds
        );
        if !self.reasons.is_empty() {
            s.push_str(&format!("  ({})", self.reasons.join("; ")));
        }
        if let Some(id) = &self.artifact {
            s.push_str(&format!("  -> {}", id.short()));
        }
        s
    }
}

/// Parses `key=value` pairs; the value is TOML when it parses as TOML, else a string.
pub fn parse_assignment(arg: &str) -> Option<(String, Value)> {
    let (k, v) = arg.split_once('=')?;
    let k = k.trim();
    if k.is_empty() {
        return None;
    }
    Some((k.to_owned(), parse_value(v.trim())))
}

/// A command-line value: TOML if it parses (`3`, `true`, `[1, 2]`, `"s"`), else a plain string.
pub fn parse_value(v: &str) -> Value {
    let doc = format!("v = {v}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(Value::Null),
        Err(_) => Value::String(v.to_owned()),
    }
}

/// The parameter behind an error that serde reports at the top level: a field of a
/// `#[serde(flatten)]`ed struct (the training protocol) is read after the others, out of
/// `serde_path_to_error`'s sight. The field is the one whose removal changes the error;
/// `None` when no single field does (a missing or an unknown field).
fn flattened_field<P: serde::de::DeserializeOwned>(
    obj: &serde_json::Map<String, Value>,
    message: &str,
) -> Option<String> {
    if message.starts_with("unknown field") || message.starts_with("missing field") {
        return None;
    }
    obj.keys()
        .find(|k| {
            let mut rest = obj.clone();
            rest.remove(*k);
            match serde_json::from_value::<P>(Value::Object(rest)) {
                Ok(_) => true,
                Err(e) => e.to_string() != message,
            }
        })
        .cloned()
}

/// The class of a `device` parameter: `cpu` or `cuda`, without the index (`cuda:1` is
/// `cuda`). Devices of one class compute the same numbers from the same weights; the CPU
/// and a GPU do not (other kernels, other orders of sums), so the class is part of what a
/// stage with tensors computes, while the index and the executor only say where it ran.
pub fn device_class(device: &str) -> &str {
    let device = device.trim();
    device.split_once(':').map_or(device, |(class, _)| class)
}

/// The key parameter a device adds to a key: `device_class = "cuda"`, and nothing for the
/// CPU, so that the keys of CPU runs are those they had before the class entered keys (as
/// `protocol = "select"` is left out of a fine-tune run's key).
pub fn device_key_param(device: &str) -> Option<(&'static str, Value)> {
    match device_class(device) {
        "cpu" => None,
        class => Some(("device_class", Value::from(class))),
    }
}

/// `params` as the manifest and the slot record them: every parameter, serialised.
pub fn recorded_params<S: Stage>(params: &S::Params) -> Result<BTreeMap<String, Value>, String> {
    match serde_json::to_value(params) {
        Ok(Value::Object(m)) => Ok(m.into_iter().collect()),
        _ => Err("parameters must serialise to a table".into()),
    }
}

/// What of the `recorded` parameters enters `S`'s key: all of them but the location
/// parameters, plus the class of the stage's device when it is not the CPU
/// ([`device_key_param`]).
pub fn key_params<S: Stage>(
    params: &S::Params,
    recorded: &BTreeMap<String, Value>,
) -> BTreeMap<String, Value> {
    let mut canonical = recorded.clone();
    for name in S::location_params_of(params) {
        canonical.remove(name);
    }
    if let Some((name, class)) = S::device(params).and_then(device_key_param) {
        canonical.insert(name.to_owned(), class);
    }
    canonical
}

struct Resolved<P> {
    params: P,
    canonical: BTreeMap<String, Value>,
    recorded: BTreeMap<String, Value>,
    input_ids: BTreeMap<String, ArtifactId>,
}

/// The error of a parameter check that names no field.
fn param_error<S: Stage>(message: String) -> StageError {
    StageError::Params {
        stage: S::NAME,
        field: None,
        message,
    }
}

/// The parameters of `args` (`--params-json`, then `-p`, `--jobs`, `--device`), typed but
/// not yet validated.
fn parse_params<S: Stage>(args: &StageArgs) -> Result<S::Params, StageError> {
    let perr = param_error::<S>;
    let mut obj = match &args.params_json {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(perr("--params-json must be a JSON object".into())),
            Err(e) => return Err(perr(format!("--params-json: {e}"))),
        },
        None => serde_json::Map::new(),
    };
    for p in &args.params {
        let (k, v) = parse_assignment(p).ok_or_else(|| perr(format!("{p:?} is not KEY=VALUE")))?;
        obj.insert(k, v);
    }
    if let Some(jobs) = args.jobs {
        obj.insert("jobs".into(), Value::from(jobs));
    }
    if let Some(device) = &args.device {
        obj.insert("device".into(), Value::from(device.clone()));
    }
    serde_path_to_error::deserialize(Value::Object(obj.clone())).map_err(|e| {
        let field = e.path().to_string();
        let message = e.into_inner().to_string();
        let field = match field.as_str() {
            "." => flattened_field::<S::Params>(&obj, &message),
            _ => Some(field),
        };
        StageError::Params {
            stage: S::NAME,
            field,
            message,
        }
    })
}

/// Validates `params` and resolves the inputs of `args`.
fn resolve<S: Stage>(
    args: &StageArgs,
    params: S::Params,
) -> Result<Resolved<S::Params>, StageError> {
    let perr = param_error::<S>;
    let params = S::validate(params).map_err(|e| perr(e.to_string()))?;
    let recorded = recorded_params::<S>(&params).map_err(perr)?;
    let canonical = key_params::<S>(&params, &recorded);

    let mut input_ids = BTreeMap::new();
    for arg in &args.inputs {
        let ierr = |message: String| StageError::Input {
            stage: S::NAME,
            arg: arg.clone(),
            message,
        };
        let (name, id) = arg
            .split_once('=')
            .ok_or_else(|| ierr("expected NAME=ID".into()))?;
        let id = ArtifactId::parse(id.trim()).map_err(|e| ierr(e.to_string()))?;
        input_ids.insert(name.trim().to_owned(), id);
    }
    let wanted = S::input_names(&params);
    for name in &wanted {
        if !input_ids.contains_key(name) {
            return Err(StageError::Input {
                stage: S::NAME,
                arg: name.to_string(),
                message: format!("missing; pass it with --input {name}=<artifact id>"),
            });
        }
    }
    if let Some(extra) = input_ids.keys().find(|k| !wanted.contains(k)) {
        return Err(StageError::Input {
            stage: S::NAME,
            arg: extra.clone(),
            message: format!(
                "not an input of {} (expected: {})",
                S::NAME,
                wanted.join(", ")
            ),
        });
    }
    Ok(Resolved {
        params,
        canonical,
        recorded,
        input_ids,
    })
}

/// Runs the stage protocol for `S` with `args`.
pub fn execute<S: Stage>(args: &StageArgs) -> Result<Outcome, StageError> {
    execute_or_delegate::<S>(args, false).map(|o| o.expect("never delegated"))
}

/// [`execute`], except that with `delegate` it returns `None` before doing anything when
/// the stage's own binary must answer: a run with work to do (the output not in the store,
/// or `--force`), and any call whose answer depends on the binary's tensor backend
/// ([`Stage::backend_decides`]). `--check`, `--status` and a fresh run are answered here
/// otherwise. A front binary that links the stage's library with another backend
/// (`graft-front`, built with flex) uses it to spare a fresh stage the backend's start-up,
/// and hands the rest to the stage's own binary.
pub fn execute_or_delegate<S: Stage>(
    args: &StageArgs,
    delegate: bool,
) -> Result<Option<Outcome>, StageError> {
    let start = Instant::now();
    let slot = args.slot.clone().unwrap_or_else(|| S::NAME.to_owned());
    let params = parse_params::<S>(args)?;
    if delegate && S::backend_decides(&params) {
        return Ok(None);
    }
    let r = resolve::<S>(args, params)?;
    let mut outcome = Outcome {
        stage: S::NAME.to_owned(),
        slot: slot.clone(),
        status: Status::Checked,
        reasons: Vec::new(),
        key: None,
        artifact: None,
        seconds: 0.0,
        warnings: Vec::new(),
    };
    if args.check {
        outcome.seconds = start.elapsed().as_secs_f64();
        return Ok(Some(outcome));
    }
    let serr = |error| StageError::Store {
        stage: S::NAME,
        error,
    };
    let store = Store::open(&args.store).map_err(serr)?;
    // Held while the stage verifies its inputs, looks up, runs and publishes (by hand too):
    // `gc --yes` waits for it, so it never deletes an entry the stage has looked up or
    // published. `--status` only reads.
    let _lock = if args.status {
        None
    } else {
        let wait = |h: &[graft_store::StoreHolder]| {
            eprintln!(
                "{}: waiting for {} to finish with the store",
                S::NAME,
                holders_text(h)
            )
        };
        Some(
            store
                .lock_store(Access::Shared, &format!("stage {slot}"), wait)
                .map_err(serr)?,
        )
    };

    // Inputs must exist and verify before anything is decided.
    let mut inputs = BTreeMap::new();
    for (name, id) in &r.input_ids {
        let artifact = store.artifact(id).map_err(|e| StageError::Input {
            stage: S::NAME,
            arg: format!("{name}={id}"),
            message: e.to_string(),
        })?;
        inputs.insert(name.clone(), artifact);
    }
    let mut key_inputs = r.input_ids.clone();
    let fingerprints = S::fingerprints(&r.params).map_err(|source| StageError::Run {
        stage: S::NAME,
        error: source,
    })?;
    for (name, fp) in fingerprints {
        key_inputs.insert(name, fp);
    }
    let key = KeyInput {
        stage: S::NAME,
        stage_version: S::VERSION,
        params: &r.canonical,
        inputs: &key_inputs,
    }
    .key();
    outcome.key = Some(key.clone());

    let previous = store.read_slot(&slot).map_err(serr)?;
    let previous_reasons = || {
        rerun_reasons(
            previous.as_ref(),
            S::VERSION,
            &r.recorded,
            &key_inputs,
            &key,
        )
    };
    if args.status {
        // Read-only: a corrupt artifact is reported, and moved aside by the next run.
        let reasons = match store.lookup(&key).map_err(serr)? {
            Lookup::Hit(artifact) => {
                outcome.status = Status::Fresh;
                outcome.artifact = Some(artifact.id().clone());
                Vec::new()
            }
            Lookup::Corrupt(c) => {
                outcome.warnings.push(c.to_string());
                vec!["output corrupt".to_owned()]
            }
            Lookup::Missing { id } => vec![format!("output {} missing from the store", id.short())],
            Lookup::Miss => previous_reasons(),
        };
        if outcome.status != Status::Fresh {
            outcome.status = Status::Stale;
        }
        outcome.reasons = reasons;
        outcome.seconds = start.elapsed().as_secs_f64();
        return Ok(Some(outcome));
    }
    let work = || -> Result<bool, StageError> {
        Ok(args.force || !matches!(store.lookup(&key).map_err(serr)?, Lookup::Hit(_)))
    };
    if delegate && work()? {
        return Ok(None);
    }
    if let Some(prepare) = S::before_work(&r.params)
        && work()?
    {
        prepare();
    }

    let ensured = store
        .ensure(&key, args.force, |_, publisher| {
            let extra = S::run(&r.params, &inputs, publisher).map_err(|source| {
                Halt::Stage(StageError::Run {
                    stage: S::NAME,
                    error: source,
                })
            })?;
            Ok(PublishInfo {
                stage: S::NAME,
                stage_version: S::VERSION,
                key: &key,
                params: &r.recorded,
                inputs: &key_inputs,
                extra,
                wall_seconds: start.elapsed().as_secs_f64(),
            })
        })
        .map_err(|h| match h {
            Halt::Stage(e) => e,
            Halt::Store(error) => serr(error),
        })?;
    let id = ensured.artifact.id().clone();
    outcome.warnings.extend(ensured.warnings());
    outcome.reasons = match &ensured.before {
        Before::Found => Vec::new(),
        Before::Forced => vec!["forced".to_owned()],
        Before::Corrupt(_) => vec!["output corrupt".to_owned()],
        Before::Missing(id) => vec![format!("output {} missing from the store", id.short())],
        Before::Never => previous_reasons(),
    };
    outcome.status = if ensured.built() {
        Status::Ran
    } else {
        Status::Fresh
    };
    let record = slot_record::<S>(&key, &r, &key_inputs, &id);
    if previous.as_ref() != Some(&record) {
        store.write_slot(&slot, &record).map_err(serr)?;
    }
    outcome.artifact = Some(id);
    outcome.seconds = start.elapsed().as_secs_f64();
    Ok(Some(outcome))
}

/// Why [`Store::ensure`] stopped inside `execute`: the stage's own error or the store's.
enum Halt {
    Stage(StageError),
    Store(StoreError),
}

impl From<StoreError> for Halt {
    fn from(e: StoreError) -> Halt {
        Halt::Store(e)
    }
}

fn slot_record<S: Stage>(
    key: &StageKey,
    r: &Resolved<S::Params>,
    inputs: &BTreeMap<String, ArtifactId>,
    id: &ArtifactId,
) -> SlotRecord {
    SlotRecord {
        stage: S::NAME.to_owned(),
        stage_version: S::VERSION,
        key: key.clone(),
        params: r.recorded.clone(),
        inputs: inputs.clone(),
        artifact: id.clone(),
    }
}

/// Prints an outcome the way every stage binary does: warnings to stderr, then one line
/// (or one JSON object with `--json`) to stdout.
pub fn print_outcome(outcome: &Outcome, json: bool) {
    for w in &outcome.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        println!("{}", serde_json::to_string(outcome).unwrap_or_default());
    } else {
        println!("{}", outcome.line(outcome.slot.len()));
    }
}

#[derive(clap::Parser)]
struct StageCli {
    #[command(flatten)]
    stage: StageArgs,
}

/// The whole `main` of a stage binary `graft-<NAME>`: parses [`StageArgs`], runs
/// [`execute`], prints the outcome, and maps errors to `error: ...` and exit code 1.
pub fn main<S: Stage>(about: &'static str) -> std::process::ExitCode {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    main_with::<S>(about, argv, None)
}

/// The `main` of a front for stage `S` (see [`execute_or_delegate`]): `argv` as the stage's
/// own binary would get it; when there is work to do or the answer is the backend's,
/// `delegate` runs that binary with the same arguments and its exit code is the front's.
pub fn front_main<S: Stage>(
    about: &'static str,
    argv: Vec<std::ffi::OsString>,
    delegate: &dyn Fn() -> std::process::ExitCode,
) -> std::process::ExitCode {
    main_with::<S>(about, argv, Some(delegate))
}

fn main_with<S: Stage>(
    about: &'static str,
    argv: Vec<std::ffi::OsString>,
    delegate: Option<&dyn Fn() -> std::process::ExitCode>,
) -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = StageCli::command()
        .name(&*Box::leak(format!("graft-{}", S::NAME).into_boxed_str()))
        .about(about)
        .version(graft_store::PROGRAM_VERSION)
        .get_matches_from(argv);
    let cli = match StageCli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match catch_panic(|| execute_or_delegate::<S>(&cli.stage, delegate.is_some())) {
        Ok(Ok(Some(outcome))) => {
            print_outcome(&outcome, cli.stage.json);
            std::process::ExitCode::SUCCESS
        }
        Ok(Ok(None)) => match delegate {
            Some(d) => d(),
            None => unreachable!("execute_or_delegate delegates only when asked"),
        },
        // With `--json` the error goes to stdout as a `Failure`, which the runner reports
        // against the pipeline file; without it, to stderr as one line.
        Ok(Err(e)) if cli.stage.json => {
            println!("{}", serde_json::json!({ "failure": e.failure() }));
            std::process::ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("error: {}", error_line(&e));
            std::process::ExitCode::FAILURE
        }
        Err(panic) if cli.stage.json => {
            let failure = Failure {
                stage: S::NAME.to_owned(),
                at: None,
                message: panic,
            };
            println!("{}", serde_json::json!({ "failure": failure }));
            std::process::ExitCode::FAILURE
        }
        Err(panic) => {
            eprintln!("error: {}: {panic}", S::NAME);
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{path}: {source}")]
    struct WithPath {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn an_error_line_does_not_repeat_a_source() {
        let e = WithPath {
            path: "x.toml",
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        };
        assert_eq!(error_line(&e), "x.toml: no such file");
        let boxed: BoxError = Box::new(e);
        let outer = StageError::Run {
            stage: "prep",
            error: boxed,
        };
        assert_eq!(error_line(&outer), "prep: x.toml: no such file");
    }

    /// A panic becomes one line with its first line and place; the rest of a long message
    /// (LibTorch's C++ backtrace) stays out of it.
    #[test]
    fn a_panic_is_one_error_line() {
        let e = catch_panic(|| -> u32 { panic!("no CUDA device\nframe 1\nframe 2") }).unwrap_err();
        assert!(
            e.starts_with("internal error: no CUDA device (panic at "),
            "{e}"
        );
        assert!(e.contains("src/lib.rs:") && !e.contains("frame"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(catch_panic(|| 7), Ok(7));
        // A panic on another thread that reaches this one: its own message is the line.
        let e = catch_panic(|| {
            std::thread::scope(|s| {
                s.spawn(|| panic!("in a worker thread"));
            })
        })
        .unwrap_err();
        assert!(
            e.starts_with("internal error: in a worker thread (panic at "),
            "{e}"
        );
    }

    #[test]
    fn failures_name_where_in_the_pipeline_entry() {
        let e = StageError::Params {
            stage: "prep",
            field: Some("image_size".into()),
            message: "invalid type".into(),
        };
        assert_eq!(
            e.to_string(),
            "prep: bad parameter image_size: invalid type"
        );
        assert_eq!(e.failure().at.as_deref(), Some("params.image_size"));
        let e = StageError::Input {
            stage: "probe",
            arg: "dataset=abc".into(),
            message: "bad id".into(),
        };
        assert_eq!(e.failure().at.as_deref(), Some("inputs.dataset"));
    }

    /// A stage with a device: its class enters the key (issue 27), its index does not, and
    /// the CPU's keys are those the stage had before (no `device_class` entry).
    #[test]
    fn the_device_class_enters_the_key_and_the_index_does_not() {
        #[derive(Serialize, Deserialize)]
        struct P {
            seed: u64,
            device: String,
        }
        struct S;
        impl Stage for S {
            const NAME: &'static str = "s";
            const VERSION: u32 = 1;
            type Params = P;
            fn input_names(_: &P) -> Vec<String> {
                Vec::new()
            }
            fn validate(p: P) -> Result<P, BoxError> {
                Ok(p)
            }
            fn location_params() -> &'static [&'static str] {
                &["device"]
            }
            fn device(p: &P) -> Option<&str> {
                Some(&p.device)
            }
            fn run(
                _: &P,
                _: &BTreeMap<String, Artifact>,
                _: &graft_store::Publisher,
            ) -> Result<BTreeMap<String, Value>, BoxError> {
                Ok(BTreeMap::new())
            }
        }
        let key = |device: &str| {
            let p = P {
                seed: 3,
                device: device.into(),
            };
            let recorded = recorded_params::<S>(&p).unwrap();
            assert_eq!(recorded["device"], device, "the manifest keeps the device");
            let params = key_params::<S>(&p, &recorded);
            KeyInput {
                stage: S::NAME,
                stage_version: S::VERSION,
                params: &params,
                inputs: &BTreeMap::new(),
            }
            .key()
        };
        let seed_only: BTreeMap<String, Value> = [("seed".to_owned(), Value::from(3))].into();
        let before = KeyInput {
            stage: S::NAME,
            stage_version: S::VERSION,
            params: &seed_only,
            inputs: &BTreeMap::new(),
        }
        .key();
        assert_eq!(key("cpu"), before);
        assert_ne!(key("cuda"), key("cpu"));
        assert_eq!(key("cuda:0"), key("cuda"));
        assert_eq!(key("cuda:1"), key("cuda:0"));
        assert_eq!(device_class("cuda:1"), "cuda");
        assert_eq!(device_class("cpu"), "cpu");
    }

    #[test]
    fn a_bad_field_of_a_flattened_struct_is_named() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Outer {
            #[serde(default)]
            name: String,
            #[serde(flatten)]
            inner: Inner,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Inner {
            #[serde(default)]
            epochs: usize,
        }
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        };
        let bad = obj(serde_json::json!({"name": "x", "epochs": "ten"}));
        let e =
            serde_path_to_error::deserialize::<_, Outer>(Value::Object(bad.clone())).unwrap_err();
        // What this function is for: serde_path_to_error loses the field here.
        assert_eq!(e.path().to_string(), ".");
        let message = e.into_inner().to_string();
        assert_eq!(
            flattened_field::<Outer>(&bad, &message).as_deref(),
            Some("epochs")
        );
        let unknown = obj(serde_json::json!({"epochs": 3, "bogus": 1}));
        let message = serde_json::from_value::<Outer>(Value::Object(unknown.clone()))
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("unknown field `bogus`"), "{message}");
        assert_eq!(flattened_field::<Outer>(&unknown, &message), None);
    }
}
