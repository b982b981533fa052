//! Our own seeded generator of structured tasks (the mini-VTAB's `shapes_count` and
//! `shapes_position`, in the spirit of CLEVR-count and dSprites-location), and a writer of the
//! VTAB-1k folder layout used by `cargo xtask prepare-mini-vtab` and by tests.

use std::path::Path;

use mosa_core::Rng;

use crate::error::{DataError, Result};
use crate::image::{Rgb8, encode_png};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapesTask {
    /// Label = number of objects − 1 (1..=6 objects, 6 classes).
    Count,
    /// One object; label = which of 8 equal-width vertical bands holds its centre.
    Position,
}

impl ShapesTask {
    pub fn num_classes(self) -> usize {
        match self {
            ShapesTask::Count => 6,
            ShapesTask::Position => 8,
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Disc,
    Square,
    Triangle,
}

fn draw_shape(img: &mut Rgb8, kind: Kind, cx: f64, cy: f64, r: f64, color: [u8; 3]) {
    let (w, h) = (img.width, img.height);
    for y in 0..h {
        for x in 0..w {
            let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
            let inside = match kind {
                Kind::Disc => dx * dx + dy * dy <= r * r,
                Kind::Square => dx.abs() <= r * 0.85 && dy.abs() <= r * 0.85,
                // upward triangle: apex at (0, -r), base at y = r * 0.7
                Kind::Triangle => dy <= r * 0.7 && dy >= -r && dx.abs() <= (dy + r) * 0.6,
            };
            if inside {
                let i = (y * w + x) * 3;
                img.data[i..i + 3].copy_from_slice(&color);
            }
        }
    }
}

/// Image `index` of a task (side `size` px) and its label; a pure function of (seed, index).
pub fn shapes_image(task: ShapesTask, size: usize, seed: u64, index: u64) -> (Rgb8, usize) {
    let mut rng = Rng::derive(seed, index);
    let s = size as f64;
    // flat light background (flat keeps the committed PNGs small)
    let bg: [u8; 3] = std::array::from_fn(|_| 170 + rng.below(60) as u8);
    let data: Vec<u8> = (0..size * size).flat_map(|_| bg).collect();
    let mut img = Rgb8::new(size, size, data);
    let (count, label) = match task {
        ShapesTask::Count => {
            let k = 1 + rng.below(6);
            (k, k - 1)
        }
        ShapesTask::Position => (1, usize::MAX),
    };
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    let mut label = label;
    while placed.len() < count {
        let r = s * (0.06 + 0.05 * rng.uniform());
        let (cx, cy) = match task {
            ShapesTask::Position => {
                let band = rng.below(8);
                label = band;
                let bw = s / 8.0;
                // centre inside the band, the object may extend beyond it
                let cx = (band as f64 + 0.1 + 0.8 * rng.uniform()) * bw;
                (cx, r + (s - 2.0 * r) * rng.uniform())
            }
            ShapesTask::Count => (r + (s - 2.0 * r) * rng.uniform(), r + (s - 2.0 * r) * rng.uniform()),
        };
        if placed.iter().any(|&(px, py, pr)| ((px - cx).powi(2) + (py - cy).powi(2)).sqrt() < pr + r + 1.5) {
            continue; // objects never touch, so they can be counted
        }
        let kind = [Kind::Disc, Kind::Square, Kind::Triangle][rng.below(3)];
        let color: [u8; 3] = std::array::from_fn(|_| rng.below(140) as u8);
        draw_shape(&mut img, kind, cx, cy, r, color);
        placed.push((cx, cy, r));
    }
    (img, label)
}

/// Writes a task in the VTAB-1k layout: `images/<split>/<idx:06d>.png`, the four lists
/// (`train800` = first `n_train`, `val200` = next `n_val`, `train800val200` = both, `test`).
pub fn write_vtab_task(dir: &Path, images: &[(Rgb8, usize)], n_train: usize, n_val: usize, grey: bool) -> Result<()> {
    let n_test = images.len().checked_sub(n_train + n_val).ok_or_else(|| DataError::Spec("fewer images than train + val".into()))?;
    if n_test == 0 {
        return Err(DataError::Spec("no test images".into()));
    }
    let io = |p: &Path, e| DataError::io(p, e);
    for sub in ["images/train", "images/test"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io(&dir.join(sub), e))?;
    }
    let mut lists: [Vec<String>; 3] = Default::default(); // train800, val200, test
    for (i, (img, label)) in images.iter().enumerate() {
        let (split, list, idx) = if i < n_train {
            ("train", 0, i)
        } else if i < n_train + n_val {
            ("train", 1, i)
        } else {
            ("test", 2, i - n_train - n_val)
        };
        let rel = format!("images/{split}/{idx:06}.png");
        std::fs::write(dir.join(&rel), encode_png(img, grey)).map_err(|e| io(&dir.join(&rel), e))?;
        lists[list].push(format!("{rel} {label}"));
    }
    let write = |name: &str, lines: Vec<&String>| {
        let p = dir.join(format!("{name}.txt"));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).map_err(|e| io(&p, e))
    };
    write("train800", lists[0].iter().collect())?;
    write("val200", lists[1].iter().collect())?;
    write("train800val200", lists[0].iter().chain(lists[1].iter()).collect())?;
    write("test", lists[2].iter().collect())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_is_deterministic_and_labels_are_right() {
        let (a, la) = shapes_image(ShapesTask::Count, 32, 7, 3);
        let (b, lb) = shapes_image(ShapesTask::Count, 32, 7, 3);
        assert_eq!((a.clone(), la), (b, lb));
        assert_ne!(shapes_image(ShapesTask::Count, 32, 7, 4).0, a);
        let mut seen = [false; 8];
        for i in 0..200 {
            let (img, l) = shapes_image(ShapesTask::Position, 64, 1, i);
            seen[l] = true;
            // the darkest column's band agrees with the label (objects are darker than the background)
            let col_dark = |x: usize| (0..64).filter(|&y| img.pixel(x, y).iter().map(|&v| v as u32).sum::<u32>() < 3 * 150).count();
            let xs: Vec<usize> = (0..64).filter(|&x| col_dark(x) > 0).collect();
            let cx = (xs[0] + xs[xs.len() - 1]) as f64 / 2.0 + 0.5;
            assert!((cx / 8.0).floor() as usize == l || ((cx / 8.0) - (cx / 8.0).round()).abs() < 0.35, "image {i}: centre {cx} label {l}");
        }
        assert!(seen.iter().all(|&s| s));
        let counts: std::collections::BTreeSet<usize> = (0..100).map(|i| shapes_image(ShapesTask::Count, 32, 2, i).1).collect();
        assert_eq!(counts.len(), 6);
    }
}
