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
pub fn at_most(name: &str, v: usize, max: usize) -> Result<(), String> {
    if v > max {
        return Err(format!("{name} {v} is larger than the supported {max}"));
    }
    Ok(())
}

/// The common bounds: input side, channels, classes, the first stage's tokens, blocks and the
/// estimated parameter count.
pub fn check(img_size: usize, in_chans: usize, num_classes: usize, tokens: usize, blocks: usize, params: f64) -> Result<(), String> {
    at_most("img_size", img_size, MAX_IMG_SIZE)?;
    at_most("in_chans", in_chans, MAX_WIDTH)?;
    at_most("num_classes", num_classes, MAX_CLASSES)?;
    at_most("tokens", tokens, MAX_TOKENS)?;
    at_most("blocks", blocks, MAX_BLOCKS)?;
    if !(params <= MAX_PARAMS) {
        return Err(format!("about {params:.3e} parameters, more than the supported {MAX_PARAMS:.0e}"));
    }
    Ok(())
}

/// Parameters of `blocks` transformer blocks of width `d` and MLP ratio `mlp`.
pub fn transformer_params(blocks: usize, d: usize, mlp: f64) -> f64 {
    let d = d as f64;
    blocks as f64 * (4.0 * d * d + 2.0 * mlp * d * d)
}
