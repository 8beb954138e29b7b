use std::path::Path;

use graft_model::{Precision, VitConfig};
use graft_tables::EpochRow;
use graft_train::{DatasetInfo, Split};

use super::run::*;
use super::*;

/// A small procedural texture task at 16 px, written like the prep stage writes it.
fn dataset(dir: &Path) {
    textures(dir, [96, 48, 48]);
}

/// The CI pipeline's target task (`pipelines/ci.toml`'s prep: procedural textures at 16 px,
/// seed 1) with `[train, val, test]` images.
fn textures(dir: &Path, n: [usize; 3]) {
    std::fs::create_dir_all(dir).unwrap();
    let params: graft_prep::PrepParams = serde_json::from_value(json!({
        "source": "procedural", "task": "textures", "image_size": 16, "seed": 1,
        "train": n[0], "val": n[1], "test": n[2],
    }))
    .unwrap();
    let params = params.normalize().unwrap();
    let plan = graft_prep::plan(&params).unwrap();
    graft_prep::write_dataset(&plan, &params, dir).unwrap();
}

/// A random vit-cpu-tiny base checkpoint (timm names), drawn under the caller's [`rng_lock`].
fn base(_rng: &RngGuard, path: &Path) {
    let dev = graft_backend::device("cpu").unwrap();
    dev.seed(7);
    let vit = VitConfig::preset("vit-cpu-tiny", 16).unwrap().init(&dev);
    graft_model::checkpoint::save_timm(&vit, path).unwrap();
}

fn spec(dir: &Path, method: Method, edges: Vec<Edge>, lr: f64) -> RunSpec {
    RunSpec {
        placement_id: Placement::new(Graph::new(2), edges.iter().copied())
            .unwrap()
            .id(),
        method,
        edges,
        seed: 3,
        preset: "vit-cpu-tiny".into(),
        protocol: Protocol {
            kind: ProtocolKind::Select,
            train: graft_train::TrainProtocol {
                epochs: 2,
                lr,
                batch: 32,
                weight_decay: 1e-4,
                warmup_epochs: 0.5,
            },
            bottleneck: 4,
            adapter_act: AdapterAct::Gelu,
            adapter_scale: 1.0,
            lora: (method == Method::Lora).then(|| graft_model::LoraConfig::new().with_rank(4)),
            precision: Precision::F32,
        },
        dataset: ArtifactId::parse(&"a".repeat(64)).unwrap(),
        base: ArtifactId::parse(&"b".repeat(64)).unwrap(),
        base_path: dir.join("base.safetensors"),
        dataset_dir: dir.join("data"),
        device: "cpu".into(),
        cache: Default::default(),
        loss_every: None,
    }
}

/// The backend's random state is global: every test here that trains holds this lock, so
/// two trainings with one seed draw the same weights whatever runs beside them.
/// A helper that draws (a random base, a model initialised before loading weights) takes
/// the guard as an argument, so a draw outside the lock does not compile: one such draw,
/// a model initialised to read trained weights back after the lock was released, changed
/// another test's training draws and failed CI.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

type RngGuard = std::sync::MutexGuard<'static, ()>;

fn rng_lock() -> RngGuard {
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A dataset and a random base; it draws from the backend's global random state, so a
/// caller holds [`rng_lock`] (a base drawn beside another test's training changed that
/// training's draws on tch, where the state is LibTorch's, one per process).
fn setup(rng: &RngGuard) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    dataset(&dir.path().join("data"));
    base(rng, &dir.path().join("base.safetensors"));
    dir
}

/// A run's model as a fresh process rebuilds it: the base from its file, adapters and head
/// from the run's weights file in `out`.
fn reloaded(s: &RunSpec, out: &Path) -> (graft_model::Vit, graft_model::checkpoint::AdapterMeta) {
    let dev = graft_backend::device("cpu").unwrap();
    let info = DatasetInfo::read(&s.dataset_dir).unwrap();
    let mut vit = VitConfig::preset("vit-cpu-tiny", info.classes.len())
        .unwrap()
        .init(&dev);
    graft_model::checkpoint::load_timm(&mut vit, &s.base_path).unwrap();
    graft_model::checkpoint::load_adapters(vit, &out.join(WEIGHTS_FILE)).unwrap()
}

/// `vit`'s accuracy on the test split of `s`'s dataset, on the CPU.
fn test_accuracy(s: &RunSpec, vit: &graft_model::Vit) -> f64 {
    let dev = graft_backend::device("cpu").unwrap();
    let info = DatasetInfo::read(&s.dataset_dir).unwrap();
    let test = Split::read(&s.dataset_dir, "test", 16).unwrap();
    graft_train::evaluate(vit, &test, &info.preprocessing, &dev, 32)
}

#[test]
fn adapter_only_files_reload_to_the_same_accuracy() {
    let rng = rng_lock();
    let dir = setup(&rng);
    let s = spec(
        dir.path(),
        Method::Adapters,
        vec![Edge::new(0, 1), Edge::new(4, 1), Edge::new(2, 2)],
        3e-3,
    );
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let result = train_run(&s, &out, |_| {}).unwrap();
    assert_eq!(result.status, RunStatus::Ok);
    assert!(result.weights);

    // A fresh process would do this: base from its file, adapters and head from theirs.
    graft_backend::device("cpu").unwrap().seed(99);
    let (vit, meta) = reloaded(&s, &out);
    let mut sorted = s.edges.clone();
    sorted.sort();
    assert_eq!(meta.placement, sorted);
    assert_eq!(meta.adapter.rank, 4);
    assert_eq!(Some(test_accuracy(&s, &vit)), result.test_accuracy);
}

