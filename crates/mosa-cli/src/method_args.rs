//! Method options as command-line flags, shared by the commands that take a method. Every flag
//! is optional: an absent flag leaves the option at its default, which lives only in the
//! method's options type (`mosa_core::method`); a flag the chosen method does not have is
//! ignored with a note on stderr (so that one recipe can be passed to every method of a grid).

use mosa_core::lora::LoraSplit;
use mosa_core::mosa::Share;
use mosa_core::sparse::{Criterion, OnDrop, Scope, SelectionLr};
use mosa_core::{Method, MethodKind};

#[derive(clap::Args, Debug, Clone)]
pub struct MethodArgs {
    /// The method (default: mosa).
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    /// Adapter bottleneck r [default 16].
    #[arg(long)]
    pub r: Option<usize>,
    /// Adapter output scale s [default 0.1].
    #[arg(long)]
    pub scale: Option<f64>,
    /// Dropout inside adapters [default 0.1].
    #[arg(long)]
    pub adapter_dropout: Option<f64>,
    /// MoSA / pruned-adapter / MoSA-LoRA experts N [default 4].
    #[arg(long)]
    pub experts: Option<usize>,
    /// MoSA: the dense shared projection [default down].
    #[arg(long, value_enum)]
    pub share: Option<Share>,
    /// LoRA rank [default 8].
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha [default 8].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// LoRA dropout [default 0].
    #[arg(long)]
    pub lora_dropout: Option<f64>,
    /// MoSA-LoRA: the factor split into experts [default b].
    #[arg(long, value_enum)]
    pub lora_split: Option<LoraSplit>,
    /// Linear sites for lora / mosa-lora / sparse, comma-separated, by the backbone family's
    /// names (ViT: qkv, proj, fc1, fc2) [default: the family's, qkv on a ViT].
    #[arg(long, value_delimiter = ',')]
    pub targets: Option<Vec<String>>,
    /// VPT prompt tokens [default 10].
    #[arg(long)]
    pub prompt_tokens: Option<usize>,
    /// Sparse: fraction of each targeted matrix kept [default 0.05].
    #[arg(long)]
    pub keep_ratio: Option<f64>,
    /// Sparse: how entries are scored [default sensitivity-signed, as the reference].
    #[arg(long, value_enum)]
    pub criterion: Option<Criterion>,
    /// Sparse: per-layer, global, or block:<tile> [default per-layer].
    #[arg(long, value_parser = parse_scope)]
    pub scope: Option<Scope>,
    /// Sparse: re-select the mask every K steps of the first epoch [default 5].
    #[arg(long)]
    pub reselect_every: Option<usize>,
    /// Sparse: what happens to entries that leave the mask [default zero].
    #[arg(long, value_enum)]
    pub on_drop: Option<OnDrop>,
    /// Sparse: dense steps before the first mask selection [default 5].
    #[arg(long)]
    pub sparse_warmup_steps: Option<usize>,
    /// Sparse: learning rate while masks are selected: base (the recipe's lr) or schedule [default base].
    #[arg(long, value_enum)]
    pub selection_lr: Option<SelectionLr>,
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
