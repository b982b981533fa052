//! Method options as command-line flags (shared by the commands that take a method).

use mosa_core::lora::LoraSplit;
use mosa_core::mosa::Share;
use mosa_core::sparse::{Criterion, Scope, SparseConfig};
use mosa_core::{MethodConfig, MethodKind};

#[derive(clap::Args, Debug, Clone)]
pub struct MethodArgs {
    /// linear, full, bitfit, adapter, pfeiffer, houlsby, lora, vpt-shallow, vpt-deep, mosa,
    /// pruned-adapter, mosa-lora, sparse
    #[arg(long, default_value = "mosa")]
    pub method: MethodKind,
    /// Adapter bottleneck r.
    #[arg(long, default_value_t = 16)]
    pub r: usize,
    /// Adapter output scale s.
    #[arg(long, default_value_t = 0.1)]
    pub scale: f64,
    /// Dropout inside adapters.
    #[arg(long, default_value_t = 0.1)]
    pub adapter_dropout: f64,
    /// MoSA / pruned-adapter / MoSA-LoRA experts N.
    #[arg(long, default_value_t = 4)]
    pub experts: usize,
    /// MoSA: the dense shared projection: down, up or none.
    #[arg(long, default_value = "down")]
    pub share: Share,
    #[arg(long, default_value_t = 8)]
    pub lora_r: usize,
    #[arg(long, default_value_t = 8.0)]
    pub lora_alpha: f64,
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f64,
    /// MoSA-LoRA: the factor split into experts, a or b.
    #[arg(long, default_value = "b")]
    pub lora_split: LoraSplit,
    /// Linear layers for lora / mosa-lora / sparse (comma-separated: qkv, proj, fc1, fc2).
    #[arg(long, value_delimiter = ',', default_value = "qkv")]
    pub targets: Vec<String>,
    /// VPT prompt tokens.
    #[arg(long, default_value_t = 10)]
    pub prompt_tokens: usize,
    /// Sparse: fraction of each targeted matrix kept.
    #[arg(long, default_value_t = 0.05)]
    pub keep_ratio: f64,
    /// Sparse: sensitivity-signed (default, as the reference), sensitivity-abs (SNIP),
    /// grad-magnitude, weight-magnitude, random.
    #[arg(long, default_value = "sensitivity-signed", value_parser = parse_criterion)]
    pub criterion: Criterion,
    /// Sparse: per-layer, global, or block:<tile>.
    #[arg(long, default_value = "per-layer", value_parser = parse_scope)]
    pub scope: Scope,
    /// Sparse: re-select the mask every K steps of the first epoch.
    #[arg(long, default_value_t = 5)]
    pub reselect_every: usize,
    /// Seed of masks and expert draws.
    #[arg(long, default_value_t = 3407)]
    pub seed: u64,
}

fn parse_criterion(s: &str) -> Result<Criterion, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("unknown criterion `{s}`: sensitivity-signed, sensitivity-abs, grad-magnitude, weight-magnitude, random"))
}

fn parse_scope(s: &str) -> Result<Scope, String> {
    match s {
        "per-layer" => Ok(Scope::PerLayer),
        "global" => Ok(Scope::Global),
        _ => match s.strip_prefix("block:").map(str::parse::<usize>) {
            Some(Ok(tile)) if tile > 0 => Ok(Scope::Block { tile }),
            _ => Err(format!("unknown scope `{s}`: per-layer, global or block:<tile>")),
        },
    }
}

impl MethodArgs {
    pub fn config(&self) -> anyhow::Result<MethodConfig> {
        let c = MethodConfig::new(self.method)
            .with_r(self.r)
            .with_scale(self.scale)
            .with_adapter_dropout(self.adapter_dropout)
            .with_experts(self.experts)
            .with_share(self.share)
            .with_lora_r(self.lora_r)
            .with_lora_alpha(self.lora_alpha)
            .with_lora_dropout(self.lora_dropout)
            .with_lora_split(self.lora_split)
            .with_targets(self.targets.clone())
            .with_prompt_tokens(self.prompt_tokens)
            .with_sparse(
                SparseConfig::new()
                    .with_keep_ratio(self.keep_ratio)
                    .with_criterion(self.criterion)
                    .with_scope(self.scope)
                    .with_reselect_every(self.reselect_every)
                    .with_seed(self.seed),
            )
            .with_seed(self.seed);
        c.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}
