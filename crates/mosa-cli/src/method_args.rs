//! Method options as command-line flags, shared by the commands that take a method. Every flag
//! is optional: an absent flag leaves the option at its default, which lives only in the
//! method's options type (`mosa_core::method`; the help text reads it from there); a flag the chosen method does not have is
//! ignored with a note on stderr (so that one recipe can be passed to every method of a grid).

use mosa_core::adapter::{Activation, AdapterOptions, SequentialPosition};
use mosa_core::lora::{LoraOptions, LoraSplit, MosaLoraOptions};
use mosa_core::mosa::{MosaOptions, Share};
use mosa_core::prompt::PromptOptions;
use mosa_core::sparse::{Criterion, OnDrop, Scope, SelectionLr, SparseConfig};
use mosa_core::{Method, MethodKind};

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct MethodArgs {
    /// The method (default: mosa).
    #[arg(long, value_enum)]
    pub method: Option<MethodKind>,
    #[arg(long, help = format!("Adapter bottleneck r [default {}]", AdapterOptions::new().r))]
    pub r: Option<usize>,
    #[arg(long, help = format!("Adapter output scale s [default {}; pfeiffer, houlsby: 1]", AdapterOptions::new().scale))]
    pub scale: Option<f64>,
    #[arg(long, help = format!("Dropout inside adapters [default {}; pfeiffer, houlsby: 0]", AdapterOptions::new().dropout))]
    pub adapter_dropout: Option<f64>,
    /// Adapter non-linearity [default: adapter, pruned-adapter, pfeiffer relu; houlsby silu; mosa
    /// gelu — the MoSA code base's].
    #[arg(long, value_enum)]
    pub activation: Option<Activation>,
    /// Pfeiffer / Houlsby: `branch` = on the sublayer's output before the residual, `stream` =
    /// after the residual [default: pfeiffer branch, houlsby stream — the MoSA code base's].
    #[arg(long, value_enum)]
    pub adapter_position: Option<SequentialPosition>,
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

impl MethodArgs {
    /// The ids of the method flags (clap's, = the field names).
    pub fn ids() -> Vec<String> {
        <MethodArgs as clap::Args>::augment_args(clap::Command::new("method")).get_arguments().map(|a| a.get_id().to_string()).collect()
    }

    /// The method with its defaults, and every given flag applied. A given flag the method has
    /// no option for is ignored with a note.
    pub fn method(&self) -> anyhow::Result<Method> {
        let a = self;
        let mut m = Method::new(a.method.unwrap_or(MethodKind::Mosa));
        let mut has: Vec<&str> = Vec::new();
        // the method has this option: set it from its flag, if the flag was given
        macro_rules! put {
            ($flag:ident, $field:expr) => {{
                if let Some(v) = &a.$flag {
                    $field = v.clone();
                }
                has.push(stringify!($flag));
            }};
        }
        if let Some(o) = m.adapter_options_mut() {
            put!(r, o.r);
            put!(scale, o.scale);
            put!(adapter_dropout, o.dropout);
            put!(activation, o.activation);
        }
        if let Method::Pfeiffer(o) | Method::Houlsby(o) = &mut m {
            put!(adapter_position, o.position);
        }
        let lora = match &mut m {
            Method::Mosa(o) => {
                put!(experts, o.experts);
                put!(share, o.share);
                None
            }
            Method::PrunedAdapter(o) => {
                put!(experts, o.experts);
                None
            }
            Method::MosaLora(o) => {
                put!(experts, o.experts);
                put!(lora_split, o.split);
                Some(&mut o.lora)
            }
            Method::Lora(o) => Some(o),
            Method::VptShallow(o) | Method::VptDeep(o) => {
                put!(prompt_tokens, o.tokens);
                None
            }
            Method::Sparse(o) => {
                put!(targets, o.targets);
                put!(keep_ratio, o.keep_ratio);
                put!(criterion, o.criterion);
                put!(scope, o.scope);
                put!(reselect_every, o.reselect_every);
                put!(on_drop, o.on_drop);
                put!(sparse_warmup_steps, o.warmup_steps);
                put!(selection_lr, o.selection_lr);
                None
            }
            Method::Linear | Method::Full | Method::Bitfit | Method::Adapter(_) | Method::Pfeiffer(_) | Method::Houlsby(_) => None,
        };
        if let Some(l) = lora {
            put!(lora_r, l.r);
            put!(lora_alpha, l.alpha);
            put!(lora_dropout, l.dropout);
            put!(targets, l.targets);
        }
        // the given flags: the non-null fields (`method` is not an option)
        let given: Vec<String> = match serde_json::to_value(a) {
            Ok(serde_json::Value::Object(fields)) => fields.into_iter().filter(|(k, v)| k != "method" && !v.is_null()).map(|(k, _)| k).collect(),
            _ => Vec::new(),
        };
        for flag in given.iter().filter(|f| !has.contains(&f.as_str())) {
            eprintln!("note: --{} does not apply to method {}; ignored", flag.replace('_', "-"), m.name());
        }
        m.validate().map_err(anyhow::Error::msg)?;
        Ok(m)
    }
}
