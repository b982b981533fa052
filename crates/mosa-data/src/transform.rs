//! Preprocessing (data.md): what is cached per image (decoded + resized, 8 bits) and what is done
//! per draw (crop, flip, [0,1] scaling, ImageNet normalisation, CHW float layout).

use mosa_core::Rng;

use crate::image::Rgb8;
use crate::resize::{center_crop_offsets, crop, resize_bilinear, shorter_side_size};
use crate::source::Style;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Transform {
    pub style: Style,
    /// Output side S.
    pub size: usize,
    /// Training-time augmentation (FGVC only: random crop + horizontal flip).
    pub train: bool,
}

impl Transform {
    pub fn new(style: Style, size: usize, train: bool) -> Self {
        Self { style, size, train }
    }

    /// The deterministic, cacheable part: VTAB resizes to S×S; FGVC resizes the shorter side to
    /// `256·S/224` keeping aspect.
    pub fn prepare(&self, img: &Rgb8) -> Rgb8 {
        match self.style {
            Style::Vtab => resize_bilinear(img, self.size, self.size),
            Style::Fgvc => {
                let (w, h) = shorter_side_size(img.width, img.height, self.fgvc_shorter());
                resize_bilinear(img, w, h)
            }
        }
    }

    pub fn fgvc_shorter(&self) -> usize {
        (256 * self.size) / 224
    }

    /// The per-draw part on a prepared image, written as CHW floats into `out` (3·S·S).
    /// `rng` is only used by training-time FGVC augmentation.
    pub fn finish(&self, img: &Rgb8, rng: &mut Rng, out: &mut [f32]) {
        let s = self.size;
        let view = match self.style {
            Style::Vtab => std::borrow::Cow::Borrowed(img),
            Style::Fgvc => {
                let (left, top) = if self.train {
                    (rng.below(img.width - s + 1), rng.below(img.height - s + 1))
                } else {
                    center_crop_offsets(img.width, img.height, s)
                };
                std::borrow::Cow::Owned(crop(img, left, top, s, s))
            }
        };
        let flip = self.style == Style::Fgvc && self.train && rng.uniform() < 0.5;
        to_chw_normalised(&view, flip, out);
    }
}

/// `(v/255 - mean) / std`, CHW, optionally mirrored left-right.
pub fn to_chw_normalised(img: &Rgb8, flip: bool, out: &mut [f32]) {
    let (w, h) = (img.width, img.height);
    assert_eq!(out.len(), 3 * w * h);
    let scale: [f32; 3] = std::array::from_fn(|c| 1.0 / (255.0 * IMAGENET_STD[c]));
    let shift: [f32; 3] = std::array::from_fn(|c| IMAGENET_MEAN[c] / IMAGENET_STD[c]);
    for y in 0..h {
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let p = &img.data[(y * w + sx) * 3..(y * w + sx) * 3 + 3];
            for c in 0..3 {
                out[c * w * h + y * w + x] = p[c] as f32 * scale[c] - shift[c];
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
            (1.0 - 0.485) / 0.229, (0.0 - 0.485) / 0.229, // R
            (0.0 - 0.456) / 0.224, (1.0 - 0.456) / 0.224, // G
            (128.0 / 255.0 - 0.406) / 0.225, (64.0 / 255.0 - 0.406) / 0.225, // B
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
        assert_eq!((p.width, p.height), (5, 4));
        let mut a = vec![0.0; 48];
        t.finish(&p, &mut Rng::new(0), &mut a);
        // centre crop of width 5 -> 4: left = round_half_even(0.5) = 0
        let mut want = vec![0.0; 48];
        to_chw_normalised(&crop(&p, 0, 0, 4, 4), false, &mut want);
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
}
