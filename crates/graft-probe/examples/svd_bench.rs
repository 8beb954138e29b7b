//! Singular values of d×d matrices (d = 64 .. 768), one matrix at a time on one thread:
//! faer (what the probe uses), nalgebra, and with `--features bench-linalg` burn's own
//! `linalg::svd` on the build's CPU backend (f32).
//!
//! cargo run --release -p graft-probe --example svd_bench [--features bench-linalg]
//! Prints one line per library and size: median milliseconds per matrix.

use std::time::Instant;

use rand::{RngExt, SeedableRng};

fn median_ms(mut f: impl FnMut(), reps: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    faer::set_global_parallelism(faer::Par::Seq);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    println!("library    d     ms per matrix (median)");
    for d in [64usize, 128, 192, 384, 768] {
        let reps = if d >= 384 { 3 } else { 10 };
        let a: Vec<f64> = (0..d * d).map(|_| rng.random_range(-1.0..1.0)).collect();
        let ms = median_ms(
            || {
                let _ = graft_probe::scores::singular_values(&a, d, d);
            },
            reps,
        );
        println!("faer      {d:4}  {ms:9.2}");
        let m = nalgebra::DMatrix::from_row_slice(d, d, &a);
        let ms = median_ms(
            || {
                let _ = m.clone().singular_values();
            },
            reps,
        );
        println!("nalgebra  {d:4}  {ms:9.2}");
        #[cfg(feature = "bench-linalg")]
        {
            use burn::tensor::{Tensor, TensorData};
            let dev = graft_backend::device("cpu").expect("cpu");
            let af: Vec<f32> = a.iter().map(|&x| x as f32).collect();
            let t = Tensor::<2>::from_data(TensorData::new(af, [d, d]), &dev);
            let ms = median_ms(
                || {
                    let (_, s, _) = burn::linalg::svd::<2, 1>(t.clone(), 64);
                    let _ = s.into_data();
                },
                reps,
            );
            println!(
                "burn-linalg {d:4}  {ms:9.2}  ({})",
                graft_backend::backend_name()
            );
        }
    }
}
