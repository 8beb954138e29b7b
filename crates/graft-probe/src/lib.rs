//! The probe stage (spec section 2): one forward and one backward pass per probe batch give
//! the activations X_i and the loss gradients Δ_j at every node, and from them the gradient
//! G_ij = Δ_jᵀ X_i that a zero-initialised full-rank map on edge (i, j) would receive, for
//! all n² edges at once (recurrent included). Never one backward pass per edge.
//!
//! Principal items: [`Probe`] (the [`Stage`]), [`edge_gradients`] (the one-pass gradients,
//! on the device), [`scores`] (singular values and scores per edge, on the host with faer,
//! rayon across edges).
//!
//! Decisions behind the shape:
//! - All n² blocks come from one matrix product per batch: with the Δ_j and X_i of a batch
//!   laid side by side as `[rows, n·d]`, Δᵀ X is `[n·d, n·d]` and its (j, i) block is G_ij.
//! - The head that makes the loss is fitted by a short linear probe on frozen features,
//!   cached as its own store entry (stage `probe-head`), or random; the artifact says which.
//! - When the probe has fewer rows than the width (class token only), singular values come
//!   from an m×m core per edge after one thin QR per node (exact; see [`scores`]).
//! - A failed trace or SVD is a [`ProbeError`] naming the batch or edge, never a zero score.
//! - Timings (forward/backward, SVD, one training step) go to the manifest only, so a rerun
//!   reproduces the artifact id and the stages after it stay fresh.

pub mod scores;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor};
use graft_backend::gram::{GramSum, HostMatrix};
use graft_graph::Edge;
use graft_model::{Precision, Trainable, Vit, VitConfig};
use graft_stage::{BoxError, Stage};
use graft_store::{Artifact, ArtifactId, KeyInput, PublishInfo, Publisher, Store};
use graft_tables::{ModelInfo, ProbeCost, ProbeRow, Table};
use graft_train::{DatasetInfo, Preprocessing, Split, TrainConfig};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use scores::TolRule;

/// Which tokens' rows enter X_i and Δ_j.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tokens {
    All,
    Cls,
}

/// The head used for the probe loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Head {
    /// Fitted by a short linear probe on the frozen backbone (cached step).
    LinearProbe,
    /// The randomly initialised head, seeded.
    Random,
}

/// Parameters of the probe stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeParams {
    /// Images per probe batch.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Probe batches (gradients are summed over them).
    #[serde(default = "default_batches")]
    pub batches: usize,
    #[serde(default = "default_tokens")]
    pub tokens: Tokens,
    #[serde(default = "default_tol_rule")]
    pub tol_rule: TolRule,
    /// Relative tolerance of the numerical rank (rule `relative`).
    #[serde(default = "default_tol")]
    pub tol: f64,
    #[serde(default = "default_head")]
    pub head: Head,
    /// Epochs of the linear probe that fits the head.
    #[serde(default = "default_head_epochs")]
    pub head_epochs: usize,
    #[serde(default = "default_head_lr")]
    pub head_lr: f64,
    #[serde(default)]
    pub seed: u64,
    /// A timm ViT safetensors file instead of a `base` input artifact (location).
    #[serde(default)]
    pub checkpoint: Option<String>,
    /// The base model's preset; read from the base artifact when it has one.
    #[serde(default)]
    pub preset: Option<String>,
    /// `cpu`, `cuda` or `cuda:k`: a location, whose class (`cpu`, `cuda`) enters the key
    /// (and the head's).
    #[serde(default = "default_device")]
    pub device: String,
    /// What the forward and backward passes' products compute in (`graft_model::Precision`,
    /// autocast's semantics): `f32` (the default) or `bf16`. Not `fp16`: the probe's one
    /// backward pass has no loss scale to keep the node gradients' small values from
    /// flushing to zero in fp16's range, which would change the ranks. The head's fit and the measured training step use it too; the gradient sums and
    /// their SVDs stay f32 and f64. In the key (and the head's) except at f32.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
}

