use std::path::Path;

use burn::tensor::{Distribution, TensorData};
use graft_graph::Graph;

use super::*;

/// The tiny model's logits with an explicit d×d map `w` (zero) on edge `e`, per the spec's
/// forward: forward edges add at node j, a sequential edge after node j, a recurrent edge
/// in a second pass that restarts at j from the first pass's x_i.
fn forward_with_map(vit: &Vit, images: Tensor<4>, e: Edge, w: &Tensor<2>) -> Tensor<2> {
    let n = 2 * vit.config.depth + 1;
    let map = |x: Tensor<3>| x.matmul(w.clone().unsqueeze::<3>());
    let mut plain: Vec<Tensor<3>> = Vec::new();
    for k in 0..n {
        let mut x = if k == 0 {
            vit.embed(images.clone())
        } else {
            vit.sublayer(k, plain[k - 1].clone())
        };
        if k == e.j && e.i < e.j {
            x = x + map(plain[e.i].clone());
        }
        if k == e.j && e.i == e.j {
            x = x.clone() + map(x);
        }
        plain.push(x);
    }
    let mut last = plain[n - 1].clone();
    if e.i > e.j {
        let mut x = plain[e.j].clone() + map(plain[e.i].clone());
        for k in e.j + 1..n {
            x = vit.sublayer(k, x);
        }
        last = x;
    }
    vit.head.forward(vit.pool(last))
}

#[test]
fn one_pass_gradients_equal_explicit_zero_maps_on_every_kind_of_edge() {
    let dev = graft_backend::device("cpu").unwrap().autodiff();
    dev.seed(11);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let images = Tensor::<4>::random([3, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3, 4], [3]), &dev);
    let probe = edge_gradients(
        &vit,
        std::iter::once((images.clone(), labels.clone())),
        Tokens::All,
    )
    .unwrap();
    assert_eq!(probe.rows, 3 * 17);
    let d = vit.config.dim;
    // Parallel, sequential, long-range, recurrent.
    for e in [
        Edge::new(1, 2),
        Edge::new(2, 2),
        Edge::new(0, 3),
        Edge::new(4, 1),
    ] {
        let w = Tensor::<2>::zeros([d, d], &dev).require_grad();
        let logits = forward_with_map(&vit, images.clone(), e, &w);
        let loss = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(logits, labels.clone());
        let grads = loss.backward();
        // y = x W with W [in, out]: its gradient is X_iᵀ Δ_j = G_ijᵀ.
        let gw: Vec<f32> = w.grad(&grads).unwrap().to_data().iter::<f32>().collect();
        let g = probe.block(e);
        let scale = g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(scale > 0.0, "{e}: zero gradient");
        for a in 0..d {
            for b in 0..d {
                let diff = (g[a * d + b] - gw[b * d + a] as f64).abs();
                assert!(
                    diff <= 1e-4 * scale,
                    "{e} [{a}, {b}]: {} vs {}",
                    g[a * d + b],
                    gw[b * d + a]
                );
            }
        }
    }
}

#[test]
fn class_token_probe_uses_the_exact_shortcut_and_scores_every_edge() {
    let dev = graft_backend::device("cpu").unwrap().autodiff();
    dev.seed(12);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let images = Tensor::<4>::random([6, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 0], [6]), &dev);
    let probe = edge_gradients(&vit, std::iter::once((images, labels)), Tokens::Cls).unwrap();
    assert_eq!(probe.rows, 6);
    assert!(probe.factors.is_some());
    let rows = edge_scores(&probe, 64, TolRule::Relative, 1e-3).unwrap();
    assert_eq!(rows.len(), 25);
    let n = Graph::new(2).nodes();
    assert_eq!(n * n, rows.len());
    // Direct SVD of each block agrees with the shortcut; rank is at most the row count.
    let direct = EdgeGradients {
        factors: None,
        ..probe
    };
    let rows_direct = edge_scores(&direct, 64, TolRule::Relative, 1e-3).unwrap();
    for (a, b) in rows.iter().zip(&rows_direct) {
        assert!(a.rank <= 6, "{a:?}");
        assert_eq!((a.i, a.j), (b.i, b.j));
        let tol = 1e-3 * b.spectral.max(1e-12);
        assert!(
            (a.spectral - b.spectral).abs() <= tol,
            "{} vs {}",
            a.spectral,
            b.spectral
        );
        assert!((a.nuclear - b.nuclear).abs() <= 64.0 * tol);
    }
}

