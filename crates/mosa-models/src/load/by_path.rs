//! The one loader and writer between a backbone and timm's layout. A model's parameters are
//! walked by their module paths ([`mosa_core::params`]), the modules a method created left out,
//! and named as timm names them:
//!
//! - a family's [`Renames`] turn module segments into timm's (ConvNeXt's `stem.conv` is timm's
//!   `stem.0`); every other segment is already timm's, the field names having been chosen so;
//! - a LayerNorm's `gamma` / `beta` are timm's `weight` / `bias`;
//! - a linear layer's weight is stored `[in, out]` here and `[out, in]` by PyTorch: transposed.
//!
//! What is particular to a family happens to the state dict before it is loaded (a position grid
//! or a relative-position table of another size resampled, a stage count checked).

use burn::module::{Module, Param};
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_core::params::{MapParam, VisitParam};

use super::{HeadPolicy, HostTensor, StateDict};
use crate::error::{Error, Result};

/// A family's renames of module-path segments, ours → timm's; each applies to whole segments,
/// wherever they occur in a path (the first that matches wins).
pub type Renames = &'static [(&'static str, &'static str)];

/// The timm name of the parameter at module path `path` (`container`, `field`: its module's
/// type and its field, as [`mosa_core::params`] reports them).
pub fn timm_name(path: &str, (container, field): (&str, &str), renames: Renames) -> String {
    let module = path.strip_suffix(field).map(|m| m.trim_end_matches('.')).unwrap_or(path);
    let field = match (container, field) {
        ("Struct:LayerNorm", "gamma") => "weight",
        ("Struct:LayerNorm", "beta") => "bias",
        (_, f) => f,
    };
    let module = rename(module, renames);
    if module.is_empty() { field.to_string() } else { format!("{module}.{field}") }
}

fn rename(module: &str, renames: Renames) -> String {
    let padded = format!(".{module}.");
    for (ours, timm) in renames {
        if let Some(at) = padded.find(&format!(".{ours}.")) {
            let out = format!("{}.{timm}.{}", &padded[..at], &padded[at + ours.len() + 2..]);
            return out.trim_matches('.').to_string();
        }
    }
    module.to_string()
}

/// Whether the parameter is stored transposed by PyTorch (a linear layer's weight).
fn transposed((container, field): (&str, &str)) -> bool {
    matches!(container, "Struct:Linear" | "Struct:TunableLinear") && field == "weight"
}

/// The model's backbone tensors (and head) in timm's names and layout; method modules excluded.
pub fn state_dict<B: Backend, M: Module<B>>(model: &M, renames: Renames) -> StateDict {
    struct Writer {
        sd: StateDict,
        renames: Renames,
    }
    impl<B: Backend> VisitParam<B> for Writer {
        fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), p: &Param<Tensor<B, D>>) {
            let t = HostTensor::from_tensor(p.val());
            self.sd.insert(timm_name(path, field, self.renames), if transposed(field) { t.t() } else { t });
        }
        fn backbone_only(&self) -> bool {
            true
        }
    }
    mosa_core::params::visit(model, Writer { sd: StateDict::new("model"), renames }).sd
}

/// Loads a timm-layout state dict into `model`, checking every tensor: every missing,
/// mis-shaped or unexpected one is reported in one [`Error::Mismatch`]. The head (`head`: its
/// timm name, e.g. `head.fc`) is loaded under [`HeadPolicy::Load`] where the model has one;
/// otherwise a stored head is not used. Parameters not loaded keep their (lazy) initialisation.
pub fn load<B: Backend, M: Module<B>>(model: M, mut sd: StateDict, renames: Renames, head: &str, policy: HeadPolicy, device: &B::Device) -> Result<M> {
    struct Loader<'a, B: Backend> {
        sd: &'a mut StateDict,
        renames: Renames,
        head: String,
        policy: HeadPolicy,
        problems: Vec<String>,
        device: &'a B::Device,
    }
    impl<B: Backend> MapParam<B> for Loader<'_, B> {
        fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let name = timm_name(path, field, self.renames);
            if self.policy == HeadPolicy::Skip && name.starts_with(&self.head) {
                return p;
            }
            let mut shape = p.lazy_shape().to_vec();
            if transposed(field) {
                shape.reverse();
            }
            let Some(t) = self.sd.tensors.remove(&name) else {
                self.problems.push(format!("missing tensor `{name}` {shape:?}"));
                return p;
            };
            if t.shape != shape {
                self.problems.push(format!("tensor `{name}` has shape {:?}, the model needs {shape:?}", t.shape));
                return p;
            }
            let t = if transposed(field) { t.t() } else { t };
            Param::from_tensor(Tensor::from_data(TensorData::new(t.data, t.shape), self.device))
        }
        fn backbone_only(&self) -> bool {
            true
        }
    }
    let source = sd.source.clone();
    let head_prefix = format!("{head}.");
    let (model, l) = mosa_core::params::map(model, Loader { sd: &mut sd, renames, head: head_prefix.clone(), policy, problems: Vec::new(), device });
    let mut problems = l.problems;
    // a stored head the model does not load (no head, or a fresh one for a new task) is not used
    sd.tensors.retain(|k, _| !k.starts_with(&head_prefix));
    problems.extend(sd.tensors.keys().map(|k| format!("unexpected tensor `{k}`")));
    if problems.is_empty() { Ok(model) } else { Err(Error::Mismatch { path: source, problems }) }
}

