//! Times the probe's passes of a preset on random images: per batch, one forward with a tap
//! at every residual node, one backward, and the batch's share of G = Δᵀ X for all n² edges
//! summed over `batches` batches and read back to the host, as the probe stage does
//! ([`graft_probe::edge_gradients`]; the SVDs are not timed). The Rust side of
//! `bench/precision.sh probe`; its PyTorch twin is `bench/torch_vit.py --graft PRESET --mode
//! probe`.
//!
//! cargo run --release -p graft-probe --example probe_bench -- vit-b16 8 [cpu [rounds [batches [precision]]]]
//! Prints one JSON line: backend, preset, batch, precision (f32 or bf16:
//! `Vit::with_precision`), median seconds per batch over `rounds` probes (after one warm-up
//! probe of one batch), images/s.

use std::time::Instant;

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use graft_model::{Precision, Trainable, VitConfig};
use graft_probe::{Tokens, edge_gradients};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let preset = args.first().map_or("vit-cpu-small", String::as_str);
    let batch: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let device_name = args.get(2).map_or("cpu", String::as_str);
    let rounds: usize = args.get(3).map_or(Ok(3), |s| s.parse())?;
    let batches: usize = args.get(4).map_or(Ok(4), |s| s.parse())?;
    let precision_name = args.get(5).map_or("f32", String::as_str);
    let precision: Precision = serde_json::from_value(precision_name.into())
        .map_err(|_| format!("precision {precision_name:?}: f32, bf16 or fp16"))?;
    let classes = 12;
    let device = graft_backend::device(device_name)?;
    let ad = device.clone().autodiff();
    ad.seed(0);
    let config = VitConfig::preset(preset, classes).ok_or("unknown preset")?;
    let model = config
        .init(&ad)
        .with_trainable(Trainable::HeadOnly)
        .with_precision(precision);
    let s = config.image_size;
    let x = Tensor::<4>::random([batch, 3, s, s], Distribution::Normal(0.0, 1.0), &ad);
    let labels: Vec<i64> = (0..batch as i64).map(|i| i % classes as i64).collect();
    let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [batch]), &ad);
    let probe = |n: usize| {
        let t = Instant::now();
        let batches = std::iter::repeat_n((x.clone(), y.clone()), n);
        let g = edge_gradients(&model, batches, Tokens::All)?;
        std::hint::black_box(&g.g);
        Ok::<_, graft_probe::ProbeError>(t.elapsed().as_secs_f64() / n as f64)
    };
    probe(1)?;
    let mut times = (0..rounds)
        .map(|_| probe(batches))
        .collect::<Result<Vec<_>, _>>()?;
    times.sort_by(f64::total_cmp);
    let per_batch = times[times.len() / 2];
    println!(
        "{{\"impl\": \"graft+{}\", \"preset\": \"{preset}\", \"batch\": {batch}, \"batches\": {batches}, \"mode\": \"probe\", \"precision\": \"{precision_name}\", \"device\": \"{device_name}\", \"step_s\": {per_batch:.5}, \"images_per_s\": {:.1}}}",
        graft_backend::backend_name(),
        batch as f64 / per_batch
    );
    Ok(())
}
