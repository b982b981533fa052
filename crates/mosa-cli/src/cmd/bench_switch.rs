//! `mosa bench switch`: the two ways `mosa serve` could run a sparse expert (docs/serve.md),
//! timed side by side on a ViT preset with random weights and a random sparse change of every
//! qkv weight:
//!
//! - (a) the change put into the weights and taken out again around a task's batch (what the
//!   server does: `mosa_kernels::entries::add_at` / `set_at` in place), once per batch;
//! - (b) the base untouched and `x·ΔW` added beside each qkv on every batch: a sparse product
//!   (ΔW by output column, each non-zero one 257-wide `axpy` over the tokens of `xᵀ`, columns on
//!   rayon, the transposes counted) and, for reference, the dense product `x·ΔW` (burn's matmul).
//!
//! Beside them, the forward pass of the batch. Medians of timed iterations after one untimed.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_core::Rng;
use mosa_models::{BackboneConfig, presets};
use rayon::prelude::*;

use crate::backend::{self, Backend};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// A ViT preset or config JSON.
    #[arg(long, default_value = "dinov2-vits14")]
    model: String,
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    /// Fraction of each qkv weight the change holds.
    #[arg(long, default_value_t = 0.05)]
    density: f64,
    /// Batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    batches: Vec<usize>,
    /// Timed iterations.
    #[arg(long, default_value_t = 7)]
    iters: usize,
}

/// The median of `iters` timed calls after an untimed one.
fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f();
    let t = (0..iters)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64()
        })
        .collect();
    crate::cmd::bench::stats(t).0
}

/// One qkv's change: flat positions in the model's `[in, out]` layout (sorted) and values.
struct Change {
    name: String,
    rows: usize,
    cols: usize,
    indices: Vec<u32>,
    values: Vec<f32>,
}

