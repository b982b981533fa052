//! The tuning methods: one config, one trait a backbone implements to host them, and the
//! function that injects a method into any host and sets which parameters train.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use crate::adapter::{Activation, AdapterConfig};
use crate::lora::{LoraConfig, LoraSplit};
use crate::mosa::{MosaConfig, Share};
use crate::params;
use crate::prompt::PromptConfig;
use crate::rng::Rng;
use crate::slot::{AdapterSlot, LinearBranch, Placement};
use crate::sparse::{SparseConfig, SparseDelta};

/// Every method mosa implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MethodKind {
    /// Head only (linear probing).
    Linear,
    /// Everything trains.
    Full,
    /// Biases (and LayerNorm shifts) + head.
    Bitfit,
    /// AdaptFormer: a parallel adapter beside each block's MLP.
    Adapter,
    /// Pfeiffer: a sequential adapter after each block's MLP (ReLU).
    Pfeiffer,
    /// Houlsby: adapters after the attention and after the MLP (SiLU, as in the MoSA code).
    Houlsby,
    /// LoRA on chosen linear layers (default `qkv`).
    Lora,
    /// VPT with prompts before the first block.
    VptShallow,
    /// VPT with prompts replaced before every block.
    VptDeep,
    /// MoSA: the adapter split into N sparse experts.
    Mosa,
    /// The MoSA ablation: one fixed random 1/N of each adapter weight.
    PrunedAdapter,
    /// LoRA with A or B split into N sparse experts.
    MosaLora,
    /// Masked trainable deltas on chosen weights (sparse adapters as mergeable experts).
    Sparse,
}

pub const METHOD_NAMES: &[&str] = &[
    "linear", "full", "bitfit", "adapter", "pfeiffer", "houlsby", "lora", "vpt-shallow", "vpt-deep", "mosa", "pruned-adapter", "mosa-lora", "sparse",
];

impl std::str::FromStr for MethodKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("unknown method `{s}`; methods: {}", METHOD_NAMES.join(", ")))
    }
}

/// A method and all its options (each method reads the ones it needs). Defaults follow the
/// MoSA reference for VTAB-1k (spec §1, §5) and the sparse-adapter paper (sparse-experts §1).
#[derive(Config, Debug)]
pub struct MethodConfig {
    pub method: MethodKind,
    /// Adapter bottleneck.
    #[config(default = 16)]
    pub r: usize,
    #[config(default = 0.1)]
    pub scale: f64,
    #[config(default = 0.1)]
    pub adapter_dropout: f64,
    /// Own LayerNorm in front of each adapter.
    #[config(default = true)]
    pub adapter_norm: bool,
    /// MoSA / pruned adapter / MoSA-LoRA experts.
    #[config(default = 4)]
    pub experts: usize,
    #[config(default = "Share::Down")]
    pub share: Share,
    #[config(default = 8)]
    pub lora_r: usize,
    #[config(default = 8.0)]
    pub lora_alpha: f64,
    #[config(default = 0.0)]
    pub lora_dropout: f64,
    #[config(default = "LoraSplit::B")]
    pub lora_split: LoraSplit,
    /// Linear layers for LoRA / MoSA-LoRA / sparse: names among `qkv`, `proj`, `fc1`, `fc2`.
    #[config(default = "vec![\"qkv\".to_string()]")]
    pub targets: Vec<String>,
    #[config(default = 10)]
    pub prompt_tokens: usize,
    #[config(default = 0.1)]
    pub prompt_dropout: f64,
    /// Sparse adapters: budget, criterion, scope and schedule.
    #[config(default = "SparseConfig::new()")]
    pub sparse: SparseConfig,
    /// Seed of masks and expert draws.
    #[config(default = 3407)]
    pub seed: u64,
}

/// The linear layers of a block that can carry a branch.
pub const LINEAR_TARGETS: &[&str] = &["qkv", "proj", "fc1", "fc2"];

impl MethodConfig {
    pub fn adapter(&self, d: usize) -> AdapterConfig {
        let act = match self.method {
            MethodKind::Pfeiffer => Activation::Relu,
            MethodKind::Houlsby => Activation::Silu,
            _ => Activation::Gelu,
        };
        AdapterConfig::new(d).with_r(self.r).with_scale(self.scale).with_dropout(self.adapter_dropout).with_layer_norm(self.adapter_norm).with_activation(act)
    }

    pub fn mosa(&self, d: usize) -> MosaConfig {
        MosaConfig::new(self.adapter(d)).with_experts(self.experts).with_share(self.share)
    }