fn default_batch() -> usize {
    64
}
fn default_batches() -> usize {
    4
}
fn default_tokens() -> Tokens {
    Tokens::All
}
fn default_tol_rule() -> TolRule {
    TolRule::Relative
}
fn default_tol() -> f64 {
    1e-3
}
fn default_head() -> Head {
    Head::LinearProbe
}
fn default_head_epochs() -> usize {
    5
}
fn default_head_lr() -> f64 {
    1e-2
}
fn default_device() -> String {
    "cpu".into()
}

/// Bump when the head step's output would change, and [`Probe::VERSION`] with it.
/// 2: the fused operations and the pinned CPU kernels (see [`Probe::VERSION`]).
pub const HEAD_VERSION: u32 = 2;

/// The stage.
pub struct Probe;

/// What the stage binary says it does (`--help`; also `graft-front`'s).
pub const ABOUT: &str =
    "Score every edge of a ViT by the singular values of its one-pass gradient G_ij";

impl Stage for Probe {
    const NAME: &'static str = "probe";
    /// 2: `cost.json` left the artifact (timings live in the manifest only).
    /// 3: the fused LayerNorm, softmax, attention and linear
    /// operations compute other roundings than the composed ones they replaced, and the tch
    /// build's CPU kernels are pinned to AVX2 (`graft_backend::numerics`).
    /// 4: on tch, the batches' G are summed in place (`addmm_` into the first batch's
    /// product, `graft_backend::gram`) where each was a product and then an addition: other
    /// roundings from the second batch on (flex computes what it did).
    /// Bump it with [`HEAD_VERSION`]: the scores read the head, whose version is not in this
    /// stage's key.
    const VERSION: u32 = 4;
    type Params = ProbeParams;

    fn input_names(p: &ProbeParams) -> Vec<String> {
        let mut v = vec!["dataset".to_owned()];
        if p.checkpoint.is_none() {
            v.push("base".into());
        }
        v
    }

    fn validate(p: ProbeParams) -> Result<ProbeParams, BoxError> {
        Ok(validate(p)?)
    }

    fn backend_decides(p: &ProbeParams) -> bool {
        graft_backend::backend_decides(&p.device)
    }

    fn before_work(p: &ProbeParams) -> Option<fn()> {
        graft_train::before_work(p.precision, &p.device)
    }

    fn location_params() -> &'static [&'static str] {
        &["checkpoint", "device"]
    }

    fn device(p: &ProbeParams) -> Option<&str> {
        Some(&p.device)
    }

    fn fingerprints(p: &ProbeParams) -> Result<BTreeMap<String, ArtifactId>, BoxError> {
        Ok(graft_train::base_fingerprints(p.checkpoint.as_deref())?)
    }

    fn run(
        p: &ProbeParams,
        inputs: &BTreeMap<String, Artifact>,
        out: &Publisher,
    ) -> Result<BTreeMap<String, Value>, BoxError> {
        Ok(probe(p, inputs, out)?)
    }
}

/// The checks of [`Probe`]'s parameters.
pub fn validate(p: ProbeParams) -> Result<ProbeParams, ProbeError> {
    if p.batch == 0 || p.batches == 0 || p.head_epochs == 0 {
        return Err(ProbeError::Param(
            "batch, batches and head_epochs must be at least 1".into(),
        ));
    }
    if !(p.tol > 0.0 && p.tol < 1.0) {
        return Err(ProbeError::Param(format!(
            "tol = {} must be in (0, 1)",
            p.tol
        )));
    }
    if !(p.head_lr > 0.0 && p.head_lr.is_finite()) {
        return Err(ProbeError::Param(format!(
            "head_lr = {} must be positive",
            p.head_lr
        )));
    }
    graft_train::check_base_params(p.preset.as_deref(), p.checkpoint.as_deref())
        .map_err(ProbeError::Param)?;
    graft_backend::device(&p.device)?;
    if p.precision == Precision::Fp16 {
        return Err(ProbeError::Param(
            "precision = \"fp16\": the probe's single backward pass has no loss scale, so gradients below fp16's range would flush to zero and change the ranks; use \"bf16\" (f32's range) or \"f32\"".into(),
        ));
    }
    Ok(p)
}

