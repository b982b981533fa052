//! `mosa serve`: one base backbone, many task experts, over HTTP (`mosa_serve`, `docs/serve.md`).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use mosa_models::presets;

use crate::backend::{self, Backend};

#[derive(clap::Args)]
pub struct Args {
    /// The base weights the experts were trained on (or a merged file: its heads are then tasks).
    #[arg(long)]
    base: PathBuf,
    /// Expert files (`mosa expert export`), merged files (`mosa merge`), or folders searched for them.
    #[arg(long, num_args = 1..)]
    experts: Vec<PathBuf>,
    /// The backbone: a preset or a config JSON [default: the one the experts record].
    #[arg(long)]
    model: Option<String>,
    /// The input side every task is served at [default: the first task's].
    #[arg(long)]
    resolution: Option<usize>,
    /// Where to listen (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// A file holding the bearer token of the repository API (load / unload); without it that API is off.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Most images in one forward pass.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// How long (ms) a task's oldest request waits for its batch to fill.
    #[arg(long, default_value_t = 2.0)]
    max_wait_ms: f64,
    /// Most images waiting over all tasks; beyond, requests get 429.
    #[arg(long, default_value_t = 512)]
    max_queue: usize,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 64)]
    max_body_mib: usize,
    /// Largest image, in decoded pixels.
    #[arg(long, default_value_t = 40_000_000)]
    max_pixels: u64,
    /// Longest a request may wait for its answer, in seconds (then 504).
    #[arg(long, default_value_t = 30.0)]
    timeout_s: f64,
    /// Classes `/predictions` answers per image.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(!a.experts.is_empty() || is_merged(&a.base), "give --experts <files or folders> (or a merged file as --base)");
    anyhow::ensure!(a.max_batch >= 1 && a.max_queue >= 1 && a.top_k >= 1, "--max-batch, --max-queue and --top-k must be at least 1");
    anyhow::ensure!(a.max_wait_ms.is_finite() && a.max_wait_ms >= 0.0, "--max-wait-ms must be a non-negative number");
    anyhow::ensure!(a.timeout_s.is_finite() && a.timeout_s > 0.0, "--timeout-s must be a positive number");
    let token = match &a.token_file {
        None => None,
        Some(f) => {
            let t = mosa_core::fsio::read_bounded(f, 4096).with_context(|| f.display().to_string())?;
            let t = String::from_utf8(t).ok().map(|s| s.trim().to_string()).filter(|s| s.len() >= 16 && !s.contains(char::is_whitespace));
            Some(t.with_context(|| format!("{}: the token must be one line of at least 16 characters", f.display()))?)
        }
    };
    let mut opts = mosa_serve::Options::new(a.base.clone(), a.experts.clone());
    opts.model = a.model.as_deref().map(presets::resolve_model).transpose()?;
    opts.resolution = a.resolution;
    opts.addr = a.addr;
    opts.token = token;
    opts.batching = mosa_serve::Batching { max_batch: a.max_batch, max_wait: Duration::from_secs_f64(a.max_wait_ms / 1000.0) };
    opts.limits.max_queue = a.max_queue;
    opts.limits.max_body = a.max_body_mib << 20;
    opts.limits.max_pixels = a.max_pixels;
    opts.limits.timeout = Duration::from_secs_f64(a.timeout_s);
    opts.limits.top_k = a.top_k;
    mosa_serve::serve::<Backend>(opts, backend::device(), |addr| {
        // the line scripts and tests wait for
        println!("listening on http://{addr} ({})", backend::NAME);
        let _ = std::io::stdout().flush();
    })?;
    println!("stopped");
    Ok(())
}

fn is_merged(p: &std::path::Path) -> bool {
    mosa_models::load::safetensors::read_metadata(p).is_ok_and(|m| m.contains_key("mosa.merged"))
}
