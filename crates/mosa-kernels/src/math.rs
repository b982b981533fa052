//! Branch-free `f32` elementary functions for element-wise kernels: written with only
//! arithmetic, `min`/`max`, `floor` and bit casts, so that a loop over a slice compiles to SIMD
//! code (and, inside a `#[target_feature]` function, to AVX2 / AVX-512 code).

/// `e^x` for x ≤ 0, and exactly 0 below −87 (where `e^x` < 1.7e−38 nears f32's smallest normal
/// 1.18e−38): what a CPU set to flush denormals would give. Returning the clamp's 1.6e−38 there
/// made every product with such a value denormal — the masked entries of Swin's shifted windows
/// (mask −100) filled `P·v` and its backward with them, and on Intel CPUs each denormal operand
/// costs a microcode assist: a quarter of a Swin-T training step on a Sapphire Rapids
/// (`docs/timings.md`, "A Sapphire Rapids-class Xeon: denormals in window attention").
/// Cody–Waite reduction `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-6 Taylor polynomial of `e^r`
/// (relative error < 2e−7 on that interval), then `2^n` by building the exponent bits. `n` is
/// rounded by adding and subtracting 1.5·2²³ (the float's low mantissa bits then hold `n`), so no
/// float → int conversion is needed: Rust's saturating `as i32` is not vectorised and made this a
/// scalar loop per lane.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// 1.5·2²³: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let flush = x < -87.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // t's bits are ROUND's plus n (n ∈ [−126, 0]): the exponent field of 2^n is n + 127
    let n_int = t.to_bits().wrapping_sub(ROUND.to_bits());
    let scale = f32::from_bits(n_int.wrapping_add(127) << 23);
    // a select, not a branch: the loop stays SIMD
    if flush { 0.0 } else { p * scale }
}

/// `erf(x)`: Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e−7 in exact arithmetic, < 6e−7 in
/// `f32`, tested), odd by construction.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_72 + t * (1.421_413_8 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp_neg(-a * a);
    y.copysign(x)
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU, `0.5·x·(1 + erf(x/√2))`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2))
}

/// `g · GELU'(x)`, `GELU'(x) = Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_grad(x: f32, g: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
    let pdf = INV_SQRT_2PI * exp_neg(-0.5 * x * x);
    g * (cdf + x * pdf)
}

/// Lanes of the reductions below: independent partial results, so that the loops vectorise
/// (a float sum in one accumulator may not be reordered by the compiler).
const LANES: usize = 16;

/// `max_i x_i`.
#[inline(always)]
pub fn row_max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] = acc[l].max(c[l]);
        }
    }
    chunks.remainder().iter().fold(acc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b))
}

/// `Σ_i x_i`.
#[inline(always)]
pub fn row_sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            acc[l] += c[l];
        }
    }
    chunks.remainder().iter().sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ_i x_i·y_i`.
#[inline(always)]
pub fn row_dot(x: &[f32], y: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (mut cx, mut cy) = (x.chunks_exact(LANES), y.chunks_exact(LANES));
    for (a, b) in (&mut cx).zip(&mut cy) {
        for l in 0..LANES {
            acc[l] += a[l] * b[l];
        }
    }
    cx.remainder().iter().zip(cy.remainder()).map(|(a, b)| a * b).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ_i x_i·y_i·(z_i − c)`.
#[inline(always)]
pub fn row_dot_centred(x: &[f32], y: &[f32], z: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let n = x.len().min(y.len()).min(z.len());
    let whole = n / LANES * LANES;
    for i in (0..whole).step_by(LANES) {
        for l in 0..LANES {
            acc[l] += x[i + l] * y[i + l] * (z[i + l] - c);
        }
    }
    (whole..n).map(|i| x[i] * y[i] * (z[i] - c)).sum::<f32>() + acc.iter().sum::<f32>()
}

/// `Σ_i (x_i − c)²`.
#[inline(always)]
pub fn row_square_dev(x: &[f32], c: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for ch in &mut chunks {
        for l in 0..LANES {
            acc[l] += (ch[l] - c) * (ch[l] - c);
        }
    }
    chunks.remainder().iter().map(|v| (v - c) * (v - c)).sum::<f32>() + acc.iter().sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values in f64 (libm's erf and exp).
    fn gelu64(x: f64) -> f64 {
        0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
    }

    #[test]
    fn exp_and_erf_are_accurate_over_their_range() {
        let mut worst_exp: f64 = 0.0;
        let mut worst_erf: f64 = 0.0;
        for i in 0..=200_000 {
            let x = -87.0 + 87.0 * i as f64 / 200_000.0;
            let got = exp_neg(x as f32) as f64;
            worst_exp = worst_exp.max(((got - (x as f32 as f64).exp()) / (x as f32 as f64).exp()).abs());
            let y = -6.0 + 12.0 * i as f64 / 200_000.0;
            worst_erf = worst_erf.max((erf(y as f32) as f64 - libm::erf(y as f32 as f64)).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp}");
        // A&S 7.1.26's 1.5e−7 plus f32 rounding
        assert!(worst_erf < 6e-7, "erf absolute error {worst_erf}");
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erf(-3.0), -erf(3.0));
        assert_eq!(exp_neg(0.0), 1.0);
        // below −87 exactly 0 (no value that would make products denormal), normal at −87
        for x in [-87.01f32, -100.0, -1e30, f32::NEG_INFINITY] {
            assert_eq!(exp_neg(x), 0.0, "exp_neg({x})");
        }
        assert!(exp_neg(-87.0).is_normal());
    }

    #[test]
    fn gelu_and_its_gradient_match_the_closed_forms() {
        let mut worst: f64 = 0.0;
        let mut worst_grad: f64 = 0.0;
        for i in 0..=100_000 {
            let x = -12.0 + 24.0 * i as f64 / 100_000.0;
            let xf = x as f32 as f64;
            worst = worst.max((gelu(xf as f32) as f64 - gelu64(xf)).abs() / (1.0 + gelu64(xf).abs()));
            let d = 0.5 * (1.0 + libm::erf(xf / std::f64::consts::SQRT_2)) + xf * (-0.5 * xf * xf).exp() / (2.0 * std::f64::consts::PI).sqrt();
            worst_grad = worst_grad.max((gelu_grad(xf as f32, 1.0) as f64 - d).abs());
        }
        assert!(worst < 1e-6, "gelu error {worst}");
        assert!(worst_grad < 1e-6, "gelu' error {worst_grad}");
        // far tails: 0 and the identity
        assert!(gelu(-20.0).abs() < 1e-30 && gelu_grad(-20.0, 1.0).abs() < 1e-30);
        assert_eq!(gelu(20.0), 20.0);
        assert_eq!(gelu_grad(20.0, 1.0), 1.0);
    }
}
