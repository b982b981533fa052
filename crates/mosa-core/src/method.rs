//! The tuning methods: one tagged enum, [`Method`], whose variants carry each method's own
//! options (the one source of their defaults), and what a method tells the trainer: its step
//! shape ([`Passes`]) and whether it has a post-backward hook. How a method is put into a
//! backbone is [`crate::inject`].

use serde::{Deserialize, Serialize};

use crate::adapter::{Activation, AdapterOptions, SequentialPosition};
use crate::lora::{LoraOptions, MosaLoraOptions};
use crate::mosa::MosaOptions;
use crate::places::Places;
use crate::prompt::PromptOptions;
use crate::pruned::PrunedOptions;
use crate::sparse::SparseConfig;

/// Every method mosa implements, by name (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, strum::EnumIter, strum::IntoStaticStr)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
#[strum(serialize_all = "kebab-case")]
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

impl MethodKind {
    /// Every method, in declaration order.
    pub fn all() -> impl Iterator<Item = MethodKind> {
        <MethodKind as strum::IntoEnumIterator>::iter()
    }

    /// The `--method` name (`vpt-shallow`), the serde name.
    pub fn name(self) -> &'static str {
        self.into()
    }

    /// A training step's model arithmetic per image as a multiple of one forward pass (the count
    /// `mosa bench` and the grids' arithmetic line use): the forward; then ∂x through every block
    /// (as many FLOPs again) unless only the head trains; then ∂W (again as many) where base
    /// weights train — every weight for `full`, the targeted linears for `sparse` (with the
    /// family's default targets every block linear, so counted as all). The forward is the base
    /// model's: the small modules the PEFT methods add are not counted, nor VPT's prompt tokens
    /// (which lengthen every block's sequence). Two stochastic passes ([`Passes::Two`], MoSA's
    /// consistency loss) double it.
    pub fn step_flops_factor(self, passes: Passes) -> f64 {
        let per_pass = match self {
            MethodKind::Linear => 1.0,
            MethodKind::Full | MethodKind::Sparse => 3.0,
            MethodKind::Bitfit
            | MethodKind::Adapter
            | MethodKind::Pfeiffer
            | MethodKind::Houlsby
            | MethodKind::Lora
            | MethodKind::VptShallow
            | MethodKind::VptDeep
            | MethodKind::Mosa
            | MethodKind::PrunedAdapter
            | MethodKind::MosaLora => 2.0,
        };
        match passes {
            Passes::One => per_pass,
            Passes::Two => 2.0 * per_pass,
        }
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MethodKind {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Self::all()
            .find(|k| k.name() == s)
            .ok_or_else(|| crate::Error::UnknownMethod { name: s.to_string(), known: Self::all().map(|k| k.name()).collect::<Vec<_>>().join(", ") })
    }
}

/// A method and its options. Serialised with the method's name under `method` and its options
/// beside it: `{"method": "mosa", "adapter": {"r": 16, …}, "experts": 4, "share": "down"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum Method {
    Linear,
    Full,
    Bitfit,
    Adapter(AdapterOptions),
    Pfeiffer(AdapterOptions),
    Houlsby(AdapterOptions),
    Lora(LoraOptions),
    VptShallow(PromptOptions),
    VptDeep(PromptOptions),
    Mosa(MosaOptions),
    PrunedAdapter(PrunedOptions),
    MosaLora(MosaLoraOptions),
    Sparse(SparseConfig),
}

/// How many stochastic forward passes a training step of the method makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passes {
    /// One pass, cross-entropy.
    One,
    /// Two passes with independent expert draws, CE on the first plus the consistency terms
    /// (symmetric KL, optionally DEEPREG) between them (MoSA, MoSA-LoRA).
    Two,
}

impl Method {
    /// The method with every option at its default.
    pub fn new(kind: MethodKind) -> Self {
        match kind {
            MethodKind::Linear => Method::Linear,
            MethodKind::Full => Method::Full,
            MethodKind::Bitfit => Method::Bitfit,
            // the MoSA code base's baselines (`vit_adapter.py`, which its non-MoSA runs build): the
            // plain adapter (AdaptFormer) with LayerNorm, ReLU, scale 0.1, dropout 0.1; Pfeiffer
            // with its own LayerNorm and ReLU on the MLP output; Houlsby without LayerNorm, SiLU,
            // after each residual; neither of the last two scales its output or uses dropout
            MethodKind::Adapter => Method::Adapter(AdapterOptions::new().with_activation(Activation::Relu)),
            MethodKind::Pfeiffer => Method::Pfeiffer(AdapterOptions::new().with_scale(1.0).with_dropout(0.0).with_activation(Activation::Relu)),
            MethodKind::Houlsby => Method::Houlsby(
                AdapterOptions::new()
                    .with_scale(1.0)
                    .with_dropout(0.0)
                    .with_norm(false)
                    .with_activation(Activation::Silu)
                    .with_position(SequentialPosition::Stream),
            ),
            MethodKind::Lora => Method::Lora(LoraOptions::new()),
            MethodKind::VptShallow => Method::VptShallow(PromptOptions::new()),
            MethodKind::VptDeep => Method::VptDeep(PromptOptions::new()),
            MethodKind::Mosa => Method::Mosa(MosaOptions::new()),
            MethodKind::PrunedAdapter => Method::PrunedAdapter(PrunedOptions::new()),
            MethodKind::MosaLora => Method::MosaLora(MosaLoraOptions::new()),
            MethodKind::Sparse => Method::Sparse(SparseConfig::new()),
        }
    }

