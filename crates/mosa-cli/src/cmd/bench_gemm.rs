//! `mosa bench gemm`: our packed GEMM (`mosa_kernels::flex::gemm`, with each register
//! tile this CPU can run) against the `gemm` crate on the linears of a ViT-S/16 training step at
//! 224 px, batch 8 (`rows` = 8 · 197 tokens): the forward `x·W`, `∂x = g·Wᵀ` and `∂W = xᵀ·g` of
//! qkv, fc1 and fc2. They run in turn in every iteration (so a noisy neighbour slows all alike);
//! medians, each tile's speed against the crate, GFLOP/s against the measured FMA peak, and the
//! largest difference from the crate's result.

use std::time::Instant;

use mosa_kernels::flex::gemm::{Gemm, Tile, available, multiply};

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
    let tiles: Vec<Tile> = Tile::ALL.into_iter().filter(|&t| available(t)).collect();
    if tiles.is_empty() {
        anyhow::bail!("our GEMM needs a CPU with AVX2 and FMA (or AVX-512); this one has neither");
    }
    let mut runs: Vec<Gemm> = tiles.iter().map(|&t| Gemm::Ours(t)).collect();
    runs.push(Gemm::Crate);
    let name = |g: &Gemm| match g {
        Gemm::Ours(t) => format!("ours ({t})"),
        Gemm::Crate => "gemm crate".to_string(),
    };
    let mut header = String::from("| product | m × n × k |");
    for g in &runs {
        header += &format!(" {} median ms | {} GFLOP/s (% of peak) |", name(g), name(g));
    }
    for &t in &tiles {
        header += &format!(" {} / crate speed |", name(&Gemm::Ours(t)));
    }
    println!("{header} max abs difference |");
    println!("|---|---|{}---:|", "---:|".repeat(2 * runs.len() + tiles.len()));
    for (i, (product, m, n, k, at, bt)) in shapes.into_iter().enumerate() {
        let (x, y) = (values(m * k, 2 * i as u64 + 1), values(k * n, 2 * i as u64 + 2));
        let mut outs = vec![vec![0f32; m * n]; runs.len()];
        let mut times = vec![Vec::new(); runs.len()];
        for it in 0..=a.iters.max(1) {
            for ((g, out), t) in runs.iter().zip(&mut outs).zip(&mut times) {
                let t0 = Instant::now();
                multiply(*g, m, n, k, &x, at, &y, bt, out).map_err(anyhow::Error::msg)?;
                if it > 0 {
                    t.push(t0.elapsed().as_secs_f64());
                }
            }
        }
        let crate_out = outs.last().expect("the crate runs");
        let diff = outs.iter().flat_map(|o| o.iter().zip(crate_out).map(|(p, q)| (p - q).abs())).fold(0f32, f32::max);
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        let mut row = format!("| {product} | {m} × {n} × {k} |");
        for &s in &medians {
            row += &format!(" {:.2} | {:.0} ({:.0}%) |", s * 1e3, gf(s), 100.0 * gf(s) / peak);
        }
        let crate_s = medians[medians.len() - 1];
        for &s in &medians[..tiles.len()] {
            row += &format!(" {:.2}× |", crate_s / s);
        }
        println!("{row} {diff:.1e} |");
    }
    println!();
    println!("command: mosa bench gemm --iters {} --rows {rows}", a.iters);
    Ok(())
}