fn tiny_probe(tokens: Tokens) -> EdgeGradients {
    let (vit, images, labels) = tiny_inputs();
    edge_gradients(&vit, std::iter::once((images, labels)), tokens).unwrap()
}

/// vit-cpu-tiny for 5 classes drawn at seed 13, 4 random images and their labels.
fn tiny_inputs() -> (Vit, Tensor<4>, Tensor<1, Int>) {
    let dev = graft_backend::device("cpu").unwrap().autodiff();
    dev.seed(13);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let images = Tensor::<4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), &dev);
    (vit, images, labels)
}

#[test]
fn a_failed_svd_is_an_error_naming_the_edge() {
    let probe = tiny_probe(Tokens::All);
    let failing = Edge::new(3, 1);
    let e = edge_scores_with(&probe, 64, TolRule::Relative, 1e-3, &|edge, sv| {
        if edge == failing {
            Err("SVD failed: NoConvergence".into())
        } else {
            sv
        }
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("edge (3, 1)") && e.contains("NoConvergence"),
        "{e}"
    );
}

#[test]
fn a_gradient_that_is_not_finite_fails_the_probe_naming_the_edge() {
    for tokens in [Tokens::All, Tokens::Cls] {
        let mut probe = tiny_probe(tokens);
        let d = probe.dim;
        let nd = probe.nodes * d;
        // Block (j, i) = (2, 0) is edge (0, 2).
        probe.g[(2 * d + 5) * nd + 7] = f32::NAN;
        if let Some((rd, _)) = &mut probe.factors {
            rd[2][(0, 0)] = f64::NAN;
        }
        let e = edge_scores(&probe, 64, TolRule::Relative, 1e-3)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("edge (0, 2)") && e.contains("NaN"),
            "{tokens:?}: {e}"
        );
    }
}

#[test]
fn a_failed_trace_fails_the_probe_instead_of_leaving_zeros() {
    let dev = graft_backend::device("cpu").unwrap().autodiff();
    dev.seed(14);
    let config = VitConfig::preset("vit-cpu-tiny", 5).unwrap();
    let placement = graft_graph::Placement::new(config.graph(), [Edge::new(4, 1)]).unwrap();
    // The node trace is defined on a network without recurrent edges: it refuses this one.
    let vit = config
        .init(&dev)
        .with_placement(&placement, &graft_model::AdapterConfig::new())
        .unwrap();
    let images = Tensor::<4>::random([2, 3, 16, 16], Distribution::Normal(0.0, 1.0), &dev);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &dev);
    let e = edge_gradients(&vit, std::iter::once((images, labels)), Tokens::All)
        .err()
        .expect("an error")
        .to_string();
    assert!(e.contains("probe batch 0") && e.contains("trace"), "{e}");
    let none = edge_gradients(&vit, std::iter::empty(), Tokens::All)
        .err()
        .expect("an error");
    assert!(matches!(none, ProbeError::NoBatches), "{none}");
}

/// Issue 27 item 3: the probe stage on a random tiny base and a generated task, its scores'
/// artifact and its linear-probe head's, recorded per backend and CPU level with
/// [`Probe::VERSION`] and [`HEAD_VERSION`] in `golden/canary.txt` and
/// `golden/canary-head.txt`. A change to the numbers without a bump fails here.
#[test]
fn canary() {
    if !graft_backend::canary::in_stage_environment("tests::canary") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let run = |params: Value, inputs: Vec<String>, stage: fn(&graft_stage::StageArgs) -> String| {
        stage(&graft_stage::StageArgs::run_json(&store, &params, &inputs))
    };
    fn id(o: graft_stage::Outcome) -> String {
        o.artifact.unwrap().to_string()
    }
    let dataset = run(
        json!({ "source": "procedural", "task": "textures", "image_size": 16, "seed": 1,
                "train": 64, "val": 32, "test": 32 }),
        Vec::new(),
        |a| id(graft_stage::execute::<graft_prep::Prep>(a).unwrap()),
    );
    let base = dir.path().join("base.safetensors");
    {
        let dev = graft_backend::device("cpu").unwrap();
        dev.seed(7);
        let vit = VitConfig::preset("vit-cpu-tiny", 16).unwrap().init(&dev);
        graft_model::checkpoint::save_timm(&vit, &base).unwrap();
    }
    let probe = run(
        json!({ "preset": "vit-cpu-tiny", "checkpoint": base.display().to_string(),
                "batch": 16, "batches": 2, "head_epochs": 2, "seed": 5 }),
        vec![format!("dataset={dataset}")],
        |a| id(graft_stage::execute::<Probe>(a).unwrap()),
    );
    let s = graft_store::Store::open(&store).unwrap();
    let heads: Vec<String> = std::fs::read_dir(store.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            let a = s.artifact(&ArtifactId::parse(name).unwrap()).unwrap();
            a.manifest().stage == "probe-head"
        })
        .collect();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("golden");
    let check = |file: &str, stage: &str, version: u32, output: &str, what: &str| {
        graft_backend::canary::check(&golden.join(file), stage, version, output, what)
            .unwrap_or_else(|m| panic!("{m}"))
    };
    check(
        "canary.txt",
        "probe",
        Probe::VERSION,
        &probe,
        "Probe::VERSION",
    );
    check(
        "canary-head.txt",
        "probe-head",
        HEAD_VERSION,
        &heads[0],
        "graft_probe::HEAD_VERSION",
    );
}

