//! `mosa bench peak`: this machine's f32 FMA peak, measured. Every thread of rayon's pool runs
//! 12 independent chains of fused multiply-adds on the widest vectors the CPU has (AVX-512, else
//! AVX2 + FMA, else scalar `mul_add`) for about 0.25 s; GFLOP/s = 2 · FMAs / wall seconds of the
//! slowest thread, median of the runs. It is the ceiling the GEMMs (ours and PyTorch's) are
//! measured against in `cargo xtask bench-speed`.

use std::time::Instant;

use rayon::prelude::*;

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// One JSON object (`gflops`, `threads`, `instructions`) instead of the Markdown table.
    #[arg(long)]
    json: bool,
}

/// Independent accumulator chains: more than FMA latency (4 cycles) × ports (2), so the units
/// never wait for a result.
const CHAINS: usize = 12;

/// `(FMAs per lane per round, lanes)` of the kernel this CPU runs, and the kernel.
fn kernel() -> (usize, &'static str, fn(u64) -> f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F.
            return (16, "AVX-512", |n| unsafe { fma_avx512(n) });
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA.
            return (8, "AVX2 + FMA", |n| unsafe { fma_avx2(n) });
        }
    }
    (1, "scalar", fma_scalar)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(rounds: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(rounds: u64) -> f32 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
    let mut acc = [_mm256_set1_ps(1.0); CHAINS];
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0f32; 8];
    acc.iter()
        .map(|&x| {
            // SAFETY: `out` holds 8 floats.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), x) };
            out.iter().sum::<f32>()
        })
        .sum()
}

fn fma_scalar(rounds: u64) -> f32 {
    let mut acc = [1f32; CHAINS];
    for _ in 0..rounds {
        for x in acc.iter_mut() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// The measured peak: `(GFLOP/s, threads, instruction set)`.
pub fn measure(iters: usize) -> (f64, usize, &'static str) {
    let (lanes, isa, f) = kernel();
    let threads = rayon::current_num_threads();
    // calibrated to about 0.25 s per run (this also warms the clocks up)
    let mut rounds: u64 = 1 << 16;
    loop {
        let t0 = Instant::now();
        std::hint::black_box(f(std::hint::black_box(rounds)));
        let s = t0.elapsed().as_secs_f64();
        if s > 0.05 {
            rounds = (rounds as f64 * 0.25 / s) as u64;
            break;
        }
        rounds *= 4;
    }
    let mut rates: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let t0 = Instant::now();
            let sums: Vec<f32> = (0..threads).into_par_iter().map(|_| f(std::hint::black_box(rounds))).collect();
            std::hint::black_box(sums);
            let flops = 2.0 * (rounds as f64) * (CHAINS * lanes * threads) as f64;
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates[rates.len() / 2], threads, isa)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let (gflops, threads, isa) = measure(a.iters);
    if a.json {
        println!("{}", serde_json::json!({ "gflops": gflops, "threads": threads, "instructions": isa }));
        return Ok(());
    }
    println!("| measure | threads | instructions | GFLOP/s |");
    println!("|---|---:|---|---:|");
    println!("| f32 FMA peak | {threads} | {isa} | {gflops:.1} |");
    Ok(())
}
