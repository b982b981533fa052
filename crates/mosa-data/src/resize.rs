//! The two bilinear resizes of the reference pipelines.
//!
//! - [`resize_bilinear`]: PIL's (`Image.resize(..., BILINEAR)`, which torchvision's `Resize` calls
//!   on PIL images; the reference's FGVC pipeline): a separable triangle filter whose support grows
//!   with the downscale factor (so downscaling averages, i.e. antialiases), pixel centres at +0.5,
//!   horizontal pass then vertical pass, each rounded to 8 bits.
//! - [`TfBilinear`]: TensorFlow's (`tf.image.resize(image, [S, S])`, bilinear, the reference's VTAB
//!   pipeline): half-pixel centres, the two nearest source pixels per axis whatever the scale (no
//!   antialiasing when shrinking), computed in `f32` and not rounded. Since it reads at most two
//!   source rows and columns per output pixel, [`TfBilinear::compact`] keeps only those, so a large
//!   source costs at most `2S × 2S` pixels in memory while the output stays exact.

use crate::image::Rgb8;

/// Filter taps for resizing one axis from `input` to `output` samples: per output sample the
/// first input index and normalised weights.
pub fn taps(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // triangle support 1.0, scaled
    (0..output)
        .map(|x| {
            let center = (x as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5).floor().max(0.0)) as usize;
            let xmax = ((center + support + 0.5).floor() as usize).min(input);
            let mut w: Vec<f64> = (xmin..xmax)
                .map(|i| {
                    let t = ((i as f64 - center + 0.5) / filterscale).abs();
                    if t < 1.0 { 1.0 - t } else { 0.0 }
                })
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            (xmin, w)
        })
        .collect()
}

fn round_u8(v: f64) -> u8 {
    (v + 0.5).floor().clamp(0.0, 255.0) as u8
}

/// Resizes to `width` × `height` (aspect ratio not kept).
pub fn resize_bilinear(img: &Rgb8, width: usize, height: usize) -> Rgb8 {
    if img.width == width && img.height == height {
        return img.clone();
    }
    // Horizontal pass: img.height rows of `width` pixels.
    let hx = taps(img.width, width);
    let mut tmp = vec![0u8; img.height * width * 3];
    for y in 0..img.height {
        let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        for (x, (x0, w)) in hx.iter().enumerate() {
            for c in 0..3 {
                let v: f64 = w.iter().enumerate().map(|(k, wk)| wk * row[(x0 + k) * 3 + c] as f64).sum();
                tmp[(y * width + x) * 3 + c] = round_u8(v);
            }
        }
    }
    if img.height == height {
        return Rgb8::new(width, height, tmp);
    }
    let vy = taps(img.height, height);
    let mut out = vec![0u8; height * width * 3];
    for (y, (y0, w)) in vy.iter().enumerate() {
        for x in 0..width {
            for c in 0..3 {
                let v: f64 = w.iter().enumerate().map(|(k, wk)| wk * tmp[((y0 + k) * width + x) * 3 + c] as f64).sum();
                out[(y * width + x) * 3 + c] = round_u8(v);
            }
        }
    }
    Rgb8::new(width, height, out)
}

/// One output sample of TensorFlow's bilinear resize along one axis: the two source indices it
/// reads and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TfTap {
    pub lower: usize,
    pub upper: usize,
    pub lerp: f32,
}

/// TensorFlow's `compute_interpolation_weights` with its half-pixel scaler, in `f32` as there:
/// `in = (x + 0.5) · (input / output) − 0.5`, `lower = max(floor(in), 0)`,
/// `upper = min(ceil(in), input − 1)`, `lerp = in − floor(in)`.
pub fn tf_taps(input: usize, output: usize) -> Vec<TfTap> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|x| {
            let pos = (x as f32 + 0.5) * scale - 0.5;
            let floor = pos.floor();
            TfTap { lower: floor.max(0.0) as usize, upper: (pos.ceil().max(0.0) as usize).min(input - 1), lerp: pos - floor }
        })
        .collect()
}

