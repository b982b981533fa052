//! `cargo xtask <task>`: orchestration of the `mosa` binary for setup, benchmarks and data tasks.
//!
//! xtask itself does not depend on burn: it builds `mosa` in release mode with the backend
//! feature you pick (`--features cuda`, …) and drives it, so the same task runs on any backend.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
