//! `mosa expert export | convert | import | info`: task experts (`mosa_core::expert`) from runs,
//! to and from HF PEFT adapter folders (`mosa_train::peft`), and what a file holds.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mosa_core::expert::{Delta, Expert, ValueDtype};

use crate::backend::{self, Backend};

/// What an export writes.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// mosa's expert file (`.safetensors`, indices + values / LoRA factors / deltas).
    Mosa,
    /// An HF PEFT adapter folder: LoRA experts as LORA, sparse experts as SHIRA (lossless), full
    /// experts as the fine-tuned model's plain state dict (`model.safetensors`).
    Peft,
}

#[derive(Subcommand)]
pub enum Command {
    /// Make the task expert of a finished `sparse`, `lora` or `full` run.
    Export {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
        /// Output file (mosa) or folder (peft) [default: <run>/expert.safetensors, <run>/peft].
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = Format::Mosa)]
        format: Format,
        /// Precision of the stored sparse values (mosa format).
        #[arg(long, value_enum, default_value_t = ValueDtype::F32)]
        values: ValueDtype,
    },
    /// Convert an expert file to a PEFT adapter folder (`--to peft`).
    Convert {
        file: PathBuf,
        #[arg(long, value_enum)]
        to: Format,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// The base weights (a full expert's state dict is base + change) [default: the file the expert names].
        #[arg(long)]
        base: Option<PathBuf>,
    },
    /// Read an HF PEFT LoRA or SHiRA adapter folder (trained on a timm ViT / Swin / ConvNeXt) as a
    /// mosa expert file, for `mosa merge`, `mosa eval --task` and `mosa serve`.
    Import {
        /// The adapter folder (`adapter_config.json` + `adapter_model.safetensors`).
        dir: PathBuf,
        /// The base weights it was trained on (timm names).
        #[arg(long)]
        base: PathBuf,
        /// A preset or config JSON [default: the exported expert's, or the preset of the adapter's timm base name].
        #[arg(long)]
        model: Option<String>,
        /// The task's name (merges and `--task` refer to it).
        #[arg(long)]
        task: String,
        /// A text file of class names, one per line in label order [default: 0, 1, …].
        #[arg(long)]
        classes: Option<PathBuf>,
        /// Input side the adapter was trained at.
        #[arg(long)]
        resolution: Option<usize>,
        /// Output expert file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Kind, tensors, kept entries, density, bytes and metadata of an expert file.
    Info { file: PathBuf },
}

pub fn run(c: Command) -> anyhow::Result<()> {
    match c {
        Command::Export { run, out, format: Format::Peft, values } => {
            let out = out.unwrap_or_else(|| run.join("peft"));
            let e = mosa_train::expert::expert_of_run::<Backend>(&run, values, &backend::device())?;
            report(&e, &out, mosa_train::peft::export(&e, &out, None)?);
        }
        Command::Convert { file, to, out, base } => {
            if to == Format::Mosa {
                anyhow::bail!("{} is already a mosa expert; `--to peft` converts it", file.display());
            }
            let e = Expert::read(&file).map_err(anyhow::Error::msg)?;
            report(&e, &out, mosa_train::peft::export(&e, &out, base.as_deref())?);
        }
        Command::Import { dir, base, model, task, classes, resolution, out } => {
            let classes = match classes {
                Some(f) => {
                    let text = mosa_core::fsio::read_text(&f, mosa_core::fsio::caps::LIST).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
                    Some(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
                }
                None => None,
            };
            mosa_train::output::check_output(&out, &[base.as_path(), &dir.join(mosa_core::peft::WEIGHTS_FILE), &dir.join(mosa_core::peft::CONFIG_FILE)], None)?;
            let spec = mosa_train::peft::ImportSpec { base: &base, model: model.as_deref(), task: &task, classes, resolution };
            let e = mosa_train::peft::import(&dir, &spec)?;
            let bytes = e.write(&out).map_err(anyhow::Error::msg)?;
            println!(
                "wrote {} ({:?} expert of task {} from a PEFT {} adapter, {} tensors, {} entries, head {}, {bytes} bytes)",
                out.display(),
                e.meta.kind,
                e.meta.task,
                e.meta.method["method"].as_str().unwrap_or("?").trim_start_matches("peft-").to_uppercase(),
                e.tensors.len(),
                e.nnz(),
                e.head.as_ref().map(|h| format!("{} classes", h.weight.shape[0])).unwrap_or("none".into())
            );
        }
        Command::Export { run, out, format: Format::Mosa, values } => {
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

fn report(e: &Expert, out: &std::path::Path, x: mosa_train::peft::Exported) {
    let shira = x.shira.map(|(r, pad)| format!(", r {r}, {pad} zero-valued padding entries")).unwrap_or_default();
    println!(
        "wrote {} ({:?} expert of task {} as {}{shira}: {})",
        out.display(),
        e.meta.kind,
        e.meta.task,
        x.what,
        x.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    );
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