/// A bf16 or fp16 run trains (from activation caches of its own precision) and saves f32
/// adapter and head weights that, reloaded into a model of that precision, give its test
/// accuracy; an fp16 run counts the steps its loss scale skipped, a bf16 run has none.
#[test]
fn low_precision_runs_save_f32_weights_and_fp16_runs_count_their_skipped_steps() {
    let rng = rng_lock();
    let dir = setup(&rng);
    for precision in [Precision::Bf16, Precision::Fp16] {
        let mut s = spec(dir.path(), Method::Adapters, vec![Edge::new(1, 3)], 3e-3);
        s.protocol.precision = precision;
        let out = dir.path().join(format!("{precision:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let result = train_run(&s, &out, |_| {}).unwrap();
        assert_eq!(result.status, RunStatus::Ok, "{precision:?}");
        assert!(result.activation_cache.is_some(), "{precision:?}");
        assert_eq!(
            result.fp16_skipped_steps.is_some(),
            precision == Precision::Fp16,
            "{precision:?}"
        );
        let (vit, _) = reloaded(&s, &out);
        // f32, as the class token (never cast) is.
        let (up, cls) = (vit.adapters[0].up.weight.val(), vit.cls_token.val());
        assert_eq!(up.dtype(), cls.dtype(), "{precision:?}");
        let vit = vit.with_precision(precision);
        let acc = test_accuracy(&s, &vit);
        assert_eq!(Some(acc), result.test_accuracy, "{precision:?}");
    }
}

#[test]
fn the_final_protocol_trains_on_train_and_val_and_tests_the_last_epoch() {
    let rng = rng_lock();
    let dir = setup(&rng);
    let mut s = spec(dir.path(), Method::Adapters, vec![Edge::new(0, 1)], 3e-3);
    s.protocol.kind = ProtocolKind::Final;
    s.protocol.train.epochs = 3;
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let mut total = 0;
    let result = train_run(&s, &out, |p| {
        if let graft_train::Progress::Step { total: t, .. } = p {
            total = t;
        }
    })
    .unwrap();
    // 96 train + 48 val images in batches of 32: 5 steps an epoch (select would take 3).
    assert_eq!(total, 3 * (96 + 48_usize).div_ceil(32));
    assert_eq!(result.status, RunStatus::Ok);
    assert_eq!(
        result.best_epoch,
        Some(2),
        "the last epoch, not a chosen one"
    );
    assert_eq!(
        result.val_accuracy, None,
        "val is training data under final"
    );
    let epochs = EpochRow::read(&out.join(EpochRow::FILE)).unwrap();
    assert_eq!(epochs.len(), 3);
    assert!(epochs.iter().all(|e| e.val_accuracy.is_none()));
    assert_eq!(result.train_loss, Some(epochs[2].train_loss));

    // The test accuracy is the last epoch's weights on test.
    let (vit, _) = reloaded(&s, &out);
    assert_eq!(Some(test_accuracy(&s, &vit)), result.test_accuracy);
}

#[test]
fn a_linear_probe_trains_the_head_alone_and_saves_it() {
    let rng = rng_lock();
    let dir = setup(&rng);
    let s = spec(dir.path(), Method::LinearProbe, vec![], 1e-2);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let result = train_run(&s, &out, |_| {}).unwrap();
    let classes = DatasetInfo::read(&s.dataset_dir).unwrap().classes.len();
    let head = 64 * classes + classes;
    assert_eq!(result.trainable_params, head);
    assert!(result.weights && out.join(WEIGHTS_FILE).exists());
    let meta = graft_model::checkpoint::adapter_meta(&out.join(WEIGHTS_FILE)).unwrap();
    assert!(meta.placement.is_empty());
}

#[test]
fn a_diverging_run_is_a_result_not_an_error() {
    let rng = rng_lock();
    let dir = setup(&rng);
    let s = spec(dir.path(), Method::Full, vec![], 1e9);
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let result = train_run(&s, &out, |_| {}).unwrap();
    assert_eq!(result.status, RunStatus::Diverged);
    let err = result.error.unwrap();
    assert!(err.contains("diverged"), "{err}");
    assert_eq!(result.test_accuracy, None);
}

#[test]
fn run_keys_follow_what_is_trained_not_where() {
    let dir = Path::new("/nonexistent");
    let a = spec(dir, Method::Adapters, vec![Edge::new(0, 1)], 1e-3);
    let mut b = a.clone();
    b.placement_id = "another-name".into();
    b.base_path = "elsewhere".into();
    b.dataset_dir = "elsewhere".into();
    assert_eq!(a.key(), b.key());
    let changed = |f: &dyn Fn(&mut RunSpec)| {
        let mut c = a.clone();
        f(&mut c);
        assert_ne!(a.key(), c.key());
    };
    changed(&|c| c.seed = 4);
    changed(&|c| c.edges = vec![Edge::new(1, 2)]);
    changed(&|c| c.method = Method::AdaptersRandomInit);
    changed(&|c| c.protocol.train.lr = 2e-3);
    changed(&|c| c.protocol.bottleneck = 16);
    changed(&|c| c.protocol.kind = ProtocolKind::Final);
    changed(&|c| c.protocol.precision = Precision::Bf16);
    // `select` stays out of the key, so runs trained before `protocol` existed (all of them
    // `select`) keep their keys.
    assert!(a.key_params()["protocol"].get("kind").is_none());
    // The protocol enters the key as the flat object it always was.
    assert_eq!(
        a.key_params()["protocol"],
        serde_json::json!({
            "epochs": 2, "lr": 1e-3, "batch": 32, "weight_decay": 1e-4, "warmup_epochs": 0.5,
            "bottleneck": 4, "adapter_act": "gelu", "adapter_scale": 1.0
        })
    );
    // How a run is executed stays out of its key.
    let mut c = a.clone();
    c.loss_every = Some(5);
    c.cache.device_memory_mib = 1;
    c.cache.memory_mib = 7;
    assert_eq!(a.key(), c.key());
    changed(&|c| c.dataset = ArtifactId::parse(&"c".repeat(64)).unwrap());
    changed(&|c| c.base = ArtifactId::parse(&"d".repeat(64)).unwrap());
    // The device's class is what it computes on (issue 27): the CPU and a GPU never share a
    // run's key, two GPUs do, and a CPU run keeps the key it had before the class entered.
    changed(&|c| c.device = "cuda".into());
    let on = |device: &str| {
        let mut c = a.clone();
        c.device = device.into();
        c.key()
    };
    assert_eq!(on("cuda:0"), on("cuda:1"));
    assert_eq!(on("cuda"), on("cuda:1"));
    assert!(!a.key_params().contains_key("device_class"));

    // A LoRA run's key holds its rank and alpha beside the shared protocol.
    let lora = spec(dir, Method::Lora, vec![], 1e-3);
    assert_eq!(
        lora.key_params()["protocol"]["lora"],
        serde_json::json!({ "rank": 4, "alpha": 8.0 })
    );
    let mut other = lora.clone();
    other.protocol.lora = Some(graft_model::LoraConfig::new().with_rank(8));
    assert_ne!(lora.key(), other.key());
}

/// LoRA (rank 4 on q and v of both blocks) trained briefly on the CI pipeline's target task
/// (fewer images) over a random base: it beats chance, and the linear probe, which cannot
/// learn through the frozen random backbone what LoRA learns through its attention; its B
/// factors moved from zero, its parameter count is the formula's, and its file reloads to the
/// same accuracy.
#[test]
fn a_short_lora_run_beats_chance_and_saves_its_factors() {
    let rng = rng_lock();
    let dir = tempfile::tempdir().unwrap();
    textures(&dir.path().join("data"), [240, 48, 120]);
    base(&rng, &dir.path().join("base.safetensors"));
    let train = |method: Method, out: &str| {
        let mut s = spec(dir.path(), method, vec![], 1e-2);
        s.protocol.train.epochs = 20;
        let out = dir.path().join(out);
        std::fs::create_dir_all(&out).unwrap();
        let result = train_run(&s, &out, |_| {}).unwrap();
        assert_eq!(result.status, RunStatus::Ok);
        (s, out, result)
    };
    let (s, out, result) = train(Method::Lora, "lora");
    let (_, _, probe) = train(Method::LinearProbe, "probe");
    let info = DatasetInfo::read(&s.dataset_dir).unwrap();
    let classes = info.classes.len();
    assert_eq!(classes, 12);
    let (layers, d, r) = (2, 64, 4);
    assert_eq!(
        result.trainable_params,
        2 * layers * 2 * r * d + d * classes + classes
    );
    let chance = 1.0 / classes as f64;
    let (test, probe) = (result.test_accuracy.unwrap(), probe.test_accuracy.unwrap());
    assert!(
        test > 2.0 * chance && test > probe,
        "test accuracy {test}: chance {chance:.3}, the linear probe {probe}"
    );

    let dev = graft_backend::device("cpu").unwrap();
    let mut vit = VitConfig::preset("vit-cpu-tiny", classes)
        .unwrap()
        .init(&dev);
    graft_model::checkpoint::load_timm(&mut vit, &s.base_path).unwrap();
    let (vit, meta) = graft_model::checkpoint::load_adapters(vit, &out.join(WEIGHTS_FILE)).unwrap();
    assert_eq!(meta.lora, s.protocol.lora);
    assert_eq!(vit.lora.len(), layers);
    for l in &vit.lora {
        for b in [&l.q_b, &l.v_b] {
            let moved = b.weight.val().abs().max().into_scalar::<f32>();
            assert!(moved > 0.0, "a B factor stayed zero");
        }
    }
    let split = Split::read(&s.dataset_dir, "test", 16).unwrap();
    let acc = graft_train::evaluate(&vit, &split, &info.preprocessing, &dev, 32);
    assert_eq!(Some(acc), result.test_accuracy);
}

#[test]
fn bad_parameters_name_the_field() {
    let parse = |v: Value| -> Result<FinetuneParams, String> {
        let p: FinetuneParams = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Finetune::validate(p).map_err(|e| e.to_string())
    };
    let e = parse(json!({"baselines": ["prompt-tuning"]})).unwrap_err();
    assert!(
        e.contains("prompt-tuning") && e.contains("linear-probe") && e.contains("lora"),
        "{e}"
    );
    let e = parse(json!({"baselines": ["lora"], "lora_rank": 0})).unwrap_err();
    assert!(e.contains("lora_rank"), "{e}");
    let e = parse(json!({"baselines": ["lora"], "lora_alpha": -8.0})).unwrap_err();
    assert!(e.contains("lora_alpha"), "{e}");
    let e =
        parse(json!({"preset": "vit-cpu-tiny", "placements": [{"edges": [[0, 9]]}]})).unwrap_err();
    assert!(e.contains("placements[0]") && e.contains("9"), "{e}");
    let e = parse(json!({"lr": -1.0})).unwrap_err();
    assert!(e.contains("lr"), "{e}");
    let e = parse(json!({"checkpoint": "x.safetensors"})).unwrap_err();
    assert!(e.contains("preset"), "{e}");
    let e =
        parse(json!({"checkpoint": "no-such.safetensors", "preset": "vit-cpu-tiny"})).unwrap_err();
    assert!(
        e.contains("no-such.safetensors") && e.contains("no such file") && e.contains("README"),
        "{e}"
    );
    // A timm name not in the Hugging Face cache is refused at `--check`, naming the field.
    let name = "timm/graft_no_such_model.test";
    let e = parse(json!({"checkpoint": name, "preset": "vit-cpu-tiny"})).unwrap_err();
    assert!(e.starts_with(&format!("checkpoint = {name:?}")), "{e}");
    let e = parse(json!({"protocol": "best"})).unwrap_err();
    assert!(e.contains("best") && e.contains("final"), "{e}");
    assert_eq!(
        parse(json!({"protocol": "final"})).unwrap().protocol,
        ProtocolKind::Final
    );
    let e = parse(json!({"epochs": 3, "bogus": 1})).unwrap_err();
    assert!(e.contains("bogus"), "{e}");
    let e = parse(json!({"executor": "pbs"})).unwrap_err();
    assert!(e.contains("executor") && e.contains("slurm"), "{e}");
    let e = parse(json!({"sweep_seeds": []})).unwrap_err();
    assert!(e.contains("sweep_seeds"), "{e}");
    let e = parse(json!({"sweep_repeats": 4})).unwrap_err();
    assert!(
        e.contains("sweep_repeats") && e.contains("sweep_seeds"),
        "{e}"
    );
    assert!(parse(json!({"sweep_seeds": [0], "sweep_repeats": 4})).is_ok());
    assert!(parse(json!({})).is_ok());
    assert!(parse(json!({"executor": "slurm", "slurm_max_parallel": 4})).is_ok());
}

/// Issue 25: the process that submits a Slurm array checks what it can know of the device
/// (its syntax, the GPUs each task is granted) and opens none, so a cuda run is submitted
/// from a host without a GPU; the local executor opens its devices at `--check`.
#[test]
fn a_slurm_submitter_checks_the_device_without_opening_it() {
    let parse = |v: Value| -> Result<FinetuneParams, String> {
        let p: FinetuneParams = serde_json::from_value(v).map_err(|e| e.to_string())?;
        Finetune::validate(p).map_err(|e| e.to_string())
    };
    let slurm = |device: &str, gpus: u32| json!({"executor": "slurm", "device": device, "slurm_gpus_per_task": gpus, "jobs": 4});
    // No GPU on this machine (and none in a flex build), yet the submitter accepts cuda.
    for (device, gpus) in [
        ("cuda", 1),
        ("cuda", 2),
        ("cuda:1", 2),
        ("cuda:3", 4),
        ("cpu", 0),
    ] {
        let p = parse(slurm(device, gpus)).unwrap_or_else(|e| panic!("{device}: {e}"));
        assert!(!Finetune::backend_decides(&p), "{device}");
    }
    for (device, gpus, needed) in [("cuda", 0, 1), ("cuda:0", 0, 1), ("cuda:1", 1, 2)] {
        let e = parse(slurm(device, gpus)).unwrap_err();
        assert!(
            e.contains(&format!(
                "slurm_gpus_per_task = {gpus} with device = {device:?}"
            )) && e.contains(&format!("set slurm_gpus_per_task = {needed}")),
            "{e}"
        );
    }
    for device in ["gpu", "cuda:x"] {
        let e = parse(slurm(device, 1)).unwrap_err();
        assert!(
            e.contains(&format!("device = {device:?}")) && e.contains("expected cpu, cuda"),
            "{e}"
        );
    }
    // The local executor opens the device here: what it says is the backend's.
    let local = |device: &str| -> FinetuneParams {
        serde_json::from_value(json!({"device": device})).unwrap()
    };
    assert!(Finetune::backend_decides(&local("cuda")));
    assert!(Finetune::backend_decides(&local("cuda:1")));
    assert!(!Finetune::backend_decides(&local("cpu")));
    assert!(!Finetune::backend_decides(&local("gpu")));
    let e = Finetune::validate(local("cuda")).unwrap_err().to_string();
    assert!(e.contains("device = \"cuda\""), "{e}");
}

/// The tch build of `graft-finetune` next to this test binary (`make test-tch` builds it
/// before the tests).
#[cfg(feature = "tch")]
fn tch_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("graft-finetune");
    let bytes = std::fs::read(&bin).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the tch binaries first (`make test-tch` does)",
            bin.display()
        )
    });
    let needs = |name: &[u8]| bytes.windows(name.len()).any(|w| w == name);
    assert!(
        needs(b"libtorch_cpu.so"),
        "{} is not the tch build (it does not link LibTorch): `make test-tch` builds it",
        bin.display()
    );
    bin
}