    pub fn lora(&self) -> LoraConfig {
        LoraConfig::new().with_r(self.lora_r).with_alpha(self.lora_alpha).with_dropout(self.lora_dropout)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 || self.lora_r == 0 {
            return Err("bottleneck and LoRA rank must be positive".into());
        }
        if self.experts == 0 {
            return Err("experts must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.sparse.keep_ratio) {
            return Err(format!("keep_ratio must be in [0, 1], got {}", self.sparse.keep_ratio));
        }
        if let Some(t) = self.targets.iter().find(|t| !LINEAR_TARGETS.contains(&t.as_str())) {
            return Err(format!("unknown target `{t}`; targets: {}", LINEAR_TARGETS.join(", ")));
        }
        Ok(())
    }

    /// Whether the parameter at `path` trains under this method.
    pub fn trains(&self, path: &str) -> bool {
        let head = path == "head" || path.starts_with("head.");
        match self.method {
            MethodKind::Full => true,
            MethodKind::Linear => head,
            MethodKind::Bitfit => head || params::is_bias(path),
            MethodKind::Adapter | MethodKind::Pfeiffer | MethodKind::Houlsby | MethodKind::Mosa | MethodKind::PrunedAdapter => head || path.contains("adapter"),
            MethodKind::Lora | MethodKind::MosaLora | MethodKind::Sparse => head || path.contains("_branch"),
            MethodKind::VptShallow | MethodKind::VptDeep => head || path.starts_with("prompts"),
        }
    }
}

/// The group a parameter belongs to, for reporting: `head`, `experts` (the split tensors of
/// MoSA / MoSA-LoRA), `adapter` (everything else a method adds) or `backbone`.
pub fn group(cfg: &MethodConfig, path: &str) -> &'static str {
    if path == "head" || path.starts_with("head.") {
        return "head";
    }
    let split = match cfg.method {
        MethodKind::Mosa => match cfg.share {
            Share::Down => path.contains(".Mosa.up."),
            Share::Up => path.contains(".Mosa.down."),
            Share::None => path.contains(".Mosa.up.") || path.contains(".Mosa.down."),
        },
        MethodKind::MosaLora => match cfg.lora_split {
            LoraSplit::A => path.contains(".MosaLora.a."),
            LoraSplit::B => path.contains(".MosaLora.b."),
        },
        _ => false,
    };
    if split {
        "experts"
    } else if path.contains("adapter") || path.contains("_branch") || path.starts_with("prompts") {
        "adapter"
    } else {
        "backbone"
    }
}

/// What a backbone exposes so that any method can be injected into it.
pub trait PeftHost<B: Backend>: Module<B> + Sized {
    fn depth(&self) -> usize;
    fn width(&self) -> usize;
    fn patch_size(&self) -> usize;
    /// `(in, out)` of linear layer `name` in block `block`, if it exists.
    fn linear_dims(&self, block: usize, name: &str) -> Option<(usize, usize)>;
    fn set_adapter(&mut self, block: usize, place: Placement, slot: AdapterSlot<B>);
    fn set_linear_branch(&mut self, block: usize, name: &str, branch: LinearBranch<B>);
    fn set_prompts(&mut self, prompts: crate::prompt::Prompts<B>);
}

/// Injects `cfg`'s method into `host` and freezes everything the method does not train.
/// Masks and initial values come from streams of `cfg.seed` (one per block and slot).
pub fn apply<B: Backend, H: PeftHost<B>>(mut host: H, cfg: &MethodConfig, device: &B::Device) -> Result<H, String> {
    cfg.validate()?;
    let d = host.width();
    for block in 0..host.depth() {
        let mut rng = Rng::derive(cfg.seed, block as u64);
        match cfg.method {
            MethodKind::Adapter => host.set_adapter(block, Placement::Parallel, AdapterSlot::Plain(cfg.adapter(d).init(device))),
            MethodKind::Pfeiffer => host.set_adapter(block, Placement::AfterMlp, AdapterSlot::Plain(cfg.adapter(d).init(device))),
            MethodKind::Houlsby => {
                host.set_adapter(block, Placement::AfterAttention, AdapterSlot::Plain(cfg.adapter(d).init(device)));
                host.set_adapter(block, Placement::AfterMlp, AdapterSlot::Plain(cfg.adapter(d).init(device)));
            }
            MethodKind::Mosa => host.set_adapter(block, Placement::Parallel, AdapterSlot::Mosa(cfg.mosa(d).init(&mut rng, device))),
            MethodKind::PrunedAdapter => host.set_adapter(block, Placement::Parallel, AdapterSlot::Mosa(cfg.mosa(d).init_pruned(&mut rng, device))),
            MethodKind::Lora | MethodKind::MosaLora | MethodKind::Sparse => {
                for t in &cfg.targets {
                    let (i, o) = host.linear_dims(block, t).ok_or_else(|| format!("the backbone has no linear layer `{t}`"))?;
                    let branch = match cfg.method {
                        MethodKind::Lora => LinearBranch::Lora(cfg.lora().init(i, o, device)),
                        MethodKind::MosaLora => LinearBranch::MosaLora(cfg.lora().init_mosa(i, o, cfg.experts, cfg.lora_split, &mut rng, device)),
                        _ => LinearBranch::Sparse(SparseDelta::new(i, o, device)),
                    };
                    host.set_linear_branch(block, t, branch);
                }
            }
            MethodKind::Linear | MethodKind::Full | MethodKind::Bitfit | MethodKind::VptShallow | MethodKind::VptDeep => {}
        }
    }
    if matches!(cfg.method, MethodKind::VptShallow | MethodKind::VptDeep) {
        let pc = PromptConfig::new(d).with_tokens(cfg.prompt_tokens).with_deep(cfg.method == MethodKind::VptDeep).with_dropout(cfg.prompt_dropout).with_patch_size(host.patch_size());
        let depth = host.depth();
        host.set_prompts(pc.init(depth, device));
    }
    Ok(params::set_trainable(host, &|p| cfg.trains(p)))
}
