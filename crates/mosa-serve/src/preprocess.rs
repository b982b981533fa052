//! Encoded images (JPEG, PNG) to the tensor a task's model takes: decoded, its size checked
//! before any pixel is, then the task's evaluation transform (`mosa_data::transform`: VTAB's
//! resize or FGVC's resize and centre crop, ImageNet normalisation, CHW).

use std::io::Cursor;
use std::path::Path;

use mosa_core::Rng;
use mosa_data::transform::Transform;

use crate::error::{Error, Result};
use crate::task::TaskMeta;

/// Decodes `images` and preprocesses them for `task`: `[n, 3, side, side]` floats. `what` names
/// the images in errors (`image 2`, `file "cat.jpg"`).
pub fn images(task: &TaskMeta, images: &[(String, Vec<u8>)], max_pixels: u64) -> Result<Vec<f32>> {
    let side = task.resolution;
    let transform = Transform::new(task.style, side, false);
    let mut out = vec![0f32; images.len() * 3 * side * side];
    for ((what, bytes), dst) in images.iter().zip(out.chunks_mut(3 * side * side)) {
        let bad = |m: String| Error::BadRequest(format!("{what}: {m}"));
        let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
        if reader.format().is_none() {
            return Err(bad("not an image this server decodes (JPEG or PNG)".into()));
        }
        let (w, h) = reader.into_dimensions().map_err(|e| bad(format!("cannot be decoded: {e}")))?;
        if u64::from(w) * u64::from(h) > max_pixels {
            return Err(bad(format!("{w}×{h} pixels is over the limit of {max_pixels}")));
        }
        let img = mosa_data::image::decode_bytes(bytes, Path::new(what)).map_err(|e| bad(format!("cannot be decoded: {e}")))?;
        let prepared = transform.prepare(&img);
        transform.finish(&prepared, &mut Rng::new(0), dst);
    }
    Ok(out)
}
