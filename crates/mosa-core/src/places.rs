//! Where a method puts what it trains: the one classification of [`Method`]s that the injection
//! (`inject.rs`), the step shape, the option accessors and the expert export read, so that a new
//! method is classified once, in [`Method::places`], instead of in a list per question.

use crate::adapter::AdapterOptions;
use crate::lora::{LoraOptions, MosaLoraOptions};
use crate::method::{Method, Passes};
use crate::mosa::MosaOptions;
use crate::prompt::PromptOptions;
use crate::pruned::PrunedOptions;
use crate::site::Placement;
use crate::sparse::SparseConfig;

/// Where a method puts what it trains (besides the task head, which every method trains).
#[derive(Debug, Clone, Copy)]
pub enum Places<'a> {
    /// Nothing but the head (linear probing).
    Head,
    /// The backbone's own weights: all of them, or only the biases (BitFit).
    Backbone { biases_only: bool },
    /// An adapter at each of these placements of every block.
    Adapters { placements: &'static [Placement], adapter: AdapterKind<'a> },
    /// A branch on every targeted linear layer.
    Branches(BranchKind<'a>),
    /// Prompt tokens before the first block (shallow) or before every block (deep).
    Prompts { options: &'a PromptOptions, deep: bool },
}

/// The adapter a method places, with its options.
#[derive(Debug, Clone, Copy)]
pub enum AdapterKind<'a> {
    /// One bottleneck adapter (AdaptFormer, Pfeiffer, Houlsby).
    Plain(&'a AdapterOptions),
    /// MoSA: N disjoint sparse experts of one adapter.
    Mosa(&'a MosaOptions),
    /// The plain adapter with one fixed random 1/N of every tensor training.
    Pruned(&'a PrunedOptions),
}

/// The branch a method puts on linear layers, with its options.
#[derive(Debug, Clone, Copy)]
pub enum BranchKind<'a> {
    Lora(&'a LoraOptions),
    MosaLora(&'a MosaLoraOptions),
    Sparse(&'a SparseConfig),
}

impl<'a> AdapterKind<'a> {
    /// The bottleneck adapter's options.
    pub fn options(self) -> &'a AdapterOptions {
        match self {
            AdapterKind::Plain(o) => o,
            AdapterKind::Mosa(m) => &m.adapter,
            AdapterKind::Pruned(p) => &p.adapter,
        }
    }

    fn passes(self) -> Passes {
        match self {
            AdapterKind::Mosa(_) => Passes::Two,
            AdapterKind::Plain(_) | AdapterKind::Pruned(_) => Passes::One,
        }
    }
}

impl<'a> BranchKind<'a> {
    /// The linear-site names targeted (empty: the family's default).
    pub fn targets(self) -> &'a Vec<String> {
        match self {
            BranchKind::Lora(l) => &l.targets,
            BranchKind::MosaLora(m) => &m.lora.targets,
            BranchKind::Sparse(s) => &s.targets,
        }
    }

    fn passes(self) -> Passes {
        match self {
            BranchKind::MosaLora(_) => Passes::Two,
            BranchKind::Lora(_) | BranchKind::Sparse(_) => Passes::One,
        }
    }
}

impl Method {
    /// Where this method puts what it trains (module docs): every method's one classification.
    pub fn places(&self) -> Places<'_> {
        use Placement::{AfterAttention, AfterMlp, Parallel};
        match self {
            Method::Linear => Places::Head,
            Method::Full => Places::Backbone { biases_only: false },
            Method::Bitfit => Places::Backbone { biases_only: true },
            Method::Adapter(o) => Places::Adapters { placements: &[Parallel], adapter: AdapterKind::Plain(o) },
            Method::Pfeiffer(o) => Places::Adapters { placements: &[AfterMlp], adapter: AdapterKind::Plain(o) },
            Method::Houlsby(o) => Places::Adapters { placements: &[AfterAttention, AfterMlp], adapter: AdapterKind::Plain(o) },
            Method::Mosa(m) => Places::Adapters { placements: &[Parallel], adapter: AdapterKind::Mosa(m) },
            Method::PrunedAdapter(p) => Places::Adapters { placements: &[Parallel], adapter: AdapterKind::Pruned(p) },
            Method::Lora(l) => Places::Branches(BranchKind::Lora(l)),
            Method::MosaLora(m) => Places::Branches(BranchKind::MosaLora(m)),
            Method::Sparse(s) => Places::Branches(BranchKind::Sparse(s)),
            Method::VptShallow(p) => Places::Prompts { options: p, deep: false },
            Method::VptDeep(p) => Places::Prompts { options: p, deep: true },
        }
    }

    /// The step shape: two passes for the methods with random experts (MoSA, MoSA-LoRA).
    pub fn passes(&self) -> Passes {
        match self.places() {
            Places::Adapters { adapter, .. } => adapter.passes(),
            Places::Branches(b) => b.passes(),
            Places::Head | Places::Backbone { .. } | Places::Prompts { .. } => Passes::One,
        }
    }

    /// The adapter options, for the methods that place adapters.
    pub fn adapter_options(&self) -> Option<&AdapterOptions> {
        match self.places() {
            Places::Adapters { adapter, .. } => Some(adapter.options()),
            Places::Head | Places::Backbone { .. } | Places::Branches(_) | Places::Prompts { .. } => None,
        }
    }

    /// The linear-site names the method targets (empty: the family's default), for the
    /// methods that place branches.
    pub fn targets(&self) -> Option<&Vec<String>> {
        match self.places() {
            Places::Branches(b) => Some(b.targets()),
            Places::Head | Places::Backbone { .. } | Places::Adapters { .. } | Places::Prompts { .. } => None,
        }
    }

    /// The LoRA options, for the methods with a LoRA branch (LoRA, MoSA-LoRA).
    pub fn lora_options(&self) -> Option<&LoraOptions> {
        match self.places() {
            Places::Branches(BranchKind::Lora(l)) => Some(l),
            Places::Branches(BranchKind::MosaLora(m)) => Some(&m.lora),
            Places::Branches(BranchKind::Sparse(_)) | Places::Head | Places::Backbone { .. } | Places::Adapters { .. } | Places::Prompts { .. } => None,
        }
    }

    /// The sparse method's options.
    pub fn sparse(&self) -> Option<&SparseConfig> {
        match self.places() {
            Places::Branches(BranchKind::Sparse(s)) => Some(s),
            Places::Branches(BranchKind::Lora(_) | BranchKind::MosaLora(_))
            | Places::Head
            | Places::Backbone { .. }
            | Places::Adapters { .. }
            | Places::Prompts { .. } => None,
        }
    }

    /// The number of experts N, for the methods split into experts (MoSA, pruned adapter,
    /// MoSA-LoRA).
    pub fn experts(&self) -> Option<usize> {
        match self.places() {
            Places::Adapters { adapter: AdapterKind::Mosa(m), .. } => Some(m.experts),
            Places::Adapters { adapter: AdapterKind::Pruned(p), .. } => Some(p.experts),
            Places::Branches(BranchKind::MosaLora(m)) => Some(m.experts),
            Places::Adapters { adapter: AdapterKind::Plain(_), .. }
            | Places::Branches(BranchKind::Lora(_) | BranchKind::Sparse(_))
            | Places::Head
            | Places::Backbone { .. }
            | Places::Prompts { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::method::{Method, MethodKind, Passes};

    /// The accessors read from the classification agree with the methods' documented roles, and
    /// the one mutable accessor lists the same methods as `places`.
    #[test]
    fn every_method_is_classified_and_its_accessors_agree() {
        use MethodKind as K;
        for kind in MethodKind::all() {
            let mut m = Method::new(kind);
            let shared = m.adapter_options().map(|o| format!("{o:?}"));
            assert_eq!(shared, m.adapter_options_mut().map(|o| format!("{o:?}")), "{kind}");
            assert_eq!(shared.is_some(), matches!(kind, K::Adapter | K::Pfeiffer | K::Houlsby | K::Mosa | K::PrunedAdapter), "{kind}");
            assert_eq!(m.targets().is_some(), matches!(kind, K::Lora | K::MosaLora | K::Sparse), "{kind}");
            assert_eq!(m.passes() == Passes::Two, matches!(kind, K::Mosa | K::MosaLora), "{kind}");
        }
    }
}
