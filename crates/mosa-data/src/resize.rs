//! Bilinear resampling as PIL does it (`Image.resize(..., BILINEAR)`, which torchvision's
//! `Resize` calls on PIL images in the reference code): a separable triangle filter whose support
//! grows with the downscale factor (so downscaling averages, i.e. antialiases), pixel centres at
//! +0.5, horizontal pass then vertical pass, each rounded to 8 bits.

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
