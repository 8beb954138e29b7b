//! Checks a device against this build's CPU backend and times a training step.
//!
//! ```sh
//! cargo run --release -p graft-model --example device_check --no-default-features \
//!     --features tch -- cuda 64
//! ```
//! (with the Makefile's `TCH_ENV`; `cpu` is then LibTorch's CPU backend).
//! 1. vit-ti16 (random weights, shared through a timm safetensors file): max |logits
//!    difference| between `cpu` and the given device.
//! 2. vit-b16 full fine-tuning forward+backward at the given batch on the device: median
//!    seconds per step over 10 steps after 3 warm-ups.
//!
//! Prints one JSON line per check.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use graft_model::checkpoint::{load_timm, save_timm};
use graft_model::{Trainable, VitConfig};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let spec = args.get(1).map(String::as_str).unwrap_or("cuda");
    let batch: usize = args.get(2).map(|b| b.parse()).transpose()?.unwrap_or(64);
    let cpu = graft_backend::device("cpu")?;
    let dev = graft_backend::device(spec)?;

    // 1. Same weights, same input, two devices.
    cpu.seed(1);
    let ti = VitConfig::preset("vit-ti16", 47).expect("preset");
    let on_cpu = ti.init(&cpu);
    let dir = tempfile::tempdir()?;
    let ckpt = dir.path().join("ti16.safetensors");
    save_timm(&on_cpu, &ckpt)?;
    let mut on_dev = ti.init(&dev);
    load_timm(&mut on_dev, &ckpt)?;
    let x: Tensor<4> = Tensor::random([8, 3, 224, 224], Distribution::Normal(0.0, 1.0), &cpu);
    let data = x.to_data();
    let a: Vec<f32> = on_cpu
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let b: Vec<f32> = on_dev
        .forward(Tensor::from_data(data, &dev))
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let worst = a
        .iter()
        .zip(&b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    println!(
        "{{\"check\":\"logits\",\"preset\":\"vit-ti16\",\"backend\":\"{}\",\"device\":\"{spec}\",\"max_abs_diff\":{worst:e}}}",
        graft_backend::backend_name()
    );

    // 2. vit-b16 full fine-tuning step.
    let ad = dev.clone().autodiff();
    ad.seed(2);
    let b16 = VitConfig::preset("vit-b16", 47)
        .expect("preset")
        .init(&ad)
        .with_trainable(Trainable::Full);
    let x: Tensor<4> = Tensor::random([batch, 3, 224, 224], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % 47).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad);
    let ce = CrossEntropyLossConfig::new().init(&ad);
    let mut times = Vec::new();
    for i in 0..13 {
        let t = Instant::now();
        let loss = ce.forward(b16.forward(x.clone()), y.clone());
        let grads = loss.backward();
        drop(grads);
        ad.sync().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if i >= 3 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"check\":\"train_step\",\"preset\":\"vit-b16\",\"backend\":\"{}\",\"device\":\"{spec}\",\"batch\":{batch},\"step_s\":{median:.5},\"images_per_s\":{:.1}}}",
        graft_backend::backend_name(),
        batch as f64 / median
    );
    Ok(())
}