/// The stage's work: the head, the edge gradients and their scores into `out`; returns the
/// manifest's `extra` (the [`ProbeCost`]).
pub fn probe(
    p: &ProbeParams,
    inputs: &BTreeMap<String, Artifact>,
    out: &Publisher,
) -> Result<BTreeMap<String, Value>, ProbeError> {
    let start = Instant::now();
    let dataset = &inputs["dataset"];
    let base = graft_train::resolve_base(
        p.checkpoint.as_deref(),
        p.preset.as_deref(),
        inputs.get("base"),
    )
    .map_err(ProbeError::Base)?;
    let (base_id, base_path, preset) = (base.id, base.path, base.preset);
    let info = DatasetInfo::read(dataset.dir())?;
    let pre = info.preprocessing.clone();
    let config = VitConfig::preset(&preset, info.classes.len())
        .ok_or_else(|| ProbeError::Base(format!("base preset {preset:?} is not a preset")))?;
    if config.image_size != pre.image_size {
        return Err(ProbeError::Base(format!(
            "base model {preset} takes {} px images but dataset {} has {} px",
            config.image_size,
            dataset.id().short(),
            pre.image_size
        )));
    }
    let train = Split::read(dataset.dir(), "train", pre.image_size)?;
    let val = Split::read(dataset.dir(), "val", pre.image_size)?;
    let device = graft_backend::device(&p.device)?;

    // The head for the loss.
    let head = match p.head {
        Head::LinearProbe => Some(ensure_head(
            out.store(),
            p,
            &config,
            (dataset.id(), &base_id, &base_path),
            (&train, &val, &pre),
            &device,
        )?),
        Head::Random => None,
    };
    if let Some(h) = &head {
        out.refer(h.id());
    }
    let ad = device.clone().autodiff();
    graft_backend::seed(&ad, p.seed);
    let mut model = config.init(&ad);
    graft_model::checkpoint::load_timm(&mut model, &base_path)?;
    if let Some(h) = &head {
        model = graft_model::checkpoint::load_adapters(model, &h.file(HEAD_FILE))?.0;
    }
    let model = model
        .with_trainable(Trainable::HeadOnly)
        .with_precision(p.precision);

    // Probe batches: a seeded sample of the training split.
    let mut order: Vec<usize> = (0..train.len()).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(p.seed ^ 0x9e37));
    let rows: Vec<Vec<usize>> = order
        .chunks(p.batch)
        .take(p.batches)
        .map(<[usize]>::to_vec)
        .collect();
    let t0 = Instant::now();
    let grads = edge_gradients(
        &model,
        rows.iter().map(|r| train.batch(r, &pre, &ad)),
        p.tokens,
    )?;
    let fb_seconds = t0.elapsed().as_secs_f64();

    let t1 = Instant::now();
    let dim = config.dim;
    let probe_rows = edge_scores(&grads, dim, p.tol_rule, p.tol)?;
    let svd_seconds = t1.elapsed().as_secs_f64();

    let step_seconds = train_step_seconds(
        (&config, &base_path, p.precision),
        &train,
        &rows[0],
        &pre,
        &device,
    )?;
    ProbeRow::write(&out.file(ProbeRow::FILE), &probe_rows)?;
    ModelInfo {
        preset: preset.clone(),
        dims: config.dims(),
    }
    .write(&out.file(ModelInfo::FILE))?;
    let total = start.elapsed().as_secs_f64();
    let probe_seconds = fb_seconds + svd_seconds;
    let name = |v: Value| v.as_str().unwrap_or_default().to_owned();
    let cost = ProbeCost {
        forward_backward_seconds: fb_seconds,
        svd_seconds,
        total_seconds: total,
        train_step_seconds: step_seconds,
        cost_in_train_steps: probe_seconds / step_seconds.max(1e-9),
        batches: rows.len() as u64,
        batch: p.batch as u64,
        rows: grads.rows as u64,
        method: if grads.factors.is_some() {
            "qr-core"
        } else {
            "direct"
        }
        .into(),
        tokens: name(json!(p.tokens)),
        tolerance: p.tol,
        tol_rule: name(json!(p.tol_rule)),
        head: name(json!(p.head)),
        edges: probe_rows.len() as u64,
        backend: graft_backend::backend_name().into(),
        device: p.device.clone(),
    };
    // Timings live in the manifest only: the files are the same on every rerun, so the
    // artifact id is too, and everything downstream stays fresh (early cutoff).
    eprintln!(
        "probe: {} edges of {preset} from {} batches of {} ({:?} tokens): forward+backward {:.2} s, SVD {:.2} s, one training step {:.3} s",
        probe_rows.len(),
        rows.len(),
        p.batch,
        p.tokens,
        fb_seconds,
        svd_seconds,
        step_seconds
    );
    let mut extra: BTreeMap<String, Value> = BTreeMap::new();
    if let Ok(Value::Object(m)) = serde_json::to_value(&cost) {
        extra.extend(m);
    }
    extra.insert(
        "cpu_kernels".to_owned(),
        serde_json::json!(graft_backend::numerics::record()),
    );
    Ok(extra)
}