/// Issue 27 item 1: the tch worker trains one run into one artifact whatever the machine's
/// instruction level and thread count. Each variant trains the same spec into a store of
/// its own, with the environment of its worker process set as on another machine:
/// graft's default (kernels pinned to AVX2) with 1 and 2 threads, and LibTorch's own choice
/// on a machine without AVX-512 (`ATEN_CPU_CAPABILITY=avx2` and MKL's AVX2 path set by
/// hand, graft's pin off). On a CPU with AVX-512 the machine's own kernels
/// (`GRAFT_CPU_KERNELS=native`) must give other bytes, or the test could not see a pin that
/// does not take effect.
#[cfg(feature = "tch")]
#[test]
fn the_tch_worker_trains_one_artifact_whatever_the_kernels_and_threads() {
    let bin = tch_binary();
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    let s = spec(
        dir.path(),
        Method::Adapters,
        vec![Edge::new(0, 1), Edge::new(4, 1)],
        3e-3,
    );
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, serde_json::to_string(&s).unwrap()).unwrap();
    let avx2_machine: &[(&str, &str)] = &[
        ("GRAFT_CPU_KERNELS", "native"),
        ("ATEN_CPU_CAPABILITY", "avx2"),
        ("MKL_CBWR", "AVX2,STRICT"),
        ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ];
    let train = |name: &str, threads: usize, env: &[(&str, &str)]| {
        let store = dir.path().join(name);
        let mut cmd = std::process::Command::new(&bin);
        for (k, _) in graft_backend::numerics::PINS {
            cmd.env_remove(k);
        }
        cmd.env_remove(graft_backend::numerics::PINNED_VAR)
            .env_remove(graft_backend::numerics::MODE_VAR);
        let out = cmd
            .envs(env.iter().copied())
            .arg("worker")
            .arg("--store")
            .arg(&store)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--spec-file")
            .arg(&spec_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {} worker failed ({}):\n{}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let store = graft_store::Store::open(&store).unwrap();
        let graft_store::Lookup::Hit(a) = store.lookup(&s.key()).unwrap() else {
            panic!("{name}: the run is not in the store");
        };
        (a.id().clone(), a.manifest().extra["cpu_kernels"].clone())
    };
    let (pinned_1, kernels) = train("pinned-1", 1, &[]);
    assert_eq!(kernels["ATEN_CPU_CAPABILITY"], "avx2 (graft)", "{kernels}");
    assert_eq!(kernels["MKL_CBWR"], "AVX2,STRICT (graft)", "{kernels}");
    let (pinned_2, _) = train("pinned-2", 2, &[]);
    let (avx2, kernels) = train("avx2-machine", 2, avx2_machine);
    assert_eq!(
        kernels["ATEN_CPU_CAPABILITY"], "avx2 (environment)",
        "{kernels}"
    );
    assert_eq!(pinned_1, pinned_2, "1 and 2 threads gave two artifacts");
    assert_eq!(
        pinned_1, avx2,
        "graft's pin and an AVX2 machine's own kernels gave two artifacts"
    );
    if std::arch::is_x86_feature_detected!("avx512f") {
        let (native, kernels) = train("native", 2, &[("GRAFT_CPU_KERNELS", "native")]);
        assert_eq!(kernels["ATEN_CPU_CAPABILITY"], "unset", "{kernels}");
        assert_ne!(
            native, pinned_1,
            "this AVX-512 machine's own kernels gave the pinned artifact: the test cannot tell a pin that works from one that does nothing"
        );
    } else {
        eprintln!("no AVX-512 on this CPU: the machine's own kernels are the pinned ones");
    }
}

