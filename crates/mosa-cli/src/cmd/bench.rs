//! `mosa bench forward | step`: seconds per inference batch or per training step of a preset
//! with random weights (speed does not depend on the values), median of timed iterations after
//! warm-up, each iteration synchronised by reading its result back.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::{Distribution, TensorData};
use clap::Subcommand;
use mosa_core::{Passes, PeftHost, Rng, inject, params};
use mosa_models::presets;
use mosa_train::optim::{AdamW, AdamWConfig};
use mosa_train::step::PassLayout;

use crate::backend::{self, Backend};
use crate::method_args::MethodArgs;

#[derive(clap::Args, Clone)]
pub struct Common {
    /// A preset name or a config JSON.
    #[arg(long, default_value = "vit-s16")]
    model: String,
    /// Input resolution (square).
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    #[arg(long, default_value_t = 100)]
    num_classes: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// One JSON object ([`Measurement`]) instead of the Markdown table (what xtask reads).
    #[arg(long)]
    json: bool,
}

/// One measurement, as `--json` prints it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    pub backend: String,
    pub model: String,
    pub resolution: usize,
    pub batch: usize,
    pub measure: String,
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    pub images_per_second: f64,
    /// Model GFLOP/s at the median (`None`: no FLOP count).
    pub gflops: Option<f64>,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Inference (evaluation mode) throughput.
    Forward {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        batch: usize,
    },
    /// One training step as `mosa train` makes it (`mosa_train::step::step`: forward, loss,
    /// backward through what trains, masked expert gradients; then our AdamW, eps 1e-6, weight
    /// decay 0.01): MoSA and MoSA-LoRA make their two passes with CE + symmetric KL, as one
    /// forward over the stacked batch unless `--passes separate`.
    Step {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// MoSA / MoSA-LoRA: one forward over the stacked batch, or two forwards (as `mosa train
        /// --passes`).
        #[arg(long, value_enum, default_value = "stacked")]
        passes: PassLayout,
        #[command(flatten)]
        method: MethodArgs,
    },
    /// Merging N synthetic sparse experts (random indices and values) into ViT-B/16-shaped
    /// weights (48 block linears + patch embedding, 86 M entries): overlap-mean in index space
    /// against a dense-expansion merge and this machine's memcpy bandwidth.
    Merge(crate::cmd::bench_merge::Args),
    /// This machine's f32 FMA peak on all threads (the ceiling for GFLOP/s figures).
    Peak(crate::cmd::bench_peak::Args),
    /// `mosa serve`'s two ways to run a sparse expert: its change put in place per batch, or
    /// `x·ΔW` added beside each qkv on every batch (docs/serve.md).
    Switch(crate::cmd::bench_switch::Args),
    /// Our packed GEMM against the `gemm` crate on the linears of a ViT-S/16 training step,
    /// alternating in every iteration (flex builds, AVX2 + FMA CPUs).
    #[cfg(feature = "flex")]
    Gemm(crate::cmd::bench_gemm::Args),
}

/// (median, min, max) of timings.
pub(crate) fn stats(mut t: Vec<f64>) -> (f64, f64, f64) {
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0], t[t.len() - 1])
}

fn input<BB: burn::tensor::backend::Backend>(batch: usize, res: usize, device: &BB::Device) -> Tensor<BB, 4> {
    Tensor::random([batch, 3, res, res], Distribution::Normal(0.0, 1.0), device)
}

