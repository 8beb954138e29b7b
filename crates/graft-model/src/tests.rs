use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{DType, Device, Distribution, Int, Tensor, TensorData};
use graft_graph::{Edge, EdgeKind, Graph, Placement};

use crate::checkpoint::{adapter_meta, load_adapters, load_timm, save_adapters, save_timm};
use crate::{AdapterConfig, LoraConfig, ModelError, Precision, Trainable, Vit, VitConfig};

fn device() -> Device {
    graft_backend::device("cpu").expect("cpu backend")
}

fn tiny(dev: &Device) -> Vit {
    dev.seed(7);
    VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(dev)
}

fn images(dev: &Device, b: usize, size: usize) -> Tensor<4> {
    Tensor::random([b, 3, size, size], Distribution::Normal(0.0, 1.0), dev)
}

fn max_diff(a: Tensor<2>, b: Tensor<2>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// One edge of each kind for L = 2 (nodes 0..=4).
const ONE_OF_EACH: [Edge; 4] = [
    Edge::new(1, 2),
    Edge::new(3, 3),
    Edge::new(0, 4),
    Edge::new(4, 1),
];

#[test]
fn one_edge_of_each_kind() {
    let kinds: Vec<EdgeKind> = ONE_OF_EACH.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, EdgeKind::ALL);
}

#[test]
fn any_placement_gives_the_pretrained_logits_at_init() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let plain = vit.forward(x.clone());
    let g = vit.graph();
    let mut placements: Vec<Placement> = ONE_OF_EACH
        .iter()
        .map(|e| Placement::new(g, [*e]).unwrap())
        .collect();
    placements.push(Placement::new(g, ONE_OF_EACH).unwrap());
    placements.push(Placement::new(g, [Edge::new(4, 0)]).unwrap());
    for p in placements {
        let adapted = vit
            .clone()
            .with_placement(&p, &AdapterConfig::new())
            .unwrap();
        let d = max_diff(plain.clone(), adapted.forward(x.clone()));
        assert_eq!(
            d,
            0.0,
            "placement {:?} changed the logits by {d}",
            p.edges()
        );
    }
}

#[test]
fn adapters_change_the_output_once_w_up_is_not_zero() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let plain = vit.forward(x.clone());
    for e in ONE_OF_EACH {
        let mut m = vit
            .clone()
            .with_placement(
                &Placement::new(vit.graph(), [e]).unwrap(),
                &AdapterConfig::new(),
            )
            .unwrap();
        let up = &mut m.adapters[0].up;
        let shape = up.weight.val().dims();
        up.weight = Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.5), &dev));
        assert!(
            max_diff(plain.clone(), m.forward(x.clone())) > 1e-4,
            "edge {e} has no effect"
        );
    }
}

#[test]
fn bad_edges_are_rejected() {
    let dev = device();
    let vit = tiny(&dev);
    let e = Placement::new(vit.graph(), [Edge::new(5, 0)]).unwrap_err();
    assert!(e.to_string().contains("(5, 0)"), "{e}");
}

#[test]
fn trainable_counts_match_the_formula_and_print_like_peft() {
    let dev = device();
    let vit = tiny(&dev);
    let (d, r, c) = (64, 8, 5);
    let g = vit.graph();
    let all_before = vit.num_params();
    let m = vit
        .with_placement(
            &Placement::new(g, ONE_OF_EACH).unwrap(),
            &AdapterConfig::new(),
        )
        .unwrap()
        .with_trainable(Trainable::Adapters);
    let count = m.param_count();
    assert_eq!(count.trainable, 4 * (2 * d * r + r + d) + d * c + c);
    assert_eq!(count.all, all_before + 4 * (2 * d * r + r + d));
    let text = count.to_string();
    assert!(
        text.starts_with(&format!(
            "trainable params: {} || all params: {} || trainable%: ",
            count.trainable, count.all
        )),
        "{text}"
    );
    assert_eq!(
        m.clone()
            .with_trainable(Trainable::HeadOnly)
            .param_count()
            .trainable,
        d * c + c
    );
    assert_eq!(
        m.with_trainable(Trainable::Full).param_count().trainable,
        count.all
    );
}

/// Loss and gradients of `model` on a random batch, on an autodiff device.
fn grads_of(model: &Vit, dev: &Device) -> (burn::tensor::Gradients, f32) {
    let x = images(dev, 4, 16);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3], [4]), dev);
    let loss = CrossEntropyLossConfig::new()
        .init(dev)
        .forward(model.forward(x), y);
    let value = loss.clone().into_scalar::<f32>();
    (loss.backward(), value)
}