/// Issue 12 item 7: the tch build of `graft-finetune` finds LibTorch through its rpath, so a
/// worker trains a run from an empty environment (no `LD_LIBRARY_PATH`, no `PATH`).
/// `make test-tch` builds the binary before the tests.
#[cfg(feature = "tch")]
#[test]
fn the_tch_binary_trains_a_run_with_an_empty_environment() {
    let bin = tch_binary();
    // The base is drawn from the global random state: under the lock.
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    let s = spec(dir.path(), Method::Adapters, vec![Edge::new(0, 1)], 3e-3);
    let spec_file = dir.path().join("spec.json");
    std::fs::write(&spec_file, serde_json::to_string(&s).unwrap()).unwrap();
    let out = std::process::Command::new("env")
        .arg("-i")
        .arg(&bin)
        .arg("worker")
        .arg("--store")
        .arg(dir.path().join("store"))
        .arg("--spec-file")
        .arg(&spec_file)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.lines().any(|l| l.starts_with("artifact ")),
        "env -i {} worker failed ({}):\n{stdout}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let store = graft_store::Store::open(dir.path().join("store")).unwrap();
    let graft_store::Lookup::Hit(a) = store.lookup(&s.key()).unwrap() else {
        panic!("the run is not in the store");
    };
    assert_eq!(read_result(&a).unwrap().backend, "tch");
}

