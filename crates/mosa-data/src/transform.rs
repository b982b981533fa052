//! Preprocessing (data.md): what is cached per image ([`Prepared`], 8 bits) and what is done per
//! draw (VTAB: TensorFlow's float bilinear resize; FGVC: crop and flip; then `[0, 1]` scaling,
//! ImageNet normalisation, CHW float layout).

use mosa_core::Rng;

use crate::image::Rgb8;
use crate::resize::{TfBilinear, center_crop_offsets, crop, resize_bilinear, shorter_side_size};
use crate::source::Style;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// The resize of VTAB-style datasets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VtabResize {
    /// TensorFlow's bilinear, the reference's ([`TfBilinear`]).
    #[default]
    Tensorflow,
    /// PIL's antialiased, 8-bit bilinear ([`resize_bilinear`]): mosa's before run format 4, kept
    /// so that older runs resume and evaluate on the pixels they trained on.
    Pil,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    pub style: Style,
    /// Output side S.
    pub size: usize,
    /// Training-time augmentation (FGVC only: random crop + horizontal flip).
    pub train: bool,
    /// How [`Style::Vtab`] resizes.
    pub vtab_resize: VtabResize,
}

/// An image as it is kept between draws: 8-bit pixels and the size of the decoded source they
/// came from. VTAB: the source's rows and columns that TensorFlow's resize to S×S reads
/// ([`TfBilinear::compact`], at most 2S × 2S); FGVC: the source resized (PIL) so that its shorter
/// side is `256·S/224`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub pixels: Rgb8,
    pub source_width: usize,
    pub source_height: usize,
}

impl Transform {
    pub fn new(style: Style, size: usize, train: bool) -> Self {
        Self { style, size, train, vtab_resize: VtabResize::default() }
    }

    /// Whether a sample's pixels depend on the draw (FGVC training: random crop and flip); VTAB
    /// training, as the reference, has no augmentation.
    pub fn augments(&self) -> bool {
        self.train && self.style == Style::Fgvc
    }

    pub fn with_vtab_resize(self, vtab_resize: VtabResize) -> Self {
        Self { vtab_resize, ..self }
    }

    fn tf_resize(&self, source_width: usize, source_height: usize) -> TfBilinear {
        TfBilinear::new(source_width, source_height, self.size, self.size)
    }

    /// The deterministic, cacheable part (see [`Prepared`]).
    pub fn prepare(&self, img: &Rgb8) -> Prepared {
        let pixels = match (self.style, self.vtab_resize) {
            (Style::Vtab, VtabResize::Tensorflow) => self.tf_resize(img.width, img.height).compact(img),
            (Style::Vtab, VtabResize::Pil) => resize_bilinear(img, self.size, self.size),
            (Style::Fgvc, _) => {
                let (w, h) = shorter_side_size(img.width, img.height, self.fgvc_shorter());
                resize_bilinear(img, w, h)
            }
        };
        Prepared { pixels, source_width: img.width, source_height: img.height }
    }

    pub fn fgvc_shorter(&self) -> usize {
        (256 * self.size) / 224
    }

    /// The per-draw part on a prepared image, written as CHW floats into `out` (3·S·S).
    /// `rng` is only used by training-time FGVC augmentation.
    pub fn finish(&self, p: &Prepared, rng: &mut Rng, out: &mut [f32]) {
        let s = self.size;
        match (self.style, self.vtab_resize) {
            (Style::Vtab, VtabResize::Tensorflow) => {
                let hwc = self.tf_resize(p.source_width, p.source_height).resize_compacted(&p.pixels);
                hwc_to_chw_normalised(&hwc, s, s, false, out);
            }
            (Style::Vtab, VtabResize::Pil) => to_chw_normalised(&p.pixels, false, out),
            (Style::Fgvc, _) => {
                let img = &p.pixels;
                let (left, top) =
                    if self.train { (rng.below(img.width - s + 1), rng.below(img.height - s + 1)) } else { center_crop_offsets(img.width, img.height, s) };
                let flip = self.train && rng.uniform() < 0.5;
                to_chw_normalised(&crop(img, left, top, s, s), flip, out);
            }
        }
    }
}

/// `(v/255 - mean) / std` (computed as `v · 1/(255·std) − mean/std`, within 1e-6 of the
/// reference's order), CHW, optionally mirrored left-right.
pub fn to_chw_normalised(img: &Rgb8, flip: bool, out: &mut [f32]) {
    hwc_to_chw_normalised(&img.data, img.width, img.height, flip, out);
}