fn report(what: &str, c: &Common, batch: usize, times: Vec<f64>, flops_per_image: Option<f64>) -> anyhow::Result<()> {
    let (median, min, max) = stats(times);
    let m = Measurement {
        backend: backend::NAME.to_string(),
        model: c.model.clone(),
        resolution: c.resolution,
        batch,
        measure: what.to_string(),
        median_s: median,
        min_s: min,
        max_s: max,
        images_per_second: batch as f64 / median,
        gflops: flops_per_image.map(|f| f * batch as f64 / median / 1e9),
    };
    if c.json {
        println!("{}", serde_json::to_string(&m)?);
        return Ok(());
    }
    let gflops = m.gflops.map(|g| format!("{g:.0}")).unwrap_or_else(|| "—".into());
    println!("| backend | model | resolution | batch | measure | median s | min s | max s | images/s | model GFLOP/s |");
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.1} | {gflops} |",
        m.backend, m.model, m.resolution, m.batch, m.measure, m.median_s, m.min_s, m.max_s, m.images_per_second
    );
    Ok(())
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    let cmd = match cmd {
        Command::Merge(a) => return crate::cmd::bench_merge::run(a),
        Command::Peak(a) => return crate::cmd::bench_peak::run(a),
        Command::Switch(a) => return crate::cmd::bench_switch::run(a),
        #[cfg(feature = "flex")]
        Command::Gemm(a) => return crate::cmd::bench_gemm::run(a),
        cmd => cmd,
    };
    let device = backend::device();
    match cmd {
        Command::Merge(_) | Command::Peak(_) | Command::Switch(_) => unreachable!(),
        #[cfg(feature = "flex")]
        Command::Gemm(_) => unreachable!(),
        Command::Forward { common, batch } => {
            let cfg = presets::resolve_model(&common.model)?.with_num_classes(common.num_classes).with_img_size(common.resolution);
            let model = cfg.init::<Backend>(&device);
            let x = input::<Backend>(batch, common.resolution, &device);
            let mut times = Vec::new();
            for i in 0..common.warmup + common.iters {
                let t0 = Instant::now();
                let logits = model.forward(x.clone()).logits.into_data();
                std::hint::black_box(logits);
                if i >= common.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            report("inference", &common, batch, times, Some(cfg.forward_flops()))?;
        }
        Command::Step { common, batch, passes: layout, method: margs } => {
            type AB = Autodiff<Backend>;
            let cfg = presets::resolve_model(&common.model)?.with_num_classes(common.num_classes).with_img_size(common.resolution);
            let mc = margs.method()?;
            let seed = mosa_train::TrainConfig::default().seed;
            let mut model = inject::apply(cfg.init::<AB>(&device), &mc, seed, &device).map_err(anyhow::Error::msg)?;
            let trainable = params::count_trainable(&params::list(&model));
            let mut optim = AdamW::<AB>::new(AdamWConfig::default());
            let x = input::<AB>(batch, common.resolution, &device);
            let labels: Vec<i64> = (0..batch as i64).map(|i| i % common.num_classes as i64).collect();
            let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(labels, [batch]), &device);
            let recipe = mosa_train::TrainConfig::default();
            let two_passes = mosa_train::step::two_passes(&mc, &recipe);
            let passes = match (two_passes, layout) {
                (false, _) => "",
                (true, PassLayout::Stacked) => ", two passes stacked",
                (true, PassLayout::Separate) => ", two passes",
            };
            let (mut rng, mut sparse_rng) = (Rng::new(seed), Rng::new(seed + 1));
            let mut times = Vec::new();
            let n = common.warmup + common.iters;
            for i in 0..n {
                let t0 = Instant::now();
                let (m, out) = mosa_train::step::step(model, x.clone(), y.clone(), &mc, &recipe, (0, i, n), layout, &mut rng, &mut sparse_rng)?;
                model = optim.step(1e-3, m, out.grads);
                // synchronise: the step's result must exist before the clock stops
                std::hint::black_box(model.head_mut().and_then(|h| h.bias.as_ref().map(|b| b.val().into_data())));
                if i >= common.warmup {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            let flops = Some(cfg.forward_flops() * mc.kind().step_flops_factor(if two_passes { Passes::Two } else { Passes::One }));
            report(&format!("train step, {}{passes} ({:.3} M trainable)", mc.name(), trainable as f64 / 1e6), &common, batch, times, flops)?;
        }
    }
    Ok(())
}
