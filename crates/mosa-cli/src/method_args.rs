//! Method options as command-line flags, shared by the commands that take a method. Every flag
//! is optional: an absent flag leaves the option at its default, which lives only in the
//! method's options type (`mosa_core::method`; the help text reads it from there); a flag the chosen method does not have is
//! ignored with a note on stderr (so that one recipe can be passed to every method of a grid).

use mosa_core::adapter::AdapterOptions;
use mosa_core::lora::{LoraOptions, LoraSplit, MosaLoraOptions};
use mosa_core::mosa::{MosaOptions, Share};
use mosa_core::prompt::PromptOptions;
use mosa_core::sparse::{Criterion, OnDrop, Scope, SelectionLr, SparseConfig};
use mosa_core::{Method, MethodKind};

#[derive(clap::Args, Debug, Clone)]
pub struct MethodArgs {
    /// The method (default: mosa).
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    #[arg(long, help = format!("Adapter bottleneck r [default {}]", AdapterOptions::new().r))]
    pub r: Option<usize>,
    #[arg(long, help = format!("Adapter output scale s [default {}]", AdapterOptions::new().scale))]
    pub scale: Option<f64>,
    #[arg(long, help = format!("Dropout inside adapters [default {}]", AdapterOptions::new().dropout))]
    pub adapter_dropout: Option<f64>,
    #[arg(long, help = format!("MoSA / pruned-adapter / MoSA-LoRA experts N [default {}]", MosaOptions::new().experts))]
    pub experts: Option<usize>,
    #[arg(long, value_enum, help = format!("MoSA: the dense shared projection [default {}]", name(MosaOptions::new().share)))]
    pub share: Option<Share>,
    #[arg(long, help = format!("LoRA rank [default {}]", LoraOptions::new().r))]
    pub lora_r: Option<usize>,
    #[arg(long, help = format!("LoRA alpha [default {}]", LoraOptions::new().alpha))]
    pub lora_alpha: Option<f64>,
    #[arg(long, help = format!("LoRA dropout [default {}]", LoraOptions::new().dropout))]
    pub lora_dropout: Option<f64>,
    #[arg(long, value_enum, help = format!("MoSA-LoRA: the factor split into experts [default {}]", name(MosaLoraOptions::new().split)))]
    pub lora_split: Option<LoraSplit>,
    /// Linear sites for lora / mosa-lora / sparse, comma-separated, by the backbone family's
    /// names (ViT: qkv, proj, fc1, fc2) [default: the family's, qkv on a ViT].
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    #[arg(long, help = format!("VPT prompt tokens [default {}]", PromptOptions::new().tokens))]
    pub prompt_tokens: Option<usize>,
    #[arg(long, help = format!("Sparse: fraction of each targeted matrix kept [default {}]", SparseConfig::new().keep_ratio))]
    pub keep_ratio: Option<f64>,
    #[arg(long, value_enum, help = format!("Sparse: how entries are scored [default {}]", name(SparseConfig::new().criterion)))]
    pub criterion: Option<Criterion>,
    /// Sparse: per-layer, global, or block:<tile> [default per-layer].
    #[arg(long, value_parser = parse_scope)]
    pub scope: Option<Scope>,
    #[arg(long, help = format!("Sparse: re-select the mask every K steps of the first epoch [default {}]", SparseConfig::new().reselect_every))]
    pub reselect_every: Option<usize>,
    #[arg(long, value_enum, help = format!("Sparse: what happens to entries that leave the mask [default {}]", name(SparseConfig::new().on_drop)))]
    pub on_drop: Option<OnDrop>,
    #[arg(long, help = format!("Sparse: dense steps before the first mask selection [default {}]", SparseConfig::new().warmup_steps))]
    pub sparse_warmup_steps: Option<usize>,
    #[arg(long, value_enum, help = format!("Sparse: learning rate while masks are selected [default {}]", name(SparseConfig::new().selection_lr)))]
    pub selection_lr: Option<SelectionLr>,
}