/// [`to_chw_normalised`] on pixels in 0..=255 (row-major HWC): 8-bit, or the `f32` output of a
/// float resize.
pub fn hwc_to_chw_normalised<T: Copy + Into<f32>>(hwc: &[T], w: usize, h: usize, flip: bool, out: &mut [f32]) {
    assert_eq!(out.len(), 3 * w * h);
    assert_eq!(hwc.len(), 3 * w * h);
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * IMAGENET_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let p = &hwc[(y * w + sx) * 3..(y * w + sx) * 3 + 3];
            for c in 0..3 {
                out[c * w * h + y * w + x] = p[c].into() * scale[c] - shift[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_hand_values() {
        let img = Rgb8::new(2, 1, vec![255, 0, 128, 0, 255, 64]);
        let mut out = vec![0.0; 6];
        to_chw_normalised(&img, false, &mut out);
        let want = [
            (1.0 - 0.485) / 0.229,
            (0.0 - 0.485) / 0.229, // R
            (0.0 - 0.456) / 0.224,
            (1.0 - 0.456) / 0.224, // G
            (128.0 / 255.0 - 0.406) / 0.225,
            (64.0 / 255.0 - 0.406) / 0.225, // B
        ];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-5, "{g} vs {w}");
        }
        let mut flipped = vec![0.0; 6];
        to_chw_normalised(&img, true, &mut flipped);
        assert_eq!([flipped[0], flipped[1]], [out[1], out[0]]);
    }

    #[test]
    fn fgvc_eval_is_centre_crop_and_train_is_seeded() {
        // 8x6 image whose pixel value encodes its position; S = 4: shorter side 256*4/224 = 4
        // -> resized to 5x4 (int(4*8/6) = 5).
        let data: Vec<u8> = (0..48).flat_map(|i| [i as u8, 0, 0]).collect();
        let img = Rgb8::new(8, 6, data);
        let t = Transform::new(Style::Fgvc, 4, false);
        let p = t.prepare(&img);
        assert_eq!((p.pixels.width, p.pixels.height, p.source_width, p.source_height), (5, 4, 8, 6));
        let mut a = vec![0.0; 48];
        t.finish(&p, &mut Rng::new(0), &mut a);
        // centre crop of width 5 -> 4: left = round_half_even(0.5) = 0
        let mut want = vec![0.0; 48];
        to_chw_normalised(&crop(&p.pixels, 0, 0, 4, 4), false, &mut want);
        assert_eq!(a, want);

        let tt = Transform::new(Style::Fgvc, 4, true);
        let draw = |seed| {
            let mut o = vec![0.0; 48];
            tt.finish(&p, &mut Rng::new(seed), &mut o);
            o
        };
        assert_eq!(draw(1), draw(1));
        let distinct: std::collections::BTreeSet<Vec<u32>> = (0..32).map(|s| draw(s).iter().map(|v| v.to_bits()).collect()).collect();
        assert_eq!(distinct.len(), 4, "2 crop positions x 2 flips");
    }

    #[test]
    fn vtab_is_tensorflow_resize_in_float_then_normalised() {
        // 6x2 grey source shrunk to S = 2 (aspect ignored): x taps at in = 1 and 4 (scale 3) read
        // single columns, y taps at in = 0 and 1 (scale 1); so the output is exactly columns 1
        // and 4, no averaging with their neighbours (PIL would average three columns each).
        let v = [10u8, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 121];
        let img = Rgb8::new(6, 2, v.iter().flat_map(|&x| [x, x, x]).collect());
        let t = Transform::new(Style::Vtab, 2, false);
        let p = t.prepare(&img);
        assert_eq!((p.pixels.width, p.pixels.height), (2, 2), "only the columns read are kept");
        let mut out = vec![0.0; 12];
        t.finish(&p, &mut Rng::new(0), &mut out);
        for c in 0..3 {
            let want = [20.0f32, 50.0, 80.0, 110.0].map(|x| (x / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]);
            for (g, w) in out[c * 4..c * 4 + 4].iter().zip(want) {
                assert!((g - w).abs() < 1e-6, "channel {c}: {g} vs {w}");
            }
        }
        // training draws are the same (no augmentation for VTAB)
        let mut tr = vec![0.0; 12];
        Transform::new(Style::Vtab, 2, true).finish(&p, &mut Rng::new(9), &mut tr);
        assert_eq!(tr, out);
    }
}
