//! `mosa expert export | info`: task experts (`mosa_core::expert`) from runs, and what a file holds.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mosa_core::expert::{Delta, Expert, ValueDtype};

use crate::backend::{self, Backend};

#[derive(Subcommand)]
pub enum Command {
    /// Make the task expert of a finished `sparse`, `lora` or `full` run.
    Export {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Output file [default: <run>/expert.safetensors].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Precision of the stored sparse values.
        #[arg(long, value_enum, default_value_t = ValueDtype::F32)]
        values: ValueDtype,
    },
    /// Kind, tensors, kept entries, density, bytes and metadata of an expert file.
    Info { file: PathBuf },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Export { run, out, values } => {
            let out = out.unwrap_or_else(|| run.join("expert.safetensors"));
            let (e, bytes) = mosa_train::expert::export_run::<Backend>(&run, &out, values, &backend::device())?;
            println!(
                "wrote {} ({:?} expert of task {}, {} tensors, {} entries, {bytes} bytes)",
                out.display(),
                e.meta.kind,
                e.meta.task,
                e.tensors.len(),
                e.nnz()
            );
        }
        Command::Info { file } => info(&file)?,
    }
    Ok(())
}

fn info(file: &std::path::Path) -> anyhow::Result<()> {
    let e = Expert::read(file).map_err(anyhow::Error::msg)?;
    let bytes = std::fs::metadata(file).with_context(|| file.display().to_string())?.len();
    let m = &e.meta;
    println!(
        "{}: {:?} expert of task `{}` ({} classes, {} px), method {}",
        file.display(),
        m.kind,
        m.task,
        m.classes.len(),
        m.resolution.map(|r| r.to_string()).unwrap_or("?".into()),
        m.method["method"].as_str().unwrap_or("?")
    );
    println!(
        "backbone: {} (weights {}, SHA-256 {})",
        m.backbone.model,
        m.backbone.weights.as_deref().unwrap_or("none"),
        m.backbone.sha256.as_deref().unwrap_or("none")
    );
    if let (Some(k), Some(c)) = (m.keep_ratio, &m.criterion) {
        println!("keep ratio {k}, criterion {c}, values {:?}", m.values);
    }
    println!();
    println!("| tensor | shape | stored as | entries | density | dense f32 bytes |");
    println!("|---|---|---|---:|---:|---:|");
    for t in &e.tensors {
        let n = t.numel();
        let enc = m.tensors.get(&t.name).map(|x| x.encoding.as_str()).unwrap_or("?");
        let rank = match &t.delta {
            Delta::LowRank { a, .. } => format!(" (r {})", a.shape[0]),
            _ => String::new(),
        };
        println!("| {} | {:?} | {enc}{rank} | {} | {:.4} | {} |", t.name, t.shape, t.delta.nnz(n), t.delta.nnz(n) as f64 / n as f64, 4 * n);
    }
    let (nnz, numel) = (e.nnz(), e.numel());
    println!();
    println!(
        "total: {} tensors, {nnz} entries of {numel} ({:.4}), file {bytes} bytes = {:.2} bytes per stored entry; the dense f32 ΔW it replaces: {} bytes",
        e.tensors.len(),
        nnz as f64 / numel.max(1) as f64,
        bytes as f64 / nnz.max(1) as f64,
        4 * numel
    );
    if let Some(acc) = m.summary.get("last_test").and_then(|v| v.as_f64()) {
        println!("training: last test accuracy {:.2} % on {}", 100.0 * acc, m.dataset);
    }
    Ok(())
}
