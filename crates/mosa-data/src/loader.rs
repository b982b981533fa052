//! Loading a split: every image decoded and prepared once, in parallel (rayon), kept in memory
//! as 8-bit pixels ([`Prepared`]; optionally also in a file on disk, so that the next run does not decode the
//! JPEGs again), and drawn into float batches per step.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use mosa_core::Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};
use crate::image::{Rgb8, decode_file};
use crate::list::{Entry, Split};
use crate::transform::{Prepared, Transform};

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Skip images that cannot be read or decoded (with a warning and a count) instead of failing.
    pub skip_unreadable: bool,
    /// Folder for the on-disk cache of prepared images (None: memory only).
    pub disk_cache: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct LoadReport {
    pub split: String,
    pub images: usize,
    /// `(entry, error)` of every skipped image.
    pub skipped: Vec<(String, String)>,
    pub seconds: f64,
    pub from_disk_cache: bool,
}

impl LoadReport {
    pub fn images_per_second(&self) -> f64 {
        self.images as f64 / self.seconds.max(1e-9)
    }
}

/// A split with its images decoded and prepared (see [`Transform::prepare`]).
#[derive(Debug, Clone)]
pub struct LoadedSplit {
    pub name: String,
    pub transform: Transform,
    pub num_classes: usize,
    pub images: Vec<Prepared>,
    pub labels: Vec<usize>,
}

/// Decodes an entry's image; errors name the list file and line the entry came from.
pub(crate) fn decode_entry(e: &Entry) -> Result<Rgb8> {
    decode_file(&e.path).map_err(|err| {
        let msg = match err {
            DataError::Image { msg, .. } => msg,
            DataError::Io { source, .. } => source.to_string(),
            other => other.to_string(),
        };
        DataError::Image { path: e.path.clone(), at: e.origin.as_ref().map(|o| (o.file.clone(), o.line)), msg }
    })
}

impl LoadedSplit {
    pub fn load(split: &Split, num_classes: usize, transform: Transform, opts: &LoadOptions) -> Result<(Self, LoadReport)> {
        let start = Instant::now();
        if split.is_empty() {
            return Err(DataError::Spec(format!("split `{}` is empty", split.name)));
        }
        if let Some(e) = split.entries.iter().find(|e| e.label >= num_classes) {
            return Err(DataError::Spec(format!("{}: label {} out of range ({} classes)", e.describe(), e.label, num_classes)));
        }
        let cache_file = opts.disk_cache.as_ref().map(|d| d.join(format!("{}.u8cache", cache_key(split, &transform))));
        if let Some(f) = &cache_file
            && let Some(loaded) = read_cache(f, split, transform, num_classes)
        {
            let report = LoadReport {
                split: split.name.clone(),
                images: loaded.images.len(),
                skipped: vec![],
                seconds: start.elapsed().as_secs_f64(),
                from_disk_cache: true,
            };
            return Ok((loaded, report));
        }
        let results: Vec<Result<Prepared>> = split.entries.par_iter().map(|e| decode_entry(e).map(|img| transform.prepare(&img))).collect();
        let mut images = Vec::with_capacity(results.len());
        let mut labels = Vec::with_capacity(results.len());
        let mut skipped = Vec::new();
        for (e, r) in split.entries.iter().zip(results) {
            match r {
                Ok(img) => {
                    images.push(img);
                    labels.push(e.label);
                }
                Err(err) if opts.skip_unreadable => skipped.push((e.describe(), err.to_string())),
                Err(err) => return Err(err),
            }
        }
        if images.is_empty() {
            return Err(DataError::Spec(format!("split `{}`: none of its {} images could be read", split.name, split.len())));
        }
        let loaded = LoadedSplit { name: split.name.clone(), transform, num_classes, images, labels };
        if let (Some(f), true) = (&cache_file, skipped.is_empty()) {
            // The cache is an optimisation: failing to write it is not an error of the run.
            if let Err(e) = write_cache(f, &loaded) {
                eprintln!("warning: cannot write the image cache {}: {e}", f.display());
            }
        }
        let report =
            LoadReport { split: split.name.clone(), images: loaded.images.len(), skipped, seconds: start.elapsed().as_secs_f64(), from_disk_cache: false };
        Ok((loaded, report))
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// The labels of the samples `indices`.
    pub fn labels_of(&self, indices: &[usize]) -> Vec<usize> {
        indices.iter().map(|&i| self.labels[i]).collect()
    }

    /// Writes the samples `indices` as a `[n, 3, S, S]` float batch (row-major) and their labels.
    /// Random augmentation of sample `i` draws from `Rng::derive(seed, i)`, so a batch depends
    /// only on (seed, indices), not on threads or order.
    pub fn batch(&self, indices: &[usize], seed: u64) -> (Vec<f32>, Vec<usize>) {
        let s = self.transform.size;
        let per = 3 * s * s;
        let mut out = vec![0f32; indices.len() * per];
        out.par_chunks_mut(per).zip(indices.par_iter()).for_each(|(o, &i)| {
            let mut rng = Rng::derive(seed, i as u64);
            self.transform.finish(&self.images[i], &mut rng, o);
        });
        (out, indices.iter().map(|&i| self.labels[i]).collect())
    }
}

/// Cache key: the prepared-image settings and every entry's path, label, size and mtime.
fn cache_key(split: &Split, t: &Transform) -> String {
    let mut h = Sha256::new();
    h.update(format!("mosa-u8cache v2 {:?} {:?} {}\n", t.style, t.vtab_resize, t.size));
    for e in &split.entries {
        let meta = std::fs::metadata(&e.path).ok();
        let mtime = meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
        h.update(format!("{}\t{}\t{}\t{}\n", e.path.display(), e.label, meta.map(|m| m.len()).unwrap_or(0), mtime));
    }
    hex::encode(&h.finalize()[..12])
}

fn read_cache(path: &Path, split: &Split, transform: Transform, num_classes: usize) -> Option<LoadedSplit> {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).ok()?);
    let mut u = [0u8; 8];
    f.read_exact(&mut u).ok()?;
    let n = u64::from_le_bytes(u) as usize;
    if n != split.len() {
        return None;
    }
    let mut images = Vec::with_capacity(n);
    let u32s = |f: &mut std::io::BufReader<std::fs::File>| -> Option<usize> {
        let mut b = [0u8; 4];
        f.read_exact(&mut b).ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    for _ in 0..n {
        let (w, h, source_width, source_height) = (u32s(&mut f)?, u32s(&mut f)?, u32s(&mut f)?, u32s(&mut f)?);
        let mut data = vec![0u8; w.checked_mul(h)?.checked_mul(3)?];
        f.read_exact(&mut data).ok()?;
        images.push(Prepared { pixels: Rgb8::new(w, h, data), source_width, source_height });
    }
    Some(LoadedSplit { name: split.name.clone(), transform, num_classes, images, labels: split.entries.iter().map(|e| e.label).collect() })
}

fn write_cache(path: &Path, s: &LoadedSplit) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // a temporary file in the same folder, renamed when complete (removed if anything fails)
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        w.write_all(&(s.images.len() as u64).to_le_bytes())?;
        for p in &s.images {
            for v in [p.pixels.width, p.pixels.height, p.source_width, p.source_height] {
                w.write_all(&(v as u32).to_le_bytes())?;
            }
            w.write_all(&p.pixels.data)?;
        }
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map(|_| ()).map_err(|e| e.error)
}
