//! Times fine-tuning steps (forward, backward, AdamW) of a preset on random images, the Rust
//! side of `bench/finetune_speed.sh` (its PyTorch twin is `bench/torch_vit.py --graft`).
//!
//! cargo run --release -p graft-train --example step_bench -- vit-cpu-small 64 adapters [cpu [steps [precision]]]
//! Prints one JSON line: backend, preset, batch, mode, precision (f32, bf16 or fp16:
//! `Vit::with_precision`), median seconds per step, images/s.

use std::time::Instant;

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use graft_model::{AdapterConfig, Precision, Trainable, VitConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("vit-cpu-small", String::as_str);
    let batch: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let mode = args.get(2).map_or("adapters", String::as_str);
    let device_name = args.get(3).map_or("cpu", String::as_str);
    // Timed steps (default 10; more for a profiler), after 3 warm-up steps.
    let steps: usize = args.get(4).map_or(Ok(10), |s| s.parse())?;
    let precision_name = args.get(5).map_or("f32", String::as_str);
    let precision: Precision = serde_json::from_value(precision_name.into())
        .map_err(|_| format!("precision {precision_name:?}: f32, bf16 or fp16"))?;
    let (warmup, classes) = (3, 12);
    let device = graft_backend::device(device_name)?;
    let ad = device.clone().autodiff();
    ad.seed(0);
    let config = VitConfig::preset(preset, classes).ok_or("unknown preset")?;
    let (trainable, placement) = match mode {
        "adapters" => (Trainable::Adapters, config.graph().parallel_all()),
        "full" => (Trainable::Full, graft_graph::Placement::empty()),
        other => return Err(format!("mode {other:?}: adapters or full").into()),
    };
    let model = config
        .init(&device)
        .with_placement(&placement, &AdapterConfig::new())?
        .train()
        .with_trainable(trainable)
        .with_precision(precision);
    let mut model = model;
    let mut optim = AdamWConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&ad);
    let s = config.image_size;
    let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % classes as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad);
    // Whole steps, and the step's three parts (forward to the loss, backward, AdamW) timed
    // apart; reading the loss and one weight back waits for lazy backends.
    let (mut times, mut fwd, mut bwd, mut opt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for k in 0..steps + warmup {
        let t = Instant::now();
        let loss = loss_fn.forward(model.forward(x.clone()), y.clone());
        let _ = loss.clone().into_scalar::<f32>();
        let t1 = Instant::now();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let t2 = Instant::now();
        model = optim.step(1e-4, model, grads);
        let _ = model.head.weight.val().into_data();
        let t3 = Instant::now();
        if k >= warmup {
            times.push((t3 - t).as_secs_f64());
            fwd.push((t1 - t).as_secs_f64());
            bwd.push((t2 - t1).as_secs_f64());
            opt.push((t3 - t2).as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let step = median(&mut times);
    println!(
        "{{\"impl\": \"graft+{}\", \"preset\": \"{preset}\", \"batch\": {batch}, \"mode\": \"{mode}\", \"precision\": \"{precision_name}\", \"device\": \"{device_name}\", \"step_s\": {step:.5}, \"forward_s\": {:.5}, \"backward_s\": {:.5}, \"optim_s\": {:.5}, \"images_per_s\": {:.1}}}",
        graft_backend::backend_name(),
        median(&mut fwd),
        median(&mut bwd),
        median(&mut opt),
        batch as f64 / step
    );
    Ok(())
}