#[test]
fn gradients_reach_adapters_on_every_edge_kind_and_only_trainable_params() {
    let dev = device().autodiff();
    dev.seed(3);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let m = vit
        .with_placement(
            &Placement::new(Graph::new(2), ONE_OF_EACH).unwrap(),
            &AdapterConfig::new(),
        )
        .unwrap()
        .with_trainable(Trainable::Adapters);
    let (grads, loss) = grads_of(&m, &dev);
    assert!(loss.is_finite());
    for a in &m.adapters {
        let g =
            a.up.weight
                .val()
                .grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for adapter {}", a.edge()));
        let norm = g.abs().sum().into_scalar::<f32>();
        assert!(
            norm.is_finite() && norm > 0.0,
            "adapter {} ({:?}) gradient {norm}",
            a.edge(),
            a.edge().kind()
        );
    }
    assert!(m.head.weight.val().grad(&grads).is_some());
    assert!(
        m.blocks[0].attn.qkv.weight.val().grad(&grads).is_none(),
        "frozen backbone got a gradient"
    );
    assert!(m.cls_token.val().grad(&grads).is_none());
}

#[test]
fn trace_gives_every_node_and_its_gradient_from_one_backward_pass() {
    let dev = device().autodiff();
    dev.seed(4);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let x = images(&dev, 2, 16);
    let trace = vit.trace(x.clone()).unwrap();
    assert_eq!(trace.nodes.len(), 5);
    assert_eq!(max_diff(trace.logits.clone(), vit.forward(x.clone())), 0.0);
    let y = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 3], [2]), &dev);
    let loss = CrossEntropyLossConfig::new()
        .init(&dev)
        .forward(trace.logits.clone(), y);
    let grads = loss.backward();
    let deltas = trace.node_grads(&grads);
    assert_eq!(deltas.len(), 5);
    for (j, d) in deltas.iter().enumerate() {
        assert_eq!(d.dims(), [2, 17, 64]);
        let n = d.clone().abs().sum().into_scalar::<f32>();
        assert!(n.is_finite() && n > 0.0, "node {j}: |Δ| = {n}");
    }
    let rec = vit
        .with_placement(
            &Placement::new(Graph::new(2), [Edge::new(4, 0)]).unwrap(),
            &AdapterConfig::new(),
        )
        .unwrap();
    assert!(matches!(rec.trace(x), Err(ModelError::TraceRecurrent)));
}

#[test]
fn recurrent_top_to_input_doubles_the_blocks_flops() {
    let dev = device();
    let vit = tiny(&dev);
    let plain = vit.forward_flops();
    let rec = vit
        .with_placement(
            &Placement::new(Graph::new(2), [Edge::new(4, 0)]).unwrap(),
            &AdapterConfig::new(),
        )
        .unwrap();
    let dims = rec.config.dims();
    let blocks: u64 = (1..=4).map(|k| dims.sublayer_flops(k)).sum();
    assert_eq!(rec.forward_flops(), plain + blocks + dims.adapter_flops(8));
}

#[test]
fn adapters_round_trip_through_their_own_file() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let mut m = vit
        .clone()
        .with_placement(
            &Placement::new(vit.graph(), ONE_OF_EACH).unwrap(),
            &AdapterConfig::new().with_rank(4),
        )
        .unwrap();
    for a in &mut m.adapters {
        let shape = a.up.weight.val().dims();
        a.up.weight =
            Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.3), &dev));
    }
    let shape = m.head.weight.val().dims();
    m.head.weight = Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.3), &dev));
    let want = m.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapters.safetensors");
    save_adapters(&m, &path, "vit-cpu-tiny", "base-id").unwrap();
    let (keys, _) = crate::checkpoint::read_header(&path).unwrap();
    assert!(
        keys.contains_key("adapters.4_1.down.weight"),
        "{:?}",
        keys.keys().collect::<Vec<_>>()
    );
    assert!(keys.contains_key("head.weight") && !keys.contains_key("blocks.0.norm1.weight"));
    assert_eq!(
        keys["adapters.0_4.down.weight"].0,
        vec![4, 64],
        "PyTorch layout [out, in]"
    );
    let meta = adapter_meta(&path).unwrap();
    assert_eq!(meta.placement.len(), 4);
    assert_eq!(meta.adapter.rank, 4);
    assert_eq!(
        (meta.preset.as_str(), meta.base.as_str()),
        ("vit-cpu-tiny", "base-id")
    );
    let (back, _) = load_adapters(vit, &path).unwrap();
    assert_eq!(max_diff(want, back.forward(x)), 0.0);
}