/// TensorFlow's bilinear resize of a `source_width × source_height` image to `width × height`.
#[derive(Debug, Clone, PartialEq)]
pub struct TfBilinear {
    pub source_width: usize,
    pub source_height: usize,
    pub width: usize,
    pub height: usize,
}

impl TfBilinear {
    pub fn new(source_width: usize, source_height: usize, width: usize, height: usize) -> Self {
        Self { source_width, source_height, width, height }
    }

    /// The sorted source indices that the taps read along one axis.
    fn read_indices(taps: &[TfTap]) -> Vec<usize> {
        let mut v: Vec<usize> = taps.iter().flat_map(|t| [t.lower, t.upper]).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The source with only the rows and columns that the resize reads (the whole source when
    /// enlarging); [`Self::resize_compacted`] turns it into exactly what resizing the whole
    /// source gives.
    pub fn compact(&self, src: &Rgb8) -> Rgb8 {
        assert_eq!((src.width, src.height), (self.source_width, self.source_height), "TfBilinear::compact: source size");
        let cols = Self::read_indices(&tf_taps(self.source_width, self.width));
        let rows = Self::read_indices(&tf_taps(self.source_height, self.height));
        if cols.len() == src.width && rows.len() == src.height {
            return src.clone();
        }
        let mut data = Vec::with_capacity(cols.len() * rows.len() * 3);
        for &y in &rows {
            for &x in &cols {
                data.extend_from_slice(&src.pixel(x, y));
            }
        }
        Rgb8::new(cols.len(), rows.len(), data)
    }

    /// Taps along one axis re-indexed into the compacted image.
    fn compacted_taps(input: usize, output: usize) -> Vec<TfTap> {
        let taps = tf_taps(input, output);
        let kept = Self::read_indices(&taps);
        let at = |i: usize| kept.binary_search(&i).expect("tap outside the kept indices");
        taps.iter().map(|t| TfTap { lower: at(t.lower), upper: at(t.upper), lerp: t.lerp }).collect()
    }

    /// The resized image as `f32` in 0..=255, row-major HWC, from the output of
    /// [`Self::compact`] (or the source itself when nothing was dropped). Per pixel as in
    /// TensorFlow's kernel: `top = tl + (tr − tl)·x_lerp`, `bottom = bl + (br − bl)·x_lerp`,
    /// `out = top + (bottom − top)·y_lerp`.
    pub fn resize_compacted(&self, img: &Rgb8) -> Vec<f32> {
        let xs = Self::compacted_taps(self.source_width, self.width);
        let ys = Self::compacted_taps(self.source_height, self.height);
        interpolate(img, &xs, &ys)
    }

    /// Resizes the whole source (no compaction).
    pub fn resize(&self, src: &Rgb8) -> Vec<f32> {
        self.resize_compacted(&self.compact(src))
    }
}

/// The bilinear interpolation of `img` at the given taps, HWC `f32`.
fn interpolate(img: &Rgb8, xs: &[TfTap], ys: &[TfTap]) -> Vec<f32> {
    let w = img.width;
    let px = |x: usize, y: usize, c: usize| img.data[(y * w + x) * 3 + c] as f32;
    let mut out = Vec::with_capacity(xs.len() * ys.len() * 3);
    for ty in ys {
        for tx in xs {
            for c in 0..3 {
                let top = px(tx.lower, ty.lower, c) + (px(tx.upper, ty.lower, c) - px(tx.lower, ty.lower, c)) * tx.lerp;
                let bottom = px(tx.lower, ty.upper, c) + (px(tx.upper, ty.upper, c) - px(tx.lower, ty.upper, c)) * tx.lerp;
                out.push(top + (bottom - top) * ty.lerp);
            }
        }
    }
    out
}

/// Size after resizing the shorter side to `shorter` keeping aspect (torchvision `Resize(int)`:
/// the longer side is `int(shorter * long / short)`).
pub fn shorter_side_size(width: usize, height: usize, shorter: usize) -> (usize, usize) {
    if width <= height {
        (shorter, (shorter as u64 * height as u64 / width as u64) as usize)
    } else {
        ((shorter as u64 * width as u64 / height as u64) as usize, shorter)
    }
}

/// Crops `[top, top+h) × [left, left+w)`.
pub fn crop(img: &Rgb8, left: usize, top: usize, w: usize, h: usize) -> Rgb8 {
    assert!(left + w <= img.width && top + h <= img.height, "crop outside the image");
    let mut data = Vec::with_capacity(w * h * 3);
    for y in top..top + h {
        data.extend_from_slice(&img.data[(y * img.width + left) * 3..(y * img.width + left + w) * 3]);
    }
    Rgb8::new(w, h, data)
}

/// Python's `round` (half to even), which torchvision's centre crop uses.
pub fn round_half_even(x: f64) -> i64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 { (r - x.signum()) as i64 } else { r as i64 }
}

/// torchvision `center_crop` offsets for cropping `size` out of `w`×`h`.
pub fn center_crop_offsets(w: usize, h: usize, size: usize) -> (usize, usize) {
    let left = round_half_even((w as f64 - size as f64) / 2.0).max(0) as usize;
    let top = round_half_even((h as f64 - size as f64) / 2.0).max(0) as usize;
    (left, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grey(w: usize, h: usize, v: &[u8]) -> Rgb8 {
        Rgb8::new(w, h, v.iter().flat_map(|&x| [x, x, x]).collect())
    }

    #[test]
    fn upscale_2x_matches_hand_computed_bilinear() {
        // 2 -> 4 along x: centres at 0.25, 0.75, 1.25, 1.75 in input units (scale 0.5, support 1):
        // weights for output 0: input 0 at |0-0.25+0.5|... hand: out = [a, .75a+.25b, .25a+.75b, b].
        let img = grey(2, 1, &[0, 200]);
        let r = resize_bilinear(&img, 4, 1);
        let got: Vec<u8> = r.data.chunks(3).map(|p| p[0]).collect();
        assert_eq!(got, vec![0, 50, 150, 200]);
    }

    #[test]
    fn downscale_averages_like_pil() {
        // 4 -> 2: scale 2, support 2: output 0 centre 1.0, taps at inputs 0..3 with triangle
        // weights (|i+.5-1|/2): .75,.75,.25 -> normalised .4286,.4286,.1429 (input 3 weight 0).
        let img = grey(4, 1, &[10, 20, 30, 40]);
        let r = resize_bilinear(&img, 2, 1);
        let got: Vec<u8> = r.data.chunks(3).map(|p| p[0]).collect();
        // (7.5 + 15 + 7.5) / 1.75 = 17.14; output 1 centre 3.0: (5 + 22.5 + 30) / 1.75 = 32.86
        assert_eq!(got, vec![17, 33]);
        // constant images stay constant at any size
        let c = grey(5, 3, &[77; 15]);
        assert!(resize_bilinear(&c, 11, 7).data.iter().all(|&v| v == 77));
        assert!(resize_bilinear(&c, 2, 2).data.iter().all(|&v| v == 77));
    }

    #[test]
    fn resize_rounds_each_pass() {
        // 2x2 -> 1x1 of rows (0,0), (1,0): the horizontal pass gives 0 and .5, rounded to 8 bits
        // 0 and 1; the vertical pass .5 -> 1. Without the intermediate rounding: .25 -> 0.
        let img = grey(2, 2, &[0, 0, 1, 0]);
        assert_eq!(resize_bilinear(&img, 1, 1).data[0], 1);
    }

    #[test]
    fn tf_downscale_matches_hand_computed_values() {
        // 5 -> 2 along x: scale 2.5, in = (x + .5)·2.5 − .5 = 0.75 and 3.25:
        // out0 = s0 + (s1 − s0)·.75, out1 = s3 + (s4 − s3)·.25. No other source pixel is read
        // (PIL's antialiased filter would average s0..s2 and s2..s4).
        let img = grey(5, 1, &[0, 100, 200, 40, 80]);
        let r = TfBilinear::new(5, 1, 2, 1).resize(&img);
        let got: Vec<f32> = r.chunks(3).map(|p| p[0]).collect();
        assert_eq!(got, vec![75.0, 50.0]);
        // 2-D, 4x4 -> 3x3: scale 4/3, in = (x+.5)·4/3 − .5 = 1/6, 3/2, 17/6; float output, not
        // rounded: out(1,1) = the mean of source (1,1),(2,1),(1,2),(2,2).
        let v: Vec<u8> = (0..16).map(|i| (i * 10 + 1) as u8).collect();
        let img = grey(4, 4, &v);
        let r = TfBilinear::new(4, 4, 3, 3).resize(&img);
        let at = |x: usize, y: usize| r[(y * 3 + x) * 3];
        let src = |x: usize, y: usize| v[y * 4 + x] as f32;
        assert!((at(1, 1) - (src(1, 1) + src(2, 1) + src(1, 2) + src(2, 2)) / 4.0).abs() < 1e-4);
        let (fx, fy) = (1.0f32 / 6.0, 17.0f32 / 6.0 - 2.0);
        let top = src(0, 2) + (src(1, 2) - src(0, 2)) * fx;
        let bottom = src(0, 3) + (src(1, 3) - src(0, 3)) * fx;
        assert!((at(0, 2) - (top + (bottom - top) * fy)).abs() < 1e-4, "{} vs {}", at(0, 2), top + (bottom - top) * fy);
        // the source is a ramp 1 + 10x + 40y: at (1/6, 1/6) that is 28/3, not an 8-bit value
        assert!((at(0, 0) - 28.0 / 3.0).abs() < 1e-4, "float output, not 8 bits: {}", at(0, 0));
    }

    #[test]
    fn tf_upscale_clamps_at_the_border() {
        // 2 -> 4: in = −.25, .25, .75, 1.25: the first reads s0 only (lower = upper = 0), the last
        // s1 only (upper clamped to 1).
        let img = grey(2, 1, &[0, 200]);
        let r = TfBilinear::new(2, 1, 4, 1).resize(&img);
        let got: Vec<f32> = r.chunks(3).map(|p| p[0]).collect();
        assert_eq!(got, vec![0.0, 50.0, 150.0, 200.0]);
        assert_eq!(tf_taps(2, 4)[0], TfTap { lower: 0, upper: 0, lerp: 0.75 });
        assert_eq!(tf_taps(2, 4)[3], TfTap { lower: 1, upper: 1, lerp: 0.25 });
    }

    #[test]
    fn tf_compaction_is_exact_and_bounded() {
        // A pseudo-random 97x61 source shrunk to 9x7: the compacted image has at most 2·9 columns
        // and 2·7 rows and gives bit-identical output to resizing every source pixel directly.
        let (sw, sh) = (97, 61);
        let mut state = 12345u32;
        let data: Vec<u8> = (0..sw * sh * 3)
            .map(|_| {
                state = state.wrapping_mul(1664525).wrapping_add(1013904223);
                (state >> 24) as u8
            })
            .collect();
        let img = Rgb8::new(sw, sh, data);
        let plan = TfBilinear::new(sw, sh, 9, 7);
        let small = plan.compact(&img);
        assert!(small.width <= 18 && small.height <= 14, "{}x{}", small.width, small.height);
        // the same interpolation on the whole source with the uncompacted taps
        let direct = interpolate(&img, &tf_taps(sw, 9), &tf_taps(sh, 7));
        assert_eq!(plan.resize_compacted(&small), direct);
        // enlarging keeps the whole source
        assert_eq!(TfBilinear::new(sw, sh, 200, 100).compact(&img), img);
    }

    #[test]
    fn shorter_side_and_centre_crop_follow_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256));
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(center_crop_offsets(341, 256, 224), (58, 16)); // (341-224)/2 = 58.5 -> 58 (half to even)
        assert_eq!(center_crop_offsets(343, 256, 224), (60, 16)); // 59.5 -> 60
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(3.5), 4);
        assert_eq!(round_half_even(2.4), 2);
    }
}