    pub fn kind(&self) -> MethodKind {
        match self {
            Method::Linear => MethodKind::Linear,
            Method::Full => MethodKind::Full,
            Method::Bitfit => MethodKind::Bitfit,
            Method::Adapter(_) => MethodKind::Adapter,
            Method::Pfeiffer(_) => MethodKind::Pfeiffer,
            Method::Houlsby(_) => MethodKind::Houlsby,
            Method::Lora(_) => MethodKind::Lora,
            Method::VptShallow(_) => MethodKind::VptShallow,
            Method::VptDeep(_) => MethodKind::VptDeep,
            Method::Mosa(_) => MethodKind::Mosa,
            Method::PrunedAdapter(_) => MethodKind::PrunedAdapter,
            Method::MosaLora(_) => MethodKind::MosaLora,
            Method::Sparse(_) => MethodKind::Sparse,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The adapter options, mutable (the methods [`Places::Adapters`](crate::places::Places)
    /// lists; a test checks the two agree).
    pub fn adapter_options_mut(&mut self) -> Option<&mut AdapterOptions> {
        match self {
            Method::Adapter(o) | Method::Pfeiffer(o) | Method::Houlsby(o) => Some(o),
            Method::Mosa(m) => Some(&mut m.adapter),
            Method::PrunedAdapter(m) => Some(&mut m.adapter),
            Method::Linear
            | Method::Full
            | Method::Bitfit
            | Method::Lora(_)
            | Method::VptShallow(_)
            | Method::VptDeep(_)
            | Method::MosaLora(_)
            | Method::Sparse(_) => None,
        }
    }

    /// The activation adapters of this kind had before it was an option (run formats 1–3):
    /// ReLU for Pfeiffer, SiLU for Houlsby, GELU for the others (today's defaults: [`Method::new`]).
    pub fn legacy_activation(kind: MethodKind) -> Activation {
        match kind {
            MethodKind::Pfeiffer => Activation::Relu,
            MethodKind::Houlsby => Activation::Silu,
            _ => Activation::Gelu,
        }
    }

    /// Checks the options' ranges (targets are checked against a backbone by `inject::apply`).
    pub fn validate(&self) -> crate::Result<()> {
        if let Some(a) = self.adapter_options() {
            if a.r == 0 {
                return Err(crate::Error::Option("the adapter bottleneck r must be positive".into()));
            }
            if !(a.norm_eps.is_finite() && a.norm_eps > 0.0) {
                return Err(crate::Error::Option(format!("the adapter LayerNorm epsilon must be finite and > 0, got {}", a.norm_eps)));
            }
            if !(0.0..1.0).contains(&a.dropout) {
                return Err(crate::Error::Option(format!("the adapter dropout (--adapter-dropout) must be in [0, 1), got {}", a.dropout)));
            }
            if !a.scale.is_finite() {
                return Err(crate::Error::Option(format!("the adapter scale (--scale) must be finite, got {}", a.scale)));
            }
        }
        if let Some(l) = self.lora_options() {
            if !(0.0..1.0).contains(&l.dropout) {
                return Err(crate::Error::Option(format!("the LoRA dropout (--lora-dropout) must be in [0, 1), got {}", l.dropout)));
            }
            if !l.alpha.is_finite() {
                return Err(crate::Error::Option(format!("the LoRA alpha (--lora-alpha) must be finite, got {}", l.alpha)));
            }
        }
        if let Places::Prompts { options: p, .. } = self.places()
            && !(0.0..1.0).contains(&p.dropout)
        {
            return Err(crate::Error::Option(format!("the prompt dropout must be in [0, 1), got {}", p.dropout)));
        }
        if self.experts() == Some(0) {
            return Err(crate::Error::Option("experts must be at least 1".into()));
        }
        if self.lora_options().is_some_and(|l| l.r == 0) {
            return Err(crate::Error::Option("the LoRA rank must be positive".into()));
        }
        if let Some(s) = self.sparse()
            && !(0.0..=1.0).contains(&s.keep_ratio)
        {
            return Err(crate::Error::Option(format!("keep_ratio must be in [0, 1], got {}", s.keep_ratio)));
        }
        Ok(())
    }
}
