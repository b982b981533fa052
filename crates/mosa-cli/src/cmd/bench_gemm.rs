//! `mosa bench gemm`: our packed GEMM (`mosa_core::kernels::flex::gemm`) against the `gemm`
//! crate on the linears of a ViT-S/16 training step at 224 px, batch 8 (`rows` = 8 · 197 tokens):
//! the forward `x·W`, `∂x = g·Wᵀ` and `∂W = xᵀ·g` of qkv, fc1 and fc2. The two run alternately
//! in every iteration (so a noisy neighbour slows both alike); medians, their ratio, GFLOP/s
//! against the measured FMA peak, and the largest difference between the two results.

use std::time::Instant;

use mosa_core::kernels::flex::gemm::{Gemm, multiply};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Timed iterations per shape (after one untimed).
    #[arg(long, default_value_t = 15)]
    iters: usize,
    /// Rows of the activations (tokens · batch).
    #[arg(long, default_value_t = 8 * 197)]
    rows: usize,
}

/// Values in [-0.5, 0.5) from the seeded stream `seed`.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = mosa_core::rng::Rng::new(seed);
    (0..n).map(|_| rng.uniform() as f32 - 0.5).collect()
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (peak, _, isa) = crate::cmd::bench_peak::measure(5);
    let (rows, d) = (a.rows, 384);
    // (product, m, n, k, A transposed, B transposed)
    let shapes = [
        ("qkv  x·W", rows, 3 * d, d, false, false),
        ("fc1  x·W", rows, 4 * d, d, false, false),
        ("fc2  x·W", rows, d, 4 * d, false, false),
        ("qkv  ∂x = g·Wᵀ", rows, d, 3 * d, false, true),
        ("fc1  ∂x = g·Wᵀ", rows, d, 4 * d, false, true),
        ("fc2  ∂x = g·Wᵀ", rows, 4 * d, d, false, true),
        ("qkv  ∂W = xᵀ·g", d, 3 * d, rows, true, false),
        ("fc2  ∂W = xᵀ·g", 4 * d, d, rows, true, false),
    ];
    println!("f32 FMA peak: {peak:.0} GFLOP/s ({isa}, {} threads)", rayon::current_num_threads());
    println!();
    println!("| product | m × n × k | ours median ms | ours GFLOP/s (% of peak) | gemm crate median ms | gemm crate GFLOP/s (% of peak) | ours / crate speed | max abs difference |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (i, (name, m, n, k, at, bt)) in shapes.into_iter().enumerate() {
        let (x, y) = (values(m * k, 2 * i as u64 + 1), values(k * n, 2 * i as u64 + 2));
        let (mut ours, mut theirs) = (vec![0f32; m * n], vec![0f32; m * n]);
        let (mut t_ours, mut t_crate) = (Vec::new(), Vec::new());
        for it in 0..=a.iters.max(1) {
            let t0 = Instant::now();
            multiply(Gemm::Ours, m, n, k, &x, at, &y, bt, &mut ours).map_err(anyhow::Error::msg)?;
            let t1 = Instant::now();
            multiply(Gemm::Crate, m, n, k, &x, at, &y, bt, &mut theirs).map_err(anyhow::Error::msg)?;
            let t2 = Instant::now();
            if it > 0 {
                t_ours.push((t1 - t0).as_secs_f64());
                t_crate.push((t2 - t1).as_secs_f64());
            }
        }
        let diff = ours.iter().zip(&theirs).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        let (mo, mc) = (median(t_ours), median(t_crate));
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!(
            "| {name} | {m} × {n} × {k} | {:.2} | {:.0} ({:.0}%) | {:.2} | {:.0} ({:.0}%) | {:.2}× | {diff:.1e} |",
            mo * 1e3,
            gf(mo),
            100.0 * gf(mo) / peak,
            mc * 1e3,
            gf(mc),
            100.0 * gf(mc) / peak,
            mc / mo
        );
    }
    println!();
    println!("command: mosa bench gemm --iters {} --rows {rows}", a.iters);
    Ok(())
}
