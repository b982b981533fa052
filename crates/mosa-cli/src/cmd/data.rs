//! `mosa data check <dataset>`: read every list entry and every image, print counts per split
//! and per class, and fail with the file and line of the first problem (or all, with `--all`).
//! With `--dump F`, also write a split's first images exactly as the model receives them.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use mosa_data::list::Split;
use mosa_data::{Dataset, DatasetSpec, LoadOptions, LoadedSplit, Transform};

#[derive(Subcommand)]
pub enum Command {
    /// Validate a dataset: `vtab:<root>/<task>`, `fgvc:<root>/<name>`, `folder:<path>` or `list:<file>`.
    Check {
        dataset: String,
        /// Report every problem, not only the first.
        #[arg(long)]
        all: bool,
        /// Also time decode + resize to this side (the training preprocessing) and report images/s.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=4096))]
        resize: Option<u64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write the first `--count` images of `--split`, preprocessed to `--resize` S with the
        /// evaluation transform, to this safetensors file: `pixels` (N×3×S×S f32, normalised)
        /// and `labels` (N, i64), in list order.
        #[arg(long, requires = "resize")]
        dump: Option<PathBuf>,
        /// The split `--dump` reads (default: the test split, else the training split).
        #[arg(long, requires = "dump")]
        split: Option<String>,
        /// How many images `--dump` writes (fewer if the split is shorter).
        #[arg(long, default_value_t = 16, requires = "dump", value_parser = clap::value_parser!(u64).range(1..=100_000))]
        count: u64,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Check { dataset, all, resize, json, dump, split, count } => {
            let resize = resize.map(|s| s as usize);
            let ds = Dataset::open(&dataset.parse::<DatasetSpec>()?)?;
            let dump_split = match (&dump, split.as_deref()) {
                (Some(_), Some(name)) => Some(ds.split(name).with_context(|| {
                    let names: Vec<&str> = ds.splits().iter().map(|s| s.name.as_str()).collect();
                    format!("{dataset} has no split `{name}` (it has: {})", names.join(", "))
                })?),
                (Some(_), None) => Some(ds.test.as_ref().unwrap_or(&ds.train)),
                (None, _) => None,
            };
            check(&ds, all, resize, json)?;
            match (dump, dump_split, resize) {
                (Some(file), Some(split), Some(s)) => write_dump(&ds, split, s, count as usize, &file),
                _ => Ok(()),
            }
        }
    }
}

/// `--dump`: the first `count` images of a split through the evaluation transform.
fn write_dump(ds: &Dataset, chosen: &Split, size: usize, count: usize, file: &Path) -> anyhow::Result<()> {
    let first = Split { name: chosen.name.clone(), entries: chosen.entries.iter().take(count).cloned().collect() };
    let transform = Transform::new(ds.style, size, false);
    let (loaded, _) = LoadedSplit::load(&first, ds.num_classes, transform, &LoadOptions::default()).with_context(|| format!("split {}", first.name))?;
    let indices: Vec<usize> = (0..loaded.len()).collect();
    let (pixels, labels) = loaded.batch(&indices, 0);
    let n = labels.len();
    let pixel_bytes: Vec<u8> = pixels.iter().flat_map(|v| v.to_le_bytes()).collect();
    let label_bytes: Vec<u8> = labels.iter().flat_map(|&l| (l as i64).to_le_bytes()).collect();
    let err = |e: safetensors::SafeTensorError| anyhow::anyhow!("{}: {e}", file.display());
    let tensors = vec![
        ("pixels".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![n, 3, size, size], &pixel_bytes).map_err(err)?),
        ("labels".to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![n], &label_bytes).map_err(err)?),
    ];
    let meta = std::collections::HashMap::from([
        ("mosa.dataset".to_string(), ds.spec.to_string()),
        ("mosa.split".to_string(), first.name.clone()),
        ("mosa.preprocessing".to_string(), format!("{:?}", ds.style)),
    ]);
    let bytes = safetensors::tensor::serialize(tensors, Some(meta)).map_err(err)?;
    mosa_core::fsio::write_atomic(file, &bytes).map_err(anyhow::Error::msg)?;
    println!("wrote {} ({n} images of {} at {size}px, {:?} preprocessing)", file.display(), first.name, ds.style);
    Ok(())
}

fn check(ds: &Dataset, all: bool, resize: Option<usize>, json: bool) -> anyhow::Result<()> {
    let report = mosa_data::check::check(ds, all);
    let mut resize_rows = Vec::new();
    if let (Some(s), true) = (resize, report.problems.is_empty()) {
        for split in ds.splits() {
            let t = Transform::new(ds.style, s, split.name == ds.train.name);
            let (_, r) = LoadedSplit::load(split, ds.num_classes, t, &LoadOptions::default()).with_context(|| format!("split {}", split.name))?;
            resize_rows.push(r);
        }
    }
    if json {
        let v = serde_json::json!({ "check": report, "decode_resize": resize_rows.iter().map(|r| serde_json::json!({"split": r.split, "images": r.images, "seconds": r.seconds, "images_per_second": r.images_per_second(), "size": resize})).collect::<Vec<_>>() });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("dataset {} ({}, {} classes, {:?} preprocessing)", report.dataset, ds.name, ds.num_classes, ds.style);
        let names: Vec<String> = (0..ds.num_classes).map(|c| ds.class_names.as_ref().map(|n| n[c].clone()).unwrap_or_else(|| c.to_string())).collect();
        print!("| class |");
        for s in &report.splits {
            print!(" {} |", s.split);
        }
        println!();
        println!("|---|{}", "---:|".repeat(report.splits.len()));
        for (c, name) in names.iter().enumerate() {
            print!("| {c} {name} |");
            for s in &report.splits {
                print!(" {} |", s.per_class[c]);
            }
            println!();
        }
        print!("| **total** |");
        for s in &report.splits {
            print!(" {} |", s.images);
        }
        println!();
        println!("decoded {:.0} images/s", report.images_per_second);
        for r in &resize_rows {
            println!(
                "decode + resize to {}: {} {} images in {:.2} s = {:.0} images/s",
                resize.unwrap_or(0),
                r.split,
                r.images,
                r.seconds,
                r.images_per_second()
            );
        }
    }
    if let Some(first) = report.problems.first() {
        if all {
            for p in &report.problems {
                eprintln!("problem: {p}");
            }
        }
        bail!("{} problem(s) in {}; first: {first}", report.problems.len(), report.dataset);
    }
    Ok(())
}