/// A run's files hold no timings: they are in its manifest, and [`read_result`] puts them
/// back. (That two trainings give one artifact id is `tests/executors.rs`'s, across
/// processes: tests in one process share the backend's global seed.)
#[test]
fn a_runs_timings_live_in_its_manifest_not_its_files() {
    let rng = rng_lock();
    let dir = setup(&rng);
    let s = spec(dir.path(), Method::Adapters, vec![Edge::new(0, 1)], 3e-3);
    let store = graft_store::Store::open(dir.path().join("store")).unwrap();
    let (a, _) = ensure_run(&store, &s, &mut workbench::Workbench::new(s.cache), |_| {}).unwrap();
    let text = std::fs::read_to_string(a.file(RUN_FILE)).unwrap();
    for field in [
        "wall_seconds",
        "images_per_second",
        "peak_memory_bytes",
        "device",
    ] {
        assert!(!text.contains(field), "{field} in {text}");
    }
    let epochs = EpochRow::read(&a.file(EpochRow::FILE)).unwrap();
    assert_eq!(epochs.len(), 2);
    assert!(epochs.iter().all(|e| e.seconds == 0.0), "{epochs:?}");
    let r = read_result(&a).unwrap();
    assert!(r.wall_seconds > 0.0 && r.images_per_second.unwrap() > 0.0);
    assert!(r.peak_memory_bytes.unwrap() > 0);
    assert_eq!(r.epoch_seconds.len(), 2);
    assert!(r.epoch_seconds.iter().all(|&t| t > 0.0));
    assert_eq!(r.device, "cpu");
}

