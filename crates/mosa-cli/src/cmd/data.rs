//! `mosa data check <dataset>`: read every list entry and every image, print counts per split
//! and per class, and fail with the file and line of the first problem (or all, with `--all`).

use anyhow::{Context, bail};
use clap::Subcommand;
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
        #[arg(long)]
        resize: Option<usize>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Check { dataset, all, resize, json } => check(&dataset, all, resize, json),
    }
}

fn check(spec: &str, all: bool, resize: Option<usize>, json: bool) -> anyhow::Result<()> {
    let spec: DatasetSpec = spec.parse()?;
    let ds = Dataset::open(&spec)?;
    let report = mosa_data::check::check(&ds, all);
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
            println!("decode + resize to {}: {} {} images in {:.2} s = {:.0} images/s", resize.unwrap_or(0), r.split, r.images, r.seconds, r.images_per_second());
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