#[test]
fn timm_names_round_trip_and_mismatches_are_listed() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_timm(&vit, &path).unwrap();
    let (keys, _) = crate::checkpoint::read_header(&path).unwrap();
    let expected = crate::checkpoint::timm_keys(&vit.config);
    let got: std::collections::BTreeMap<String, Vec<usize>> =
        keys.into_iter().map(|(k, (s, _))| (k, s)).collect();
    assert_eq!(got, expected);
    dev.seed(99);
    let mut other = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let report = load_timm(&mut other, &path).unwrap();
    assert_eq!(report.head_kept_fresh, None);
    assert_eq!(max_diff(vit.forward(x.clone()), other.forward(x)), 0.0);

    // Wrong shapes: a deeper, wider model lists what is missing and what does not fit.
    let mut wrong = VitConfig::new(16, 4, 32, 3, 2, 5).init(&dev);
    let e = load_timm(&mut wrong, &path).unwrap_err().to_string();
    assert!(
        e.contains("missing keys") && e.contains("blocks.2.attn.qkv.weight"),
        "{e}"
    );
    assert!(
        e.contains("shape mismatches") && e.contains("cls_token [1, 1, 64] (expected [1, 1, 32])"),
        "{e}"
    );
    let mut shallow = VitConfig::new(16, 4, 64, 1, 2, 5).init(&dev);
    let e = load_timm(&mut shallow, &path).unwrap_err().to_string();
    assert!(
        e.contains("unexpected keys") && e.contains("blocks.1.mlp.fc2.bias"),
        "{e}"
    );
    let e = load_timm(&mut shallow, &dir.path().join("absent.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
}

// ---- equivalence with timm (PyTorch) ----

fn reference(py: &Path, args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/timm_reference.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "timm_reference.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read_tensor(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let data = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, t.shape().to_vec())
}

fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

/// `config`'s logits for timm's, on weights timm drew: a plain `VisionTransformer` of
/// `config`'s shape, or, with `timm_model`, timm's registered model of that name (its family's
/// options) at `config`'s sizes.
fn check_against_timm(test: &str, config: VitConfig, seed: u64, timm_model: Option<&str>) {
    let backend = if cfg!(feature = "tch") { "tch" } else { "flex" };
    let Some((py, running)) = graft_external::require(
        &format!("graft-model {test} ({backend})"),
        graft_external::VENV,
        graft_external::venv_python(),
    ) else {
        return;
    };
    let mut json = serde_json::json!({
        "image_size": config.image_size, "patch_size": config.patch_size, "dim": config.dim,
        "depth": config.depth, "heads": config.heads, "classes": config.classes, "seed": seed,
    });
    if let Some(name) = timm_model {
        json["timm"] = name.into();
    }
    let json = json.to_string();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    reference(&py, &["make", &json, d]);
    let dev = device();
    let mut vit = config.init(&dev);
    let report = load_timm(&mut vit, &dir.path().join("model.safetensors")).unwrap();
    assert_eq!(report.head_kept_fresh, None);
    let (input, shape) = read_tensor(&dir.path().join("io.safetensors"), "input");
    let (want, wshape) = read_tensor(&dir.path().join("io.safetensors"), "logits");
    let x = Tensor::<4>::from_data(
        TensorData::new(input, [shape[0], shape[1], shape[2], shape[3]]),
        &dev,
    );
    let got: Vec<f32> = vit.forward(x).into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(got.len(), wshape.iter().product::<usize>());
    let worst = worst_diff(&got, &want);
    assert!(
        worst < 1e-4,
        "graft vs timm logits differ by {worst} for {config:?}"
    );

    // In21k-style file without a head: loads, keeps the fresh head, says so.
    let mut nohead = config.init(&dev);
    let r = load_timm(&mut nohead, &dir.path().join("nohead.safetensors")).unwrap();
    assert_eq!(r.head_kept_fresh.as_deref(), Some("the file has no head"));

    // Our own checkpoint loads strictly in timm and gives the same logits.
    let ours = dir.path().join("ours.safetensors");
    save_timm(&vit, &ours).unwrap();
    let out = dir.path().join("timm-logits.safetensors");
    reference(
        &py,
        &[
            "load",
            &json,
            ours.to_str().unwrap(),
            dir.path().join("io.safetensors").to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let (back, _) = read_tensor(&out, "logits");
    let worst = worst_diff(&back, &want);
    assert!(
        worst < 1e-4,
        "timm on graft's checkpoint differs by {worst}"
    );
    running.passed();
}

#[test]
fn matches_timm_tiny() {
    check_against_timm(
        "matches_timm_tiny",
        VitConfig::new(16, 4, 64, 2, 2, 7),
        1,
        None,
    );
}

#[test]
fn matches_timm_small() {
    check_against_timm(
        "matches_timm_small",
        VitConfig::new(32, 8, 192, 4, 3, 10),
        2,
        None,
    );
}

// ---- the ViT families, against timm's registered models ----

/// Each family preset with the timm model it has the layout of (`VitConfig::preset`'s table).
const FAMILY_PRESETS: &[(&str, &str)] = &[
    ("vit-l16", "vit_large_patch16_224"),
    ("vit-b16", "vit_base_patch16_224"),
    ("vit-s16", "vit_small_patch16_224"),
    ("vit-ti16", "vit_tiny_patch16_224"),
    ("deit-b16", "deit_base_patch16_224"),
    ("deit-s16", "deit_small_patch16_224"),
    ("deit-ti16", "deit_tiny_patch16_224"),
    ("deit-b16-distilled", "deit_base_distilled_patch16_224"),
    ("deit-s16-distilled", "deit_small_distilled_patch16_224"),
    ("dinov2-s14", "vit_small_patch14_dinov2"),
    ("dinov2-b14", "vit_base_patch14_dinov2"),
    ("dinov2-l14", "vit_large_patch14_dinov2"),
    ("dinov2-s14-reg4", "vit_small_patch14_reg4_dinov2"),
    ("dinov2-b14-reg4", "vit_base_patch14_reg4_dinov2"),
    ("clip-b16", "vit_base_patch16_clip_224"),
    ("clip-b16-quickgelu", "vit_base_patch16_clip_quickgelu_224"),
    ("clip-l14", "vit_large_patch14_clip_224"),
    ("clip-l14-quickgelu", "vit_large_patch14_clip_quickgelu_224"),
];

/// `preset`'s family options at a small size (16 px, patches of 4, d 64, 2 blocks), against
/// timm's `model` at that size: the logits of timm's weights, and timm's logits of graft's
/// checkpoint.
fn family_matches_timm(test: &str, preset: &str, seed: u64) {
    let model = FAMILY_PRESETS
        .iter()
        .find(|(p, _)| *p == preset)
        .map(|(_, m)| *m)
        .expect("listed preset");
    let full = VitConfig::preset(preset, 7).expect("preset");
    let small = VitConfig {
        image_size: 16,
        patch_size: 4,
        dim: 64,
        depth: 2,
        heads: 2,
        ..full
    };
    check_against_timm(test, small, seed, Some(model));
}

#[test]
fn deit_matches_timm() {
    family_matches_timm("deit_matches_timm", "deit-s16", 3);
}

#[test]
fn deit_distilled_matches_timm() {
    family_matches_timm("deit_distilled_matches_timm", "deit-b16-distilled", 4);
}

#[test]
fn dinov2_matches_timm() {
    family_matches_timm("dinov2_matches_timm", "dinov2-s14", 5);
}

#[test]
fn dinov2_with_registers_matches_timm() {
    family_matches_timm("dinov2_with_registers_matches_timm", "dinov2-b14-reg4", 6);
}

#[test]
fn clip_matches_timm() {
    family_matches_timm("clip_matches_timm", "clip-b16", 7);
}

#[test]
fn clip_quickgelu_matches_timm() {
    family_matches_timm("clip_quickgelu_matches_timm", "clip-l14-quickgelu", 8);
}

/// Every family preset at its own size has the keys and shapes of timm's registered model's
/// state dict (built on PyTorch's meta device: no weights are drawn).
#[test]
fn every_family_preset_has_its_timm_models_keys() {
    let backend = if cfg!(feature = "tch") { "tch" } else { "flex" };
    let Some((py, running)) = graft_external::require(
        &format!("graft-model every_family_preset_has_its_timm_models_keys ({backend})"),
        graft_external::VENV,
        graft_external::venv_python(),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys.json");
    let mut args = vec!["keys".to_owned(), "1000".into(), out.display().to_string()];
    args.extend(FAMILY_PRESETS.iter().map(|(_, m)| m.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    reference(&py, &args);
    let timm: std::collections::BTreeMap<String, std::collections::BTreeMap<String, Vec<usize>>> =
        serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for (preset, model) in FAMILY_PRESETS {
        let ours = crate::checkpoint::timm_keys(&VitConfig::preset(preset, 1000).unwrap());
        assert_eq!(&ours, &timm[*model], "{preset} against timm's {model}");
    }
    // Every preset but the CPU ones is listed.
    for preset in crate::PRESETS {
        assert!(
            preset.starts_with("vit-cpu") || FAMILY_PRESETS.iter().any(|(p, _)| p == preset),
            "{preset} has no timm model to check against"
        );
    }
    running.passed();
}

/// A state dict of another family is refused with the layout its keys show; one of a family
/// graft does not know is refused naming the first key it cannot place and the families it
/// knows.
#[test]
fn other_and_unknown_families_are_named() {
    let dev = device();
    let dir = tempfile::tempdir().unwrap();
    let small = |preset| VitConfig {
        image_size: 16,
        patch_size: 4,
        dim: 64,
        depth: 2,
        heads: 2,
        ..VitConfig::preset(preset, 5).unwrap()
    };
    let dinov2 = dir.path().join("dinov2.safetensors");
    save_timm(&small("dinov2-s14-reg4").init(&dev), &dinov2).unwrap();
    let mut vit = small("vit-b16").init(&dev);
    let e = load_timm(&mut vit, &dinov2).unwrap_err().to_string();
    assert!(
        e.contains("(dinov2 (4 register tokens, layer scale)) does not fit vit d=64"),
        "{e}"
    );
    assert!(
        e.contains("blocks.0.ls1.gamma") && e.contains("reg_token"),
        "{e}"
    );
    assert!(!e.contains("fits preset"), "no preset has this size: {e}");

    // A Swin-like state dict: its keys are not a ViT's.
    let swin = dir.path().join("swin.safetensors");
    let t = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        (vec![0u8; 4 * n], shape)
    };
    let tensors = [
        ("patch_embed.proj.weight", t(vec![64, 3, 4, 4])),
        (
            "layers.0.blocks.0.attn.relative_position_bias_table",
            t(vec![49, 2]),
        ),
        ("norm.weight", t(vec![64])),
    ];
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(k, (bytes, shape))| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .unwrap();
            (k.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &swin).unwrap();
    let e = load_timm(&mut vit, &swin).unwrap_err().to_string();
    assert!(
        e.contains("swin.safetensors: key \"layers.0.blocks.0.attn.relative_position_bias_table\" belongs to none"),
        "{e}"
    );
    for family in ["vit", "deit-distilled", "dinov2", "clip"] {
        assert!(e.contains(family), "{e}");
    }
}

/// A file's keys and shapes name the presets it fits, all of those a state dict cannot tell
/// apart; the mismatch error names them.
#[test]
fn a_file_names_the_presets_it_fits() {
    let header = |preset| -> crate::checkpoint::HeaderTensors {
        let keys = crate::checkpoint::timm_keys(&VitConfig::preset(preset, 1000).unwrap());
        keys.into_iter()
            .map(|(k, s)| (k, (s, "F32".to_owned())))
            .collect()
    };
    let fits = crate::checkpoint::fitting_presets;
    assert_eq!(fits(&header("dinov2-s14")), ["dinov2-s14"]);
    assert_eq!(fits(&header("dinov2-b14-reg4")), ["dinov2-b14-reg4"]);
    assert_eq!(fits(&header("deit-b16")), ["vit-b16", "deit-b16"]);
    assert_eq!(
        fits(&header("clip-l14")),
        ["clip-l14", "clip-l14-quickgelu"]
    );
    assert_eq!(fits(&header("vit-cpu-p8")), ["vit-cpu-p8"]);
    let mut headless = header("deit-b16-distilled");
    headless.retain(|k, _| !k.starts_with("head"));
    assert_eq!(fits(&headless), ["deit-b16-distilled"]);
    let e = ModelError::Mismatch(Box::new(crate::KeyMismatch {
        path: "m.safetensors".into(),
        model: "vit d=768 L=12 patch=16 image=224".into(),
        layout: "dinov2 (layer scale)".into(),
        fits: fits(&header("dinov2-s14")),
        missing: vec![],
        unexpected: vec!["blocks.0.ls1.gamma".into()],
        shapes: vec![],
    }));
    assert!(
        e.to_string()
            .ends_with("\n  the file fits preset dinov2-s14"),
        "{e}"
    );
}

/// The distilled DeiT's logits are the mean of its two heads, each on its own token, and
/// both heads train.
#[test]
fn distilled_logits_average_the_two_heads() {
    let dev = device();
    let c = VitConfig {
        image_size: 16,
        patch_size: 4,
        dim: 64,
        depth: 2,
        heads: 2,
        ..VitConfig::preset("deit-s16-distilled", 5).unwrap()
    };
    let vit = c.init(&dev).with_trainable(Trainable::HeadOnly);
    let last = vit.nodes(images(&dev, 2, 16)).pop().unwrap();
    assert_eq!(
        last.dims(),
        [2, 18, 64],
        "16 patches, the class and distillation tokens"
    );
    // With `head_dist` a copy of `head`, the mean of the two heads is the head on the mean of
    // the two tokens (`pool`); with its own, it is not.
    let mut same = vit.clone();
    same.head_dist = Some(same.head.clone());
    let pooled = same.head.forward(same.pool(last.clone()));
    assert!(max_diff(same.logits(last.clone()), pooled) < 1e-5);
    let pooled = vit.head.forward(vit.pool(last.clone()));
    assert!(max_diff(vit.logits(last), pooled) > 1e-4);
    let heads = vit.head.num_params() + vit.head_dist.as_ref().unwrap().num_params();
    assert_eq!(vit.param_count().trainable, heads);
}

// ---- LoRA on the query and value projections ----

/// `vit` with LoRA of `config` whose B factors are drawn (not zero), so that it changes the
/// output.
fn with_drawn_lora(vit: Vit, config: &LoraConfig, dev: &Device) -> Vit {
    let mut m = vit.with_lora(config);
    for l in &mut m.lora {
        for b in [&mut l.q_b, &mut l.v_b] {
            let shape = b.weight.val().dims();
            b.weight =
                Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 0.3), dev));
        }
    }
    m
}

#[test]
fn lora_at_init_gives_the_pretrained_logits() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let plain = vit.forward(x.clone());
    for config in [
        LoraConfig::new(),
        LoraConfig::new().with_rank(2).with_alpha(16.0),
    ] {
        let m = vit.clone().with_lora(&config);
        assert_eq!(m.lora.len(), 2);
        assert_eq!(
            max_diff(plain.clone(), m.forward(x.clone())),
            0.0,
            "{config:?}"
        );
    }
    // Drawn B factors change it.
    let m = with_drawn_lora(vit, &LoraConfig::new(), &dev);
    assert!(max_diff(plain, m.forward(x)) > 1e-4);
}

/// The update is s·B A x on the query and value thirds of the qkv output, nothing on the
/// keys: the attention with LoRA equals the attention whose qkv weight has
/// s·[A_q B_q, 0, A_v B_v] added (burn's `[in, out]` layout; columns laid out q, k, v).
#[test]
fn lora_adds_s_b_a_x_to_queries_and_values_only() {
    let dev = device();
    let config = LoraConfig::new().with_rank(4).with_alpha(16.0);
    assert_eq!(config.scale(), 4.0);
    let m = with_drawn_lora(tiny(&dev), &config, &dev);
    let (attn, lora) = (&m.blocks[1].attn, &m.lora[1]);
    let d = 64;
    let rows: Tensor<2> = Tensor::random([6, d], Distribution::Normal(0.0, 1.0), &dev);
    let delta = lora.delta(rows.clone());
    assert_eq!(delta.dims(), [6, 3 * d]);
    let part = |k: usize| delta.clone().narrow(1, k * d, d);
    let want = |a: &burn::nn::Linear, b: &burn::nn::Linear| {
        rows.clone().matmul(a.weight.val()).matmul(b.weight.val()) * 4.0
    };
    assert!(max_diff(part(0), want(&lora.q_a, &lora.q_b)) < 1e-4);
    assert_eq!(
        part(1).abs().max().into_scalar::<f32>(),
        0.0,
        "keys changed"
    );
    assert!(max_diff(part(2), want(&lora.v_a, &lora.v_b)) < 1e-4);

    let ab = |a: &burn::nn::Linear, b: &burn::nn::Linear| {
        a.weight.val().matmul(b.weight.val()) * 4.0 // [d, d]
    };
    let merged = Tensor::cat(
        vec![
            ab(&lora.q_a, &lora.q_b),
            Tensor::zeros([d, d], &dev),
            ab(&lora.v_a, &lora.v_b),
        ],
        1,
    );
    let mut folded = attn.clone();
    folded.qkv.weight = Param::from_tensor(attn.qkv.weight.val() + merged);
    let x: Tensor<3> = Tensor::random([2, 17, d], Distribution::Normal(0.0, 1.0), &dev);
    let got = attn.forward_with(x.clone(), Some(lora));
    let want = folded.forward(x);
    let worst = (got - want).abs().max().into_scalar::<f32>();
    assert!(
        worst < 1e-4,
        "LoRA differs from the folded weight by {worst}"
    );
}

#[test]
fn lora_trainable_count_matches_the_formula() {
    let dev = device();
    let vit = tiny(&dev);
    let all_before = vit.num_params();
    let (l, d, c) = (2, 64, 5);
    for r in [8, 3] {
        let m = vit
            .clone()
            .with_lora(&LoraConfig::new().with_rank(r))
            .with_trainable(Trainable::Adapters);
        let count = m.param_count();
        // q and v in each of L blocks, A: r x d and B: d x r each; plus the head.
        assert_eq!(count.trainable, 2 * l * 2 * r * d + d * c + c, "r = {r}");
        assert_eq!(count.trainable, m.config.dims().lora_tuning_params(r));
        assert_eq!(count.all, all_before + 2 * l * 2 * r * d);
    }
}

#[test]
fn gradients_reach_only_lora_and_the_head() {
    struct Frozen<'a> {
        grads: &'a burn::tensor::Gradients,
        seen: usize,
        with_grad: usize,
    }
    impl burn::module::ModuleVisitor for Frozen<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.seen += 1;
            self.with_grad += usize::from(param.val().grad(self.grads).is_some());
        }
    }
    let dev = device().autodiff();
    dev.seed(3);
    let vit = VitConfig::preset("vit-cpu-tiny", 5).unwrap().init(&dev);
    let m = with_drawn_lora(vit, &LoraConfig::new(), &dev).with_trainable(Trainable::Adapters);
    let (grads, loss) = grads_of(&m, &dev);
    assert!(loss.is_finite());
    for (k, l) in m.lora.iter().enumerate() {
        for (name, p) in [
            ("q_a", &l.q_a),
            ("q_b", &l.q_b),
            ("v_a", &l.v_a),
            ("v_b", &l.v_b),
        ] {
            let g = p
                .weight
                .val()
                .grad(&grads)
                .unwrap_or_else(|| panic!("no gradient for lora.{k}.{name}"));
            let norm = g.abs().sum().into_scalar::<f32>();
            assert!(norm.is_finite() && norm > 0.0, "lora.{k}.{name}: {norm}");
        }
    }
    assert!(m.head.weight.val().grad(&grads).is_some());
    let mut frozen = Frozen {
        grads: &grads,
        seen: 0,
        with_grad: 0,
    };
    m.patch_embed.visit(&mut frozen);
    m.blocks.visit(&mut frozen);
    m.norm.visit(&mut frozen);
    assert!(frozen.seen > 20);
    assert_eq!(frozen.with_grad, 0, "the frozen backbone got gradients");
    assert!(m.cls_token.val().grad(&grads).is_none());
    assert!(m.pos_embed.val().grad(&grads).is_none());
}