/// One backbone parameter as timm names it: its shape in the model and whether that is timm's
/// shape transposed (a linear layer's weight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamLayout {
    /// The shape in the model (a linear weight: `[in, out]`).
    pub shape: Vec<usize>,
    pub transposed: bool,
}

impl ParamLayout {
    /// The shape in timm's layout (a linear weight: `[out, in]`).
    pub fn timm_shape(&self) -> Vec<usize> {
        let mut s = self.shape.clone();
        if self.transposed {
            s.reverse();
        }
        s
    }
}

/// Every backbone parameter (method modules excluded) by timm name, with its layout here.
pub fn layout<B: Backend, M: Module<B>>(model: &M, renames: Renames) -> std::collections::BTreeMap<String, ParamLayout> {
    struct Layouts(std::collections::BTreeMap<String, ParamLayout>, Renames);
    impl<B: Backend> VisitParam<B> for Layouts {
        fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), p: &Param<Tensor<B, D>>) {
            self.0.insert(timm_name(path, field, self.1), ParamLayout { shape: p.lazy_shape().to_vec(), transposed: transposed(field) });
        }
        fn backbone_only(&self) -> bool {
            true
        }
    }
    mosa_core::params::visit(model, Layouts(Default::default(), renames)).0
}

/// Maps the named backbone parameters (timm names): `f` gets each one's tensor by value,
/// flattened in the model's layout (see [`layout`]; the model keeps no other handle on it, so a
/// kernel may change it in place), and returns the tensor to put there, of the same size.
pub fn map_named<B: Backend, M: Module<B>>(
    model: M,
    renames: Renames,
    names: &std::collections::HashSet<String>,
    f: &mut dyn FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>,
) -> M {
    struct Named<'a, B: Backend> {
        names: &'a std::collections::HashSet<String>,
        renames: Renames,
        f: &'a mut dyn FnMut(&str, Tensor<B, 1>) -> Tensor<B, 1>,
    }
    impl<B: Backend> MapParam<B> for Named<'_, B> {
        fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let name = timm_name(path, field, self.renames);
            if !self.names.contains(&name) {
                return p;
            }
            let (id, t, _) = p.consume();
            let shape: [usize; D] = t.dims();
            let n: usize = shape.iter().product();
            let out = (self.f)(&name, t.reshape([n]));
            assert_eq!(out.dims()[0], n, "`{name}`: a mapped parameter keeps its size");
            Param::initialized(id, out.reshape(shape))
        }
        fn backbone_only(&self) -> bool {
            true
        }
    }
    mosa_core::params::map(model, Named { names, renames, f }).0
}

/// The named backbone parameters' tensors (timm names), flattened, in the model's layout; shared
/// with the model, not copied.
pub fn flat<B: Backend, M: Module<B>>(
    model: &M,
    renames: Renames,
    names: &std::collections::HashSet<String>,
) -> std::collections::HashMap<String, Tensor<B, 1>> {
    struct Flat<'a, B: Backend>(std::collections::HashMap<String, Tensor<B, 1>>, Renames, &'a std::collections::HashSet<String>);
    impl<B: Backend> VisitParam<B> for Flat<'_, B> {
        fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), p: &Param<Tensor<B, D>>) {
            let name = timm_name(path, field, self.1);
            if self.2.contains(&name) {
                let t = p.val();
                let n = t.shape().num_elements();
                self.0.insert(name, t.reshape([n]));
            }
        }
        fn backbone_only(&self) -> bool {
            true
        }
    }
    mosa_core::params::visit(model, Flat(Default::default(), renames, names)).0
}
