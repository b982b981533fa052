//! The bounds every backbone config is checked against (by each family's `validate`) before
//! anything is allocated for it, so that a hostile or mistyped model JSON, `--resolution` or
//! class count ends in one clear line instead of an allocation failure. They are far above
//! every published model (ViT-G/14: 48 blocks, width 1664, 1.8 B parameters).

/// Blocks in all stages together.
pub const MAX_BLOCKS: usize = 512;
/// Embedding width, MLP width, heads, channels, patch and window sides.
pub const MAX_WIDTH: usize = 65_536;
/// Input side in pixels.
pub const MAX_IMG_SIZE: usize = 4096;
/// Classes of the head (also `mosa_data::source::MAX_CLASSES`).
pub const MAX_CLASSES: usize = 100_000;
/// Parameters of the whole model (≈ 32 GB in f32).
pub const MAX_PARAMS: f64 = 8e9;
/// Tokens (or feature-map positions) of the first stage.
pub const MAX_TOKENS: usize = 1 << 20;

/// `name` = `v` is at most `max`.
pub fn at_most(name: &str, v: usize, max: usize) -> crate::Result<()> {
    if v > max {
        return Err(crate::Error::Limit(format!("{name} {v} is larger than the supported {max}")));
    }
    Ok(())
}

/// The common bounds: input side, channels, classes, the first stage's tokens, blocks and the
/// estimated parameter count.
pub fn check(img_size: usize, in_chans: usize, num_classes: usize, tokens: usize, blocks: usize, params: f64) -> crate::Result<()> {
    at_most("img_size", img_size, MAX_IMG_SIZE)?;
    at_most("in_chans", in_chans, MAX_WIDTH)?;
    at_most("num_classes", num_classes, MAX_CLASSES)?;
    at_most("tokens", tokens, MAX_TOKENS)?;
    at_most("blocks", blocks, MAX_BLOCKS)?;
    if params.is_nan() || params > MAX_PARAMS {
        return Err(crate::Error::Limit(format!("about {params:.3e} parameters, more than the supported {MAX_PARAMS:.0e}")));
    }
    Ok(())
}

/// Parameters of `blocks` transformer blocks of width `d` and MLP ratio `mlp`.
pub fn transformer_params(blocks: usize, d: usize, mlp: f64) -> f64 {
    let d = d as f64;
    blocks as f64 * (4.0 * d * d + 2.0 * mlp * d * d)
}

/// Activation floats a training step keeps per input float (forward values saved for the
/// backward): measured on ViT-S/14 at 224 px, 257 tokens × 384 × 12 blocks × about 20 saved
/// tensors per block ≈ 160 × the 3 × 224² input; ViT-B/16 ≈ 240. An estimate for the memory
/// bound, not a promise.
pub const TRAIN_ACTIVATIONS_PER_INPUT: f64 = 256.0;
/// The same for evaluation (no backward: a block's tensors are freed as the next one runs).
pub const EVAL_ACTIVATIONS_PER_INPUT: f64 = 32.0;

/// Bytes the OS says a new allocation can have: `MOSA_MEMORY_LIMIT` (bytes) if set, else Linux's
/// `MemAvailable`; `None` where neither is known (no bound is applied).
pub fn available_memory() -> Option<f64> {
    if let Some(v) = std::env::var("MOSA_MEMORY_LIMIT").ok().and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(v);
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = text.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024.0)
}

/// The parts of an estimated allocation, by name, in bytes.
pub type Parts<'a> = &'a [(&'a str, f64)];

/// Refuses an allocation estimated at the sum of `parts` bytes when it exceeds the available
/// memory; the error names each part and `lower`, what to lower.
pub fn fits_memory(what: &str, parts: Parts<'_>, lower: &str) -> crate::Result<()> {
    let need: f64 = parts.iter().map(|(_, b)| b).sum();
    let Some(have) = available_memory() else { return Ok(()) };
    if need <= have {
        return Ok(());
    }
    let gb = |b: f64| format!("{:.1} GB", b / 1e9);
    let list: Vec<String> = parts.iter().filter(|(_, b)| *b > 0.0).map(|(n, b)| format!("{n} {}", gb(*b))).collect();
    Err(crate::Error::Limit(format!("{what} needs about {} ({}), more than the {} of memory available; lower {lower}", gb(need), list.join(", "), gb(have))))
}