/// The probe's key does not hold the head's version, so a head bump needs a probe bump, or
/// a store keeps scores read from the old head fresh: this pair was last bumped together
/// (the probe alone since: 4, the in-place sum of G on tch).
#[test]
fn the_probe_version_moves_with_the_head_version() {
    assert_eq!(
        (HEAD_VERSION, Probe::VERSION),
        (2, 4),
        "HEAD_VERSION changed: bump Probe::VERSION with it, then this pair"
    );
}

#[test]
fn a_timm_name_missing_from_the_hugging_face_cache_is_refused_by_validate() {
    let name = "timm/graft_no_such_model.test";
    let p: ProbeParams =
        serde_json::from_value(serde_json::json!({"checkpoint": name, "preset": "vit-cpu-tiny"}))
            .unwrap();
    let e = validate(p).unwrap_err().to_string();
    assert!(e.contains(&format!("checkpoint = {name:?}")), "{e}");
    let p: ProbeParams = serde_json::from_value(serde_json::json!({"checkpoint": name})).unwrap();
    let e = validate(p).unwrap_err().to_string();
    assert!(e.contains("needs preset"), "{e}");
}

/// In bf16 the probe's gradients G_ij stay within bf16's rounding of f32's (relative
/// Frobenius error over all n² blocks; bf16 keeps 8 bits of mantissa, 2^-8 = 3.9e-3 per
/// product), and they are not f32's bit for bit, so the casts ran.
#[test]
fn a_bf16_probe_is_the_f32_probe_within_its_rounding() {
    let (vit, images, labels) = tiny_inputs();
    let probe = |vit: &Vit| {
        let batch = (images.clone(), labels.clone());
        edge_gradients(vit, std::iter::once(batch), Tokens::All).unwrap()
    };
    let f32 = probe(&vit);
    let bf16 = probe(&vit.clone().with_precision(Precision::Bf16));
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let diff: Vec<f32> = f32
        .g
        .iter()
        .zip(bf16.g.iter())
        .map(|(a, b)| a - b)
        .collect();
    let rel = norm(&diff) / norm(&f32.g);
    assert!(rel < 3e-2, "bf16 G off by {rel:.2e} (relative)");
    assert!(rel > 0.0, "bf16 G equals f32's bit for bit");
}

/// `precision` enters the probe's key and the head's except at f32; fp16 is refused (no
/// loss scale in one backward pass).
#[test]
fn precision_enters_the_keys_except_at_f32_and_fp16_is_refused() {
    let parse = |v: serde_json::Value| validate(serde_json::from_value(v).unwrap());
    let plain = parse(serde_json::json!({})).unwrap();
    assert!(
        serde_json::to_value(&plain)
            .unwrap()
            .get("precision")
            .is_none()
    );
    assert!(!head_key_params(&plain).contains_key("precision"));
    assert!(Probe::before_work(&plain).is_none());
    let bf16 = parse(serde_json::json!({"precision": "bf16"})).unwrap();
    assert_eq!(head_key_params(&bf16)["precision"], "bf16");
    assert_eq!(serde_json::to_value(&bf16).unwrap()["precision"], "bf16");
    assert!(Probe::before_work(&bf16).is_some());
    let e = parse(serde_json::json!({"precision": "fp16"}))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("precision = \"fp16\"") && e.contains("bf16"),
        "{e}"
    );
}