/// An option's name as flags spell it (its serde name: `down`, `sensitivity-signed`).
fn name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
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

/// Sets `field` from `flag` if the flag was given; `None` for `field` means the method has no
/// such option, and a given flag is then ignored with a note.
fn set<T: Clone>(flag: &Option<T>, name: &str, method: &str, field: Option<&mut T>) -> anyhow::Result<()> {
    match (flag, field) {
        (Some(v), Some(f)) => *f = v.clone(),
        (Some(_), None) => eprintln!("note: --{name} does not apply to method {method}; ignored"),
        (None, _) => {}
    }
    Ok(())
}

impl MethodArgs {
    /// The method with its defaults, and every given flag applied.
    pub fn method(&self) -> anyhow::Result<Method> {
        let mut m = Method::new(self.method.unwrap_or(MethodKind::Mosa));
        let name = m.name();
        let a = self;
        if let Some(o) = m.adapter_options_mut() {
            set(&a.r, "r", name, Some(&mut o.r))?;
            set(&a.scale, "scale", name, Some(&mut o.scale))?;
            set(&a.adapter_dropout, "adapter-dropout", name, Some(&mut o.dropout))?;
        } else {
            set(&a.r, "r", name, None)?;
            set(&a.scale, "scale", name, None)?;
            set(&a.adapter_dropout, "adapter-dropout", name, None)?;
        }
        let (experts, share, lora, split, prompt, sparse) = match &mut m {
            Method::Mosa(o) | Method::PrunedAdapter(o) => (Some(&mut o.experts), Some(&mut o.share), None, None, None, None),
            Method::MosaLora(o) => (Some(&mut o.experts), None, Some(&mut o.lora), Some(&mut o.split), None, None),
            Method::Lora(o) => (None, None, Some(o), None, None, None),
            Method::VptShallow(o) | Method::VptDeep(o) => (None, None, None, None, Some(o), None),
            Method::Sparse(o) => (None, None, None, None, None, Some(o)),
            _ => (None, None, None, None, None, None),
        };
        set(&a.experts, "experts", name, experts)?;
        set(&a.share, "share", name, share)?;
        set(&a.lora_split, "lora-split", name, split)?;
        set(&a.prompt_tokens, "prompt-tokens", name, prompt.map(|p| &mut p.tokens))?;
        let (mut lr, mut la, mut ld) = (None, None, None);
        let mut targets = None;
        if let Some(l) = lora {
            lr = Some(&mut l.r);
            la = Some(&mut l.alpha);
            ld = Some(&mut l.dropout);
            targets = Some(&mut l.targets);
        }
        set(&a.lora_r, "lora-r", name, lr)?;
        set(&a.lora_alpha, "lora-alpha", name, la)?;
        set(&a.lora_dropout, "lora-dropout", name, ld)?;
        let (mut kr, mut cr, mut sc, mut re, mut od, mut ws, mut sl) = (None, None, None, None, None, None, None);
        if let Some(s) = sparse {
            kr = Some(&mut s.keep_ratio);
            cr = Some(&mut s.criterion);
            sc = Some(&mut s.scope);
            re = Some(&mut s.reselect_every);
            od = Some(&mut s.on_drop);
            ws = Some(&mut s.warmup_steps);
            sl = Some(&mut s.selection_lr);
            targets = Some(&mut s.targets);
        }
        set(&a.targets, "targets", name, targets)?;
        set(&a.keep_ratio, "keep-ratio", name, kr)?;
        set(&a.criterion, "criterion", name, cr)?;
        set(&a.scope, "scope", name, sc)?;
        set(&a.reselect_every, "reselect-every", name, re)?;
        set(&a.on_drop, "on-drop", name, od)?;
        set(&a.sparse_warmup_steps, "sparse-warmup-steps", name, ws)?;
        set(&a.selection_lr, "selection-lr", name, sl)?;
        m.validate().map_err(anyhow::Error::msg)?;
        Ok(m)
    }
}