/// Every trained parameter of a run's artifact (adapters and head), flattened in order.
/// The adapters' and head's trained weights; the model they load into is initialised from
/// the global random state first, so under the caller's [`rng_lock`].
fn trained_weights(_rng: &RngGuard, s: &RunSpec, out: &Path) -> Vec<f32> {
    let dev = graft_backend::device("cpu").unwrap();
    let info = DatasetInfo::read(&s.dataset_dir).unwrap();
    let vit = VitConfig::preset("vit-cpu-tiny", info.classes.len())
        .unwrap()
        .init(&dev);
    let (vit, _) = graft_model::checkpoint::load_adapters(vit, &out.join(WEIGHTS_FILE)).unwrap();
    let mut w = Vec::new();
    for a in &vit.adapters {
        w.extend(a.down.weight.val().into_data().try_to_vec::<f32>().unwrap());
        w.extend(a.up.weight.val().into_data().try_to_vec::<f32>().unwrap());
    }
    for l in &vit.lora {
        for p in [&l.q_a, &l.q_b, &l.v_a, &l.v_b] {
            w.extend(p.weight.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    w.extend(
        vit.head
            .weight
            .val()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap(),
    );
    w
}

/// Issue 10: a run trained from the activation cache gives the same trained weights and
/// accuracies (within float rounding, same seed) as the same run through the whole
/// network, for a placement of each edge kind, a recurrent one whose second pass starts
/// below its source node, the linear probe (class-token cache), random-init adapters
/// and the final protocol (train + val caches joined).
#[test]
fn the_activation_cache_trains_the_same_runs_as_the_whole_network() {
    // The base is drawn from the global random state: under the lock.
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    type Case = (Method, Vec<Edge>, ProtocolKind, usize, Vec<usize>);
    let cases: Vec<Case> = vec![
        // (method, edges, protocol, the node it trains from, the nodes it reads beside it)
        (
            Method::Adapters,
            vec![Edge::new(2, 3)],
            ProtocolKind::Select,
            3,
            vec![2],
        ),
        (
            Method::Adapters,
            vec![Edge::new(3, 3)],
            ProtocolKind::Select,
            3,
            vec![],
        ),
        (
            Method::Adapters,
            vec![Edge::new(1, 4)],
            ProtocolKind::Select,
            4,
            vec![1],
        ),
        // Recurrent (4, 1) beside (2, 3): pass 1 changes node 3 before the recurrent edge
        // reads node 4, so pass 1 is computed from node 1, where pass 2 starts too.
        (
            Method::Adapters,
            vec![Edge::new(4, 1), Edge::new(2, 3)],
            ProtocolKind::Select,
            1,
            vec![],
        ),
        // Recurrent (4, 1) alone: pass 1 is the plain network, read at node 4 from the cache.
        (
            Method::Adapters,
            vec![Edge::new(4, 1)],
            ProtocolKind::Select,
            1,
            vec![4],
        ),
        // Pass 1 skipped (its node 3 is plain), and a long-range source below the entry.
        (
            Method::Adapters,
            vec![Edge::new(3, 2), Edge::new(0, 4)],
            ProtocolKind::Select,
            2,
            vec![0, 3],
        ),
        (Method::LinearProbe, vec![], ProtocolKind::Select, 4, vec![]),
        (
            Method::AdaptersRandomInit,
            vec![Edge::new(2, 3)],
            ProtocolKind::Select,
            3,
            vec![2],
        ),
        (
            Method::Adapters,
            vec![Edge::new(1, 4)],
            ProtocolKind::Final,
            4,
            vec![1],
        ),
        // LoRA changes the first sub-layer: from node 0, the embedding.
        (Method::Lora, vec![], ProtocolKind::Select, 0, vec![]),
    ];
    for (k, (method, edges, kind, node, reads)) in cases.into_iter().enumerate() {
        let mut s = spec(dir.path(), method, edges.clone(), 3e-3);
        s.protocol.kind = kind;
        let mut results = Vec::new();
        for enabled in [false, true] {
            s.cache.enabled = enabled;
            let out = dir.path().join(format!("run-{k}-{enabled}"));
            std::fs::create_dir_all(&out).unwrap();
            let (r, weights) = {
                let rng = rng_lock();
                let r = train_run(&s, &out, |_| {}).unwrap();
                (r, trained_weights(&rng, &s, &out))
            };
            assert_eq!(r.status, RunStatus::Ok, "{method:?} {edges:?}");
            let epochs = EpochRow::read(&out.join(EpochRow::FILE)).unwrap();
            results.push((r, epochs, weights));
        }
        let (plain, cached) = (&results[0], &results[1]);
        let what = format!("{method:?} {edges:?} {kind:?}");
        assert_eq!(plain.0.activation_cache, None, "{what}");
        let used = cached
            .0
            .activation_cache
            .as_ref()
            .expect("the cached run used it");
        assert_eq!((used.node, &used.reads), (node, &reads), "{what}");
        assert_eq!(
            used.tokens,
            if method == Method::LinearProbe { 1 } else { 17 }
        );
        assert_eq!(used.splits, ["train", "val", "test"], "{what}");
        // Within float rounding: the prefix is computed in other batch shapes, so a
        // prediction at a near-tie may flip; at most one of the 48 val or test images.
        let one_row = 1.0 / 48.0 + 1e-9;
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= one_row,
            (a, b) => a == b,
        };
        assert!(
            close(plain.0.test_accuracy, cached.0.test_accuracy),
            "{what}: {:?} {:?}",
            plain.0.test_accuracy,
            cached.0.test_accuracy
        );
        assert_eq!(plain.0.best_epoch, cached.0.best_epoch, "{what}");
        for (a, b) in plain.1.iter().zip(&cached.1) {
            assert!(close(a.val_accuracy, b.val_accuracy), "{what}: {a:?} {b:?}");
            assert!(
                (a.train_loss - b.train_loss).abs() < 1e-4,
                "{what}: {a:?} {b:?}"
            );
        }
        assert_eq!(plain.2.len(), cached.2.len());
        let worst = plain
            .2
            .iter()
            .zip(&cached.2)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{what}: weights differ by up to {worst}");
    }
}

/// Runs in one worker share its caches: a second run at the same node reuses them, and one
/// at a higher node advances them; each gives what a fresh workbench gives.
#[test]
fn a_workbench_reuses_and_advances_its_caches() {
    // The base is drawn from the global random state: under the lock.
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    let mut bench = workbench::Workbench::new(Default::default());
    let mut fresh_and_shared = Vec::new();
    for (k, e) in [Edge::new(1, 1), Edge::new(1, 2), Edge::new(3, 3)]
        .into_iter()
        .enumerate()
    {
        let s = spec(dir.path(), Method::Adapters, vec![e], 3e-3);
        let (a, b) = (
            dir.path().join(format!("fresh-{k}")),
            dir.path().join(format!("shared-{k}")),
        );
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let _rng = rng_lock();
        let fresh = train_run(&s, &a, |_| {}).unwrap();
        let shared = train_run_with(&s, &b, &mut bench, |_| {}).unwrap();
        fresh_and_shared.push((fresh, shared));
    }
    let worker = |k: usize| {
        fresh_and_shared[k]
            .1
            .activation_cache
            .as_ref()
            .unwrap()
            .worker_bytes
    };
    // Run 0 (node 1) found nothing; run 1 (node 2, reading node 1) found run 0's cache and
    // added node 2's; run 2 (node 3) advanced node 2's to node 3.
    assert_eq!(worker(0), 0);
    let used = |k: usize| fresh_and_shared[k].1.activation_cache.clone().unwrap();
    let one_node = used(0).bytes;
    assert_eq!((used(1).node, used(1).reads.as_slice()), (2, &[1][..]));
    assert_eq!(used(1).bytes, 2 * one_node);
    assert_eq!(worker(1), one_node);
    assert_eq!(worker(2), 2 * one_node);
    assert_eq!(bench.cache_bytes(), 3 * one_node);
    for (fresh, shared) in &fresh_and_shared {
        assert_eq!(fresh.test_accuracy, shared.test_accuracy);
    }
}

/// A budget too small for a split's cache leaves that split to the whole network.
#[test]
fn a_split_over_the_cache_budget_is_not_cached() {
    // The base is drawn from the global random state: under the lock.
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    let mut s = spec(dir.path(), Method::Adapters, vec![Edge::new(2, 3)], 3e-3);
    s.cache.memory_mib = 0;
    let out = dir.path().join("run");
    std::fs::create_dir_all(&out).unwrap();
    let r = {
        let _rng = rng_lock();
        train_run(&s, &out, |_| {}).unwrap()
    };
    assert_eq!(r.status, RunStatus::Ok);
    assert_eq!(r.activation_cache, None);
}

/// `workers_per_gpu` puts that many workers on each GPU in turn (one by default, as before
/// it existed), each with its share of the GPU's cache memory; other devices take every
/// worker; every worker gets a thread count.
#[test]
fn workers_per_gpu_lays_the_workers_out_over_the_gpus() {
    let layout = |jobs, workers_per_gpu| worker::Layout {
        jobs,
        workers_per_gpu,
        threads: 0,
    };
    let devices = |l: worker::Layout, device: &str| -> Vec<(String, usize)> {
        (0..l.jobs)
            .map(|k| (l.device(device, k), l.sharing(device, k)))
            .collect()
    };
    let own = |names: &[&str], sharing: &[usize]| -> Vec<(String, usize)> {
        names
            .iter()
            .map(|n| n.to_string())
            .zip(sharing.iter().copied())
            .collect()
    };
    assert_eq!(
        devices(layout(3, 1), "cuda"),
        own(&["cuda:0", "cuda:1", "cuda:2"], &[1, 1, 1])
    );
    assert_eq!(
        devices(layout(5, 2), "cuda"),
        own(
            &["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2"],
            &[2, 2, 2, 2, 1]
        )
    );
    assert_eq!(
        devices(layout(2, 2), "cuda"),
        own(&["cuda", "cuda"], &[2, 2])
    );
    assert_eq!(devices(layout(1, 1), "cuda"), own(&["cuda"], &[1]));
    assert_eq!(
        devices(layout(3, 1), "cuda:1"),
        own(&["cuda:1", "cuda:1", "cuda:1"], &[3, 3, 3])
    );
    assert_eq!(devices(layout(2, 4), "cpu"), own(&["cpu", "cpu"], &[2, 2]));
    // Fewer runs than workers: no idle workers, and the GPU shared by fewer.
    assert_eq!(layout(5, 2).for_runs(2), layout(2, 2));
    assert_eq!(layout(5, 2).for_runs(0), layout(1, 2));

    let dir = Path::new("/nonexistent");
    let mut s = spec(dir, Method::Adapters, vec![Edge::new(0, 1)], 1e-3);
    s.device = "cuda".into();
    s.cache.device_memory_mib = 3000;
    let assigned = |l: worker::Layout, slot| {
        let a = l.assign(&s, slot);
        let same_key = a.key() == s.key();
        (a.device, a.cache.device_memory_mib, same_key)
    };
    assert_eq!(assigned(layout(5, 2), 3), ("cuda:1".into(), 1500, true));
    assert_eq!(assigned(layout(5, 2), 4), ("cuda:2".into(), 3000, true));
    assert_eq!(assigned(layout(3, 1), 2), ("cuda:2".into(), 3000, true));

    assert_eq!(layout(4, 1).threads_per_worker(16), 4);
    assert_eq!(layout(4, 1).threads_per_worker(2), 1);
    let fixed = worker::Layout {
        threads: 3,
        ..layout(4, 2)
    };
    assert_eq!(fixed.threads_per_worker(16), 3);
    // Whatever the device, a worker starts with its thread count.
    let cmd = worker::worker_command(Path::new("graft-finetune"), Path::new("store"), 3);
    let args: Vec<&std::ffi::OsStr> = cmd.get_args().collect();
    assert!(args.windows(2).any(|w| w == ["--threads", "3"]), "{args:?}");
    let envs: Vec<_> = cmd.get_envs().collect();
    assert!(envs.contains(&("RAYON_NUM_THREADS".as_ref(), Some("3".as_ref()))));
}

/// The parameters of how runs are executed are locations: a value other than the default
/// leaves the stage's key parameters as they were, and a layout with no worker per GPU is
/// refused.
#[test]
fn execution_parameters_stay_out_of_the_key() {
    let parse = |v: Value| -> FinetuneParams {
        Finetune::validate(serde_json::from_value(v).unwrap()).unwrap()
    };
    let keyed = |p: &FinetuneParams| {
        let Value::Object(mut m) = serde_json::to_value(p).unwrap() else {
            panic!("params serialise to an object")
        };
        for name in Finetune::location_params_of(p) {
            m.remove(name);
        }
        m
    };
    let defaults = parse(json!({}));
    assert_eq!(
        (
            defaults.workers_per_gpu,
            defaults.worker_threads,
            defaults.loss_every
        ),
        (1, 0, 0)
    );
    for (name, value) in [
        ("workers_per_gpu", json!(3)),
        ("worker_threads", json!(5)),
        ("loss_every", json!(8)),
        ("cache_device_memory_mib", json!(100)),
    ] {
        let p = parse(json!({ name: value }));
        assert_ne!(p, defaults, "{name}");
        assert_eq!(keyed(&p), keyed(&defaults), "{name}");
    }
    let e = Finetune::validate(serde_json::from_value(json!({"workers_per_gpu": 0})).unwrap())
        .unwrap_err()
        .to_string();
    assert!(e.contains("workers_per_gpu"), "{e}");
}

/// `precision` enters the stage's parameters and every run's protocol except at f32 (so the
/// keys from before it existed stay), fp16 is refused on the CPU, and a bf16 run on the CPU
/// asks for the machine's own kernels before its work.
#[test]
fn precision_enters_the_keys_except_at_f32_and_fp16_needs_a_gpu() {
    let parse = |v: Value| Finetune::validate(serde_json::from_value(v).unwrap());
    let plain = parse(json!({})).unwrap();
    assert_eq!(plain.precision, Precision::F32);
    assert!(
        serde_json::to_value(&plain)
            .unwrap()
            .get("precision")
            .is_none()
    );
    assert!(Finetune::before_work(&plain).is_none());
    let bf16 = parse(json!({"precision": "bf16"})).unwrap();
    assert_eq!(serde_json::to_value(&bf16).unwrap()["precision"], "bf16");
    assert!(Finetune::before_work(&bf16).is_some());
    let e = parse(json!({"precision": "fp16"})).unwrap_err().to_string();
    assert!(
        e.contains("precision = \"fp16\"") && e.contains("CUDA"),
        "{e}"
    );
    let e = serde_json::from_value::<FinetuneParams>(json!({"precision": "f8"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`f8`") && e.contains("`bf16`"), "{e}");
}

/// Reading the loss back every few steps trains the same run as every step: the same
/// weights and the same epochs table, bit for bit.
#[test]
fn a_run_reading_its_loss_every_few_steps_is_the_same_run() {
    let dir = {
        let rng = rng_lock();
        setup(&rng)
    };
    let s = spec(dir.path(), Method::Adapters, vec![Edge::new(1, 3)], 3e-3);
    let run = |every: Option<usize>| {
        let s = RunSpec {
            loss_every: every,
            ..s.clone()
        };
        let out = dir.path().join(format!("every-{every:?}"));
        std::fs::create_dir_all(&out).unwrap();
        let rng = rng_lock();
        let r = train_run(&s, &out, |_| {}).unwrap();
        assert_eq!(r.status, RunStatus::Ok);
        let weights = trained_weights(&rng, &s, &out);
        let epochs = std::fs::read(out.join(EpochRow::FILE)).unwrap();
        (weights, epochs, r.test_accuracy)
    };
    let every_step = run(Some(1));
    assert_eq!(run(Some(3)), every_step);
    assert_eq!(run(None), every_step);
}

/// On a GPU a cache goes to its memory while the worker's share has room, else to host
/// memory; on the CPU always to host memory; nowhere when neither has room.
#[test]
fn caches_go_to_the_gpu_while_they_fit_there() {
    let mut bench = workbench::Workbench::new(workbench::CacheSettings {
        enabled: true,
        memory_mib: 2,
        device_memory_mib: 1,
    });
    let mib = 1 << 20;
    assert_eq!(
        bench.place(mib / 2, true),
        Some(graft_train::Residence::Device)
    );
    assert_eq!(
        bench.place(mib + 1, true),
        Some(graft_train::Residence::Host)
    );
    assert_eq!(
        bench.place(mib / 2, false),
        Some(graft_train::Residence::Host)
    );
    assert_eq!(bench.place(3 * mib, true), None);
}

/// Issue 27 item 3: one adapter run (a parallel and a recurrent edge) on the tiny base and a
/// generated task, its artifact id recorded per backend and CPU level with [`RUN_VERSION`]
/// in `golden/canary.txt`. A change to the numbers without a bump fails here.
#[test]
fn canary() {
    if !graft_backend::canary::in_stage_environment("tests::canary") {
        return;
    }
    let rng = rng_lock();
    let dir = setup(&rng);
    let s = spec(
        dir.path(),
        Method::Adapters,
        vec![Edge::new(0, 1), Edge::new(4, 1)],
        3e-3,
    );
    let store = graft_store::Store::open(dir.path().join("store")).unwrap();
    let (a, _) = ensure_run(&store, &s, &mut workbench::Workbench::new(s.cache), |_| {}).unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/canary.txt");
    graft_backend::canary::check(
        &golden,
        RUN_STAGE,
        RUN_VERSION,
        &a.id().to_string(),
        "graft_finetune::run::RUN_VERSION",
    )
    .unwrap_or_else(|m| panic!("{m}"));
}

/// The stage's key does not hold the runs' version, so a run bump needs a stage bump, or a
/// store keeps the stage's old runs fresh: this pair was last bumped together.
#[test]
fn the_stage_version_moves_with_the_run_version() {
    assert_eq!(
        (RUN_VERSION, Finetune::VERSION),
        (3, 5),
        "RUN_VERSION changed: bump Finetune::VERSION with it, then this pair"
    );
}