/// What stops the probe's measurement: never a silent zero or empty spectrum.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe batch {batch}: the node trace failed: {source}")]
    Trace {
        batch: usize,
        #[source]
        source: Box<graft_model::ModelError>,
    },
    #[error("no probe batch: the training split gave no rows")]
    NoBatches,
    #[error("reading the edge gradients back from the device: {0}")]
    Readback(String),
    #[error("edge {edge}: {reason}")]
    Edge { edge: Edge, reason: String },
    /// A parameter out of its range.
    #[error("{0}")]
    Param(String),
    /// The base model cannot be found or does not fit the dataset.
    #[error("{0}")]
    Base(String),
    #[error(transparent)]
    Model(Box<graft_model::ModelError>),
    #[error(transparent)]
    Train(#[from] graft_train::TrainError),
    #[error(transparent)]
    Table(#[from] graft_tables::TableError),
    #[error(transparent)]
    Store(#[from] graft_store::StoreError),
    #[error(transparent)]
    Backend(#[from] graft_backend::BackendError),
}

impl From<graft_model::ModelError> for ProbeError {
    fn from(e: graft_model::ModelError) -> ProbeError {
        ProbeError::Model(Box::new(e))
    }
}

/// Name of the head file in a `probe-head` entry.
pub const HEAD_FILE: &str = "head.safetensors";

/// The summed edge gradients of a probe.
pub struct EdgeGradients {
    /// n nodes.
    pub nodes: usize,
    pub dim: usize,
    /// Rows (examples × tokens) summed over.
    pub rows: usize,
    /// Row-major `[n·d, n·d]`: block (j, i) is G_ij = Δ_jᵀ X_i.
    pub g: HostMatrix,
    /// With fewer rows than `dim`: the R factors of Δ_jᵀ and X_iᵀ per node, for the exact
    /// m×m shortcut.
    pub factors: Option<NodeFactors>,
}

/// The R factors of Δ_jᵀ and of X_iᵀ, one per node (see [`EdgeGradients::factors`]).
pub type NodeFactors = (Vec<faer::Mat<f64>>, Vec<faer::Mat<f64>>);

/// A check of one edge's singular values (or the error computing them) that may replace
/// them with an error naming the edge.
type EdgeCheck<'a> = dyn Fn(Edge, Result<Vec<f64>, String>) -> Result<Vec<f64>, String> + Sync + 'a;

impl EdgeGradients {
    /// G_ij as a row-major d×d matrix.
    pub fn block(&self, e: Edge) -> Vec<f64> {
        let (d, nd) = (self.dim, self.nodes * self.dim);
        let mut out = Vec::with_capacity(d * d);
        for r in 0..d {
            let row = (e.j * d + r) * nd + e.i * d;
            out.extend(self.g[row..row + d].iter().map(|&v| v as f64));
        }
        out
    }
}

/// One forward and one backward pass per batch (on an autodiff device): the gradients
/// G_ij = Δ_jᵀ X_i of all n² edges, summed over batches.
///
/// # Shapes
/// batches: images `[batch, 3, size, size]`, labels `[batch]`
pub fn edge_gradients(
    model: &Vit,
    batches: impl Iterator<Item = (Tensor<4>, Tensor<1, Int>)>,
    tokens: Tokens,
) -> Result<EdgeGradients, ProbeError> {
    let n = 2 * model.config.depth + 1;
    let d = model.config.dim;
    let mut gram: Option<GramSum> = None;
    let mut rows = 0;
    let mut xs: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut ds: Vec<Vec<f64>> = vec![Vec::new(); n];
    let keep_rows = tokens == Tokens::Cls;
    for (batch, (images, labels)) in batches.enumerate() {
        let device = images.device();
        let trace = model.trace(images).map_err(|source| ProbeError::Trace {
            batch,
            source: Box::new(source),
        })?;
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(trace.logits.clone(), labels);
        let grads = loss.backward();
        let deltas = trace.node_grads(&grads);
        let pick = |t: Tensor<3>| -> Tensor<2> {
            let [b, tk, _] = t.dims();
            let t = match tokens {
                Tokens::All => t,
                Tokens::Cls => t.narrow(1, 0, 1),
            };
            let m = if tokens == Tokens::All { b * tk } else { b };
            t.reshape([m, d])
        };
        // [m, n·d]: node k's rows in columns k·d..(k+1)·d.
        let x: Vec<Tensor<2>> = trace.nodes.into_iter().map(pick).collect();
        let dl: Vec<Tensor<2>> = deltas.into_iter().map(|t| pick(t.detach())).collect();
        let m = x[0].dims()[0];
        rows += m;
        if keep_rows {
            for k in 0..n {
                xs[k].extend(x[k].to_data().iter::<f32>().map(f64::from));
                ds[k].extend(dl[k].to_data().iter::<f32>().map(f64::from));
            }
        }
        let xcat = Tensor::cat(x, 1);
        let dcat = Tensor::cat(dl, 1);
        gram.get_or_insert_with(|| GramSum::new(n * d, n * d, &device))
            .add(dcat, xcat);
    }
    // G holds (n·d)² values (1.5 GB for ViT-B/16): on LibTorch's CPU it is summed in host
    // memory and reading it is no copy; elsewhere it is one.
    let g = gram
        .ok_or(ProbeError::NoBatches)?
        .into_host()
        .map_err(ProbeError::Readback)?
        .ok_or(ProbeError::NoBatches)?;
    let factors = (keep_rows && rows < d).then(|| {
        let r = |v: &Vec<f64>| scores::thin_r_of_transpose(v, rows, d);
        (ds.iter().map(r).collect(), xs.iter().map(r).collect())
    });
    Ok(EdgeGradients {
        nodes: n,
        dim: d,
        rows,
        g,
        factors,
    })
}

/// One [`ProbeRow`] per edge, rayon across edges, in (i, j) order. An edge whose gradient
/// is not finite or whose SVD fails is an error naming the edge.
pub fn edge_scores(
    grads: &EdgeGradients,
    dim: usize,
    rule: TolRule,
    tol: f64,
) -> Result<Vec<ProbeRow>, ProbeError> {
    edge_scores_with(grads, dim, rule, tol, &|_, sv| sv)
}

/// [`edge_scores`] with `check` between each edge's SVD and its scores (tests inject an SVD
/// failure through it).
fn edge_scores_with(
    grads: &EdgeGradients,
    dim: usize,
    rule: TolRule,
    tol: f64,
    check: &EdgeCheck<'_>,
) -> Result<Vec<ProbeRow>, ProbeError> {
    faer::set_global_parallelism(faer::Par::Seq);
    let n = grads.nodes;
    let edges: Vec<Edge> = (0..n)
        .flat_map(|i| (0..n).map(move |j| Edge::new(i, j)))
        .collect();
    edges
        .par_iter()
        .map(|&e| {
            let sv = match &grads.factors {
                Some((rd, rx)) => scores::core_singular_values(&rd[e.j], &rx[e.i]).map(|mut sv| {
                    sv.resize(dim, 0.0);
                    sv
                }),
                None => scores::singular_values(&grads.block(e), dim, dim),
            };
            let sv = check(e, sv).map_err(|reason| ProbeError::Edge { edge: e, reason })?;
            let s = scores::scores(&sv, dim, rule, tol);
            Ok(ProbeRow {
                i: e.i as i32,
                j: e.j as i32,
                kind: e.kind().name().to_owned(),
                rank: s.rank as i64,
                frobenius: s.frobenius,
                spectral: s.spectral,
                nuclear: s.nuclear,
                stable_rank: s.stable_rank,
                effective_rank: s.effective_rank,
                singular_values: sv,
            })
        })
        .collect::<Vec<_>>()
        // The first failing edge in row-major order, whatever order the threads ran in.
        .into_iter()
        .collect()
}

/// The linear-probe head: from the store when fitted before, else fitted and published
/// (stage `probe-head`, keyed by dataset, base and the head's parameters).
fn ensure_head(
    store: &Store,
    p: &ProbeParams,
    config: &VitConfig,
    (dataset, base_id, base_path): (&ArtifactId, &ArtifactId, &PathBuf),
    (train, val, pre): (&Split, &Split, &Preprocessing),
    device: &Device,
) -> Result<Artifact, ProbeError> {
    let params = head_key_params(p);
    let inputs: BTreeMap<String, ArtifactId> = [
        ("dataset".to_owned(), dataset.clone()),
        ("base".to_owned(), base_id.clone()),
    ]
    .into();
    let key = KeyInput {
        stage: "probe-head",
        stage_version: HEAD_VERSION,
        params: &params,
        inputs: &inputs,
    }
    .key();
    let ensured = store.ensure(&key, false, |_, out| {
        let t0 = Instant::now();
        graft_backend::seed(device, p.seed);
        let mut model = config.init(device);
        graft_model::checkpoint::load_timm(&mut model, base_path)?;
        let model = model
            .with_trainable(Trainable::HeadOnly)
            .with_precision(p.precision);
        let tc = TrainConfig::new(p.head_epochs, p.head_lr)
            .with_batch(p.batch)
            .with_warmup_epochs(0.0)
            .with_seed(p.seed);
        let fit = graft_train::fit(model, train, val, pre, &tc, device, |_| {})?;
        graft_model::checkpoint::save_adapters(
            &fit.model,
            &out.file(HEAD_FILE),
            "",
            &base_id.to_string(),
        )?;
        eprintln!(
            "probe: linear-probe head fitted in {:.1} s, val {:.1} %",
            t0.elapsed().as_secs_f64(),
            100.0 * fit.best_val_accuracy
        );
        Ok::<_, ProbeError>(PublishInfo {
            stage: "probe-head",
            stage_version: HEAD_VERSION,
            key: &key,
            params: &params,
            inputs: &inputs,
            extra: [("val_accuracy".to_owned(), json!(fit.best_val_accuracy))].into(),
            wall_seconds: t0.elapsed().as_secs_f64(),
        })
    })?;
    for w in ensured.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(ensured.artifact)
}

/// The parameters of the head's key: its training knobs and seed, and the device's class
/// when it is not the CPU (`graft_stage::device_key_param`).
pub fn head_key_params(p: &ProbeParams) -> BTreeMap<String, Value> {
    let mut params: BTreeMap<String, Value> = [
        ("epochs".to_owned(), json!(p.head_epochs)),
        ("lr".to_owned(), json!(p.head_lr)),
        ("batch".to_owned(), json!(p.batch)),
        ("seed".to_owned(), json!(p.seed)),
    ]
    .into();
    if let Some((name, class)) = graft_stage::device_key_param(&p.device) {
        params.insert(name.to_owned(), class);
    }
    if !p.precision.is_f32() {
        params.insert("precision".to_owned(), json!(p.precision));
    }
    params
}

/// Median seconds of one full fine-tuning step (forward, backward, AdamW) on `rows`, of the
/// base model at `base_path` computing in `precision`.
fn train_step_seconds(
    (config, base_path, precision): (&VitConfig, &std::path::Path, Precision),
    train: &Split,
    rows: &[usize],
    pre: &Preprocessing,
    device: &Device,
) -> Result<f64, ProbeError> {
    let ad = device.clone().autodiff();
    let mut model = config.init(&ad);
    graft_model::checkpoint::load_timm(&mut model, base_path)?;
    let mut model = model
        .train()
        .with_trainable(Trainable::Full)
        .with_precision(precision);
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let mut times = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        let (x, y) = train.batch(rows, pre, &ad);
        let loss = loss_fn.forward(model.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-6, model, grads);
        let _ = model.head.weight.val().into_data();
        times.push(t.elapsed().as_secs_f64());
    }
    times.remove(0);
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

#[cfg(test)]
mod tests;