/// `y += x·ΔW` with ΔW sparse (by output column): `yᵀ[o, :] += v · xᵀ[k, :]`.
fn sparse_beside(x: &[f32], t: usize, c: &Change, by_col: &[Vec<(u32, f32)>], y: &mut [f32]) {
    let (d_in, d_out) = (c.rows, c.cols);
    // xᵀ [in, t]
    let mut xt = vec![0f32; d_in * t];
    for r in 0..t {
        for k in 0..d_in {
            xt[k * t + r] = x[r * d_in + k];
        }
    }
    let mut yt = vec![0f32; d_out * t];
    yt.par_chunks_mut(t).zip(by_col.par_iter()).for_each(|(row, nz)| {
        for &(k, v) in nz {
            let src = &xt[k as usize * t..(k as usize + 1) * t];
            for (a, &b) in row.iter_mut().zip(src) {
                *a += v * b;
            }
        }
    });
    for r in 0..t {
        for o in 0..d_out {
            y[r * d_out + o] += yt[o * t + r];
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = presets::resolve_model(&a.model)?.with_num_classes(0).with_img_size(a.resolution);
    let BackboneConfig::Vit(vit) = &cfg else { anyhow::bail!("`mosa bench switch` takes a ViT (it changes every qkv)") };
    let tokens = (a.resolution / vit.patch_size).pow(2) + 1;
    let device = backend::device();
    let mut model = Some(cfg.init::<Backend>(&device));
    let layout = model.as_ref().expect("model").param_layout();
    let mut rng = Rng::new(5);
    let changes: Vec<Change> = layout
        .iter()
        .filter(|(n, _)| n.ends_with("attn.qkv.weight"))
        .map(|(n, l)| {
            let (rows, cols) = (l.shape[0], l.shape[1]);
            let keep = (a.density * (rows * cols) as f64) as usize;
            let mut indices: Vec<u32> = rng.permutation(rows * cols).into_iter().take(keep).map(|i| i as u32).collect();
            indices.sort_unstable();
            let values = indices.iter().map(|_| (rng.uniform() as f32 - 0.5) * 0.02).collect();
            Change { name: n.clone(), rows, cols, indices, values }
        })
        .collect();
    let nnz: usize = changes.iter().map(|c| c.indices.len()).sum();
    let names: HashSet<String> = changes.iter().map(|c| c.name.clone()).collect();
    let dev_idx: HashMap<String, (Tensor<Backend, 1, Int>, Tensor<Backend, 1>)> = changes
        .iter()
        .map(|c| {
            let i = Tensor::from_data(TensorData::new(c.indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [c.indices.len()]), &device);
            let v = Tensor::from_data(TensorData::new(c.values.clone(), [c.values.len()]), &device);
            (c.name.clone(), (i, v))
        })
        .collect();

    // (a): in, then out (one switch = the previous task's change out, the next one's in)
    let switch = time(a.iters, || {
        let mut saved: HashMap<String, Tensor<Backend, 1>> = HashMap::new();
        let m = model.take().expect("model").map_params(&names, &mut |name, t| {
            let (i, v) = &dev_idx[name];
            let (t, old) = mosa_kernels::entries::add_at(t, i.clone(), v.clone());
            saved.insert(name.to_string(), old);
            t
        });
        let m = m.map_params(&names, &mut |name, t| mosa_kernels::entries::set_at(t, dev_idx[name].0.clone(), saved[name].clone()));
        model = Some(m);
    });
    let by_col: Vec<Vec<Vec<(u32, f32)>>> = changes
        .iter()
        .map(|c| {
            let mut cols = vec![Vec::new(); c.cols];
            for (&i, &v) in c.indices.iter().zip(&c.values) {
                cols[i as usize % c.cols].push((i / c.cols as u32, v));
            }
            cols
        })
        .collect();
    let dense: Vec<Tensor<Backend, 2>> = changes
        .iter()
        .map(|c| {
            let mut d = vec![0f32; c.rows * c.cols];
            for (&i, &v) in c.indices.iter().zip(&c.values) {
                d[i as usize] = v;
            }
            Tensor::from_data(TensorData::new(d, [c.rows, c.cols]), &device)
        })
        .collect();

    println!(
        "{} at {} px ({tokens} tokens), a sparse change of {:.0}% of every qkv ({} tensors, {nnz} entries), {} backend, medians of {} iterations",
        a.model,
        a.resolution,
        100.0 * a.density,
        changes.len(),
        backend::NAME,
        a.iters
    );
    println!();
    println!("| batch | forward ms | (a) switch ms | (a) / forward | (b) sparse x·ΔW ms | (b) / forward | (b) dense x·ΔW ms | (b) dense / forward |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let model = model.expect("model");
    for &b in &a.batches {
        let x = Tensor::<Backend, 4>::random([b, 3, a.resolution, a.resolution], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let forward = time(a.iters, || {
            let _ = model.forward(x.clone()).pre_logits.into_data();
        });
        let t = b * tokens;
        let xs: Vec<f32> = (0..t * vit.embed_dim).map(|i| ((i % 97) as f32 - 48.0) * 0.01).collect();
        let mut y = vec![0f32; t * 3 * vit.embed_dim];
        let sparse = time(a.iters, || {
            for (c, cols) in changes.iter().zip(&by_col) {
                sparse_beside(&xs, t, c, cols, &mut y);
            }
        });
        let xd = Tensor::<Backend, 2>::from_data(TensorData::new(xs.clone(), [t, vit.embed_dim]), &device);
        let dense_t = time(a.iters, || {
            for d in &dense {
                let _ = xd.clone().matmul(d.clone()).into_data();
            }
        });
        println!(
            "| {b} | {:.1} | {:.2} | {:.1}% | {:.1} | {:.1}% | {:.1} | {:.1}% |",
            1e3 * forward,
            1e3 * switch,
            100.0 * switch / forward,
            1e3 * sparse,
            100.0 * sparse / forward,
            1e3 * dense_t,
            100.0 * dense_t / forward
        );
    }
    Ok(())
}
