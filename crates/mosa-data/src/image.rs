//! Decoded images (RGB, 8 bits, row-major HWC) and decoding with the spec's colour rules:
//! grey becomes three equal channels, alpha is composited on white.

use std::path::Path;

use crate::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    /// `height * width * 3` bytes, row-major, RGB interleaved.
    pub data: Vec<u8>,
}

impl Rgb8 {
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Self {
        assert_eq!(data.len(), width * height * 3, "Rgb8: {width}x{height} needs {} bytes", width * height * 3);
        Self { width, height, data }
    }
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

/// Composites one channel value `c` with alpha `a` on white, rounding to nearest.
pub fn on_white(c: u8, a: u8) -> u8 {
    let (c, a) = (c as u32, a as u32);
    ((c * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Decodes an encoded image (PNG, JPEG) held in memory. `name` only labels errors.
pub fn decode_bytes(bytes: &[u8], name: &Path) -> Result<Rgb8> {
    let err = |msg: String| DataError::Image { path: name.to_path_buf(), at: None, msg };
    let img = image::load_from_memory(bytes).map_err(|e| err(e.to_string()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(err("image has no pixels".into()));
    }
    use image::DynamicImage as D;
    let data = match img {
        D::ImageLuma8(g) => g.into_raw().into_iter().flat_map(|v| [v, v, v]).collect(),
        D::ImageLumaA8(g) => g
            .into_raw()
            .chunks_exact(2)
            .flat_map(|p| {
                let v = on_white(p[0], p[1]);
                [v, v, v]
            })
            .collect(),
        D::ImageRgb8(i) => i.into_raw(),
        D::ImageRgba8(i) => i.into_raw().chunks_exact(4).flat_map(|p| [on_white(p[0], p[3]), on_white(p[1], p[3]), on_white(p[2], p[3])]).collect(),
        other if other.color().has_alpha() => {
            other.into_rgba8().into_raw().chunks_exact(4).flat_map(|p| [on_white(p[0], p[3]), on_white(p[1], p[3]), on_white(p[2], p[3])]).collect()
        }
        other => other.into_rgb8().into_raw(),
    };
    Ok(Rgb8::new(w, h, data))
}

/// Reads and decodes an image file.
pub fn decode_file(path: &Path) -> Result<Rgb8> {
    let bytes = mosa_core::fsio::read_bounded(path, mosa_core::fsio::caps::IMAGE).map_err(|e| DataError::read(path, e))?;
    decode_bytes(&bytes, path)
}

/// Encodes as PNG (RGB, or grey when `grey` and all channels are equal).
pub fn encode_png(img: &Rgb8, grey: bool) -> Vec<u8> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new_with_quality(&mut out, image::codecs::png::CompressionType::Best, image::codecs::png::FilterType::Adaptive);
    if grey {
        let g: Vec<u8> = img.data.chunks_exact(3).map(|p| p[0]).collect();
        enc.write_image(&g, img.width as u32, img.height as u32, image::ExtendedColorType::L8).expect("PNG encoding to memory");
    } else {
        enc.write_image(&img.data, img.width as u32, img.height as u32, image::ExtendedColorType::Rgb8).expect("PNG encoding to memory");
    }
    out
}