/// LoRA changes the first sub-layer: a pass starts at node 0 (the embedding, which the
/// activation cache may keep), and the plain nodes stay LoRA-free.
#[test]
fn lora_starts_at_the_input_and_leaves_the_plain_nodes_alone() {
    let dev = device();
    let vit = tiny(&dev);
    let m = with_drawn_lora(vit.clone(), &LoraConfig::new(), &dev);
    let start = m.plain_start().unwrap();
    assert_eq!((start.entry, start.reads.len()), (0, 0));
    let x = images(&dev, 2, 16);
    let value = m.plain_node(x.clone(), 0);
    let from_node = m.forward_input(crate::ModelInput::Node {
        node: 0,
        value,
        reads: Vec::new(),
    });
    assert!(max_diff(m.forward(x.clone()), from_node) < 1e-5);
    let plain = |v: &Vit| v.plain_node(x.clone(), 3).reshape([2, 17 * 64]);
    assert_eq!(max_diff(plain(&vit), plain(&m)), 0.0);
    let dims = m.config.dims();
    assert_eq!(m.forward_flops(), vit.forward_flops() + dims.lora_flops(8));
}

#[test]
fn lora_round_trips_through_the_adapter_file_and_stays_out_of_timm_files() {
    let dev = device();
    let vit = tiny(&dev);
    let x = images(&dev, 2, 16);
    let config = LoraConfig::new().with_rank(4).with_alpha(6.0);
    let m = with_drawn_lora(vit.clone(), &config, &dev);
    let want = m.forward(x.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapters.safetensors");
    save_adapters(&m, &path, "vit-cpu-tiny", "base-id").unwrap();
    let (keys, _) = crate::checkpoint::read_header(&path).unwrap();
    assert_eq!(keys["lora.0.q_a.weight"].0, vec![4, 64], "A: [r, d]");
    assert_eq!(keys["lora.1.v_b.weight"].0, vec![64, 4], "B: [d, r]");
    assert_eq!(keys.keys().filter(|k| k.starts_with("lora.")).count(), 8);
    assert!(!keys.keys().any(|k| k.starts_with("blocks.")));
    let meta = adapter_meta(&path).unwrap();
    assert_eq!(meta.lora, Some(config));
    assert!(meta.placement.is_empty());
    let (back, _) = load_adapters(vit.clone(), &path).unwrap();
    assert_eq!(max_diff(want, back.forward(x)), 0.0);

    // A timm checkpoint of a model with LoRA holds the backbone alone.
    let timm = dir.path().join("model.safetensors");
    save_timm(&m, &timm).unwrap();
    let (keys, _) = crate::checkpoint::read_header(&timm).unwrap();
    let got: std::collections::BTreeSet<String> = keys.into_keys().collect();
    let expected: std::collections::BTreeSet<String> = crate::checkpoint::timm_keys(&m.config)
        .into_keys()
        .collect();
    assert_eq!(got, expected);
    // An adapter file without LoRA leaves none in the model it loads into.
    let plain_path = dir.path().join("plain.safetensors");
    save_adapters(&vit, &plain_path, "vit-cpu-tiny", "base-id").unwrap();
    assert_eq!(adapter_meta(&plain_path).unwrap().lora, None);
    let (back, _) = load_adapters(m, &plain_path).unwrap();
    assert!(back.lora.is_empty());
}

// ---- precision: autocast's semantics ----

/// `||a - b|| / ||a||` of two tensors' values.
fn relative_error<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let norm = |t: Tensor<D>| t.powi_scalar(2).sum().sqrt().into_scalar::<f32>();
    norm(a.clone() - b) / norm(a)
}

