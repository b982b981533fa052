//! `mosa merge`: task experts merged onto their base backbone (`mosa_core::merge`, index space for
//! sparse experts), written as one file with every task's head (`mosa_train::merged`).

use std::path::PathBuf;

use mosa_core::merge::{MergeConfig, MergeMethod};

#[derive(clap::Args)]
pub struct Args {
    /// Expert files (`expert.safetensors` of `sparse`, `lora` or `full` runs; one kind per merge).
    #[arg(required = true)]
    experts: Vec<PathBuf>,
    #[arg(long, value_enum)]
    method: MergeMethod,
    /// Per-expert weights, comma-separated, in the experts' order [default: all 1].
    #[arg(long, value_delimiter = ',')]
    weights: Vec<f32>,
    /// Scale λ of the merged delta [default: 0.3 for task-arithmetic and dare, 1 otherwise].
    #[arg(long)]
    lambda: Option<f32>,
    /// TIES: fraction of each expert's entries kept, by magnitude.
    #[arg(long, default_value_t = 0.2)]
    ties_k: f32,
    /// DARE: drop probability.
    #[arg(long, default_value_t = 0.5)]
    dare_p: f32,
    /// Seed of DARE's drops.
    #[arg(long, default_value_t = 3407)]
    seed: u64,
    /// The base backbone weights [default: the file the experts were trained on].
    #[arg(long)]
    base: Option<PathBuf>,
    /// The merged model (safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let cfg = MergeConfig { method: a.method, weights: a.weights, lambda: a.lambda, ties_k: a.ties_k, dare_p: a.dare_p, seed: a.seed };
    cfg.validate(a.experts.len()).map_err(anyhow::Error::msg)?;
    let t0 = std::time::Instant::now();
    let m = mosa_train::merged::merge_files(&a.experts, a.base.as_deref(), &cfg, &a.out)?;
    println!(
        "wrote {}: {} {:?} experts merged with {:?} (λ {}) onto {} in {:.2} s: {} tensors changed from {} stored entries; tasks: {}",
        a.out.display(),
        m.report.experts,
        m.kind,
        cfg.method,
        cfg.lambda(),
        m.base,
        t0.elapsed().as_secs_f64(),
        m.report.tensors,
        m.report.entries,
        m.tasks.iter().map(|t| t.task.as_str()).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