/// In bf16 and fp16 the frozen blocks' linear weights are stored in the low dtype once,
/// trained parameters and their gradients stay f32, and the logits (f32) and gradients are
/// the f32 model's within the low dtype's rounding: relative errors under 3e-2 for bf16 (8
/// significant bits, about 4e-3 per rounding) and 4e-3 for fp16 (11 bits), over every edge
/// kind, LoRA and the head.
#[test]
fn low_precision_keeps_f32_values_within_its_rounding() {
    let dev = device().autodiff();
    dev.seed(11);
    let placement = Placement::new(Graph::new(2), ONE_OF_EACH).unwrap();
    let mut base = VitConfig::preset("vit-cpu-tiny", 5)
        .unwrap()
        .init(&dev)
        .with_placement(&placement, &AdapterConfig::new())
        .unwrap()
        .with_trainable(Trainable::Adapters);
    for a in &mut base.adapters {
        let shape = a.up.weight.val().dims();
        let drawn = Tensor::random(shape, Distribution::Normal(0.0, 0.1), &dev);
        a.up.weight = Param::from_tensor(drawn).set_require_grad(true);
    }
    let base = with_drawn_lora(base, &LoraConfig::new(), &dev);
    let run = |m: &Vit| {
        dev.seed(12);
        let (grads, loss) = grads_of(m, &dev);
        let down = |k: usize| m.adapters[k].down.weight.val().grad(&grads).unwrap();
        let lora = m.lora[1].v_b.weight.val().grad(&grads).unwrap();
        (loss, [down(0), down(1), down(2), down(3)], lora)
    };
    let (loss, grads, lora) = run(&base);
    for (precision, tolerance) in [(Precision::Bf16, 3e-2), (Precision::Fp16, 4e-3)] {
        let low = base.clone().with_precision(precision);
        let dtype = precision.low().map(DType::from).unwrap();
        assert_eq!(low.blocks[1].mlp.fc2.weight.val().dtype(), dtype);
        assert_eq!(
            low.blocks[0].attn.qkv.bias.as_ref().unwrap().val().dtype(),
            dtype
        );
        for trained in [low.adapters[2].up.weight.val(), low.head.weight.val()] {
            assert_eq!(trained.dtype(), DType::F32, "{precision:?}");
        }
        let (low_loss, low_grads, low_lora) = run(&low);
        assert!(
            ((loss - low_loss) / loss).abs() < tolerance,
            "{precision:?}: loss {low_loss} against {loss}"
        );
        for (k, (g, l)) in grads.iter().zip(low_grads).enumerate() {
            assert_eq!(l.dtype(), DType::F32);
            let e = relative_error(g.clone(), l);
            assert!(
                e < tolerance,
                "{precision:?}: adapter {k}'s gradient off by {e}"
            );
        }
        let e = relative_error(lora.clone(), low_lora);
        assert!(e < tolerance, "{precision:?}: LoRA's gradient off by {e}");
        // A backbone made trainable again is f32 again, and so are its gradients.
        let full = low.with_trainable(Trainable::Full);
        assert_eq!(full.blocks[1].mlp.fc2.weight.val().dtype(), DType::F32);
        assert_eq!(full.precision, precision);
    }
}
