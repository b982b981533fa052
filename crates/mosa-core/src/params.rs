//! Parameters by path. One path stack ([`Paths`]) gives every parameter its dotted, timm-style
//! path (`blocks.3.adapter.Mosa.up.weight`, `blocks.0.attn.qkv.branch.Lora.a`); every visitor and
//! mapper of this crate is built on it. A backbone-family enum is transparent in paths, so the
//! ViT's parameters have the same paths whether or not they sit inside `Backbone::Vit`.
//!
//! Which parameters train is decided structurally by [`crate::inject`] (the modules a method
//! created, the head), never here by matching names; this file only reads and writes values.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

use crate::host::{HostTensor, NamedTensors};

/// Container type of a backbone-family enum (`mosa_models::Backbone`): left out of paths.
const TRANSPARENT: &str = "Enum:Backbone";

/// The dotted path of the module being visited, and the type of its container.
#[derive(Default)]
struct Stack {
    names: Vec<String>,
    containers: Vec<String>,
}

impl Stack {
    fn enter(&mut self, name: &str, container: &str) {
        self.containers.push(container.to_string());
        self.names.push(if container == TRANSPARENT { String::new() } else { name.to_string() });
    }
    fn exit(&mut self) {
        self.names.pop();
        self.containers.pop();
    }
    fn path(&self) -> String {
        self.names.iter().filter(|n| !n.is_empty()).cloned().collect::<Vec<_>>().join(".")
    }
    /// Whether the walk is inside a module a method created.
    fn in_method(&self) -> bool {
        self.containers.iter().any(|c| METHOD_MODULES.contains(&c.as_str()))
    }
    /// `(container type, field name)` of the parameter being visited.
    fn field(&self) -> (&str, &str) {
        (self.containers.last().map(String::as_str).unwrap_or(""), self.names.last().map(String::as_str).unwrap_or(""))
    }
}

/// Container types of the modules a method creates ([`crate::slot`], [`crate::prompt`]): what is
/// inside them is not the backbone's.
pub const METHOD_MODULES: [&str; 3] = ["Enum:AdapterSlot", "Enum:LinearBranch", "Struct:Prompts"];

/// What a read-only walk does with each float parameter.
pub trait VisitParam<B: Backend> {
    fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), param: &Param<Tensor<B, D>>);
    /// Whether the walk leaves out the parameters of method modules ([`METHOD_MODULES`]).
    fn backbone_only(&self) -> bool {
        false
    }
}

/// What a mapping walk does with each float parameter.
pub trait MapParam<B: Backend> {
    fn param<const D: usize>(&mut self, path: &str, field: (&str, &str), param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>>;
    /// Whether the walk leaves the parameters of method modules ([`METHOD_MODULES`]) as they are.
    fn backbone_only(&self) -> bool {
        false
    }
}

/// A [`VisitParam`] or [`MapParam`] with the path stack around it.
pub struct Paths<V> {
    stack: Stack,
    pub inner: V,
}

impl<V> Paths<V> {
    pub fn new(inner: V) -> Self {
        Self { stack: Stack::default(), inner }
    }
}

impl<B: Backend, V: VisitParam<B>> ModuleVisitor<B> for Paths<V> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if self.inner.backbone_only() && self.stack.in_method() {
            return;
        }
        self.inner.param(&self.stack.path(), self.stack.field(), param);
    }
}

impl<B: Backend, V: MapParam<B>> ModuleMapper<B> for Paths<V> {
    fn enter_module(&mut self, name: &str, container: &str) {
        self.stack.enter(name, container);
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.exit();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.inner.backbone_only() && self.stack.in_method() {
            return param;
        }
        let path = self.stack.path();
        self.inner.param(&path, self.stack.field(), param)
    }
}

/// Walks `module`'s float parameters with their paths.
pub fn visit<B: Backend, M: Module<B>, V: VisitParam<B>>(module: &M, v: V) -> V {
    let mut p = Paths::new(v);
    module.visit(&mut p);
    p.inner
}

/// Maps `module`'s float parameters with their paths.
pub fn map<B: Backend, M: Module<B>, V: MapParam<B>>(module: M, v: V) -> (M, V) {
    let mut p = Paths::new(v);
    let module = module.map(&mut p);
    (module, p.inner)
}

/// One parameter: its path, element count and whether it trains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub path: String,
    pub id: ParamId,
    pub numel: usize,
    pub trainable: bool,
}

/// Every float parameter of `module` with its path. (Reading a shape initialises a lazily
/// initialised parameter, in module order: runs depend on that order, so it is kept.)
pub fn list<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    struct Lister(Vec<ParamInfo>);
    impl<B: Backend> VisitParam<B> for Lister {
        fn param<const D: usize>(&mut self, path: &str, _: (&str, &str), p: &Param<Tensor<B, D>>) {
            self.0.push(ParamInfo { path: path.to_string(), id: p.id, numel: p.shape().num_elements(), trainable: p.is_require_grad() });
        }
    }
    visit(module, Lister(Vec::new())).0
}

/// Number of trainable elements.
pub fn count_trainable(params: &[ParamInfo]) -> usize {
    params.iter().filter(|p| p.trainable).map(|p| p.numel).sum()
}

/// Number of elements.
pub fn count<B: Backend, M: Module<B>>(module: &M) -> usize {
    list(module).iter().map(|p| p.numel).sum()
}

/// Trainable and total elements of a module (or of a group of modules, added up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub trainable: usize,
    pub total: usize,
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally { trainable: self.trainable + o.trainable, total: self.total + o.total }
    }
}

impl std::ops::Sub for Tally {
    type Output = Tally;
    fn sub(self, o: Tally) -> Tally {
        Tally { trainable: self.trainable - o.trainable, total: self.total - o.total }
    }
}

pub fn tally<B: Backend, M: Module<B>>(module: &M) -> Tally {
    let l = list(module);
    Tally { trainable: count_trainable(&l), total: l.iter().map(|p| p.numel).sum() }
}

/// Picks parameters by `(container type, field)`.
pub type FieldFilter = dyn Fn(&str, &str) -> bool;

/// Sets whether every parameter of `module` trains, or only those `select` picks by their
/// `(container type, field)` (e.g. BitFit's biases); the others keep their state.
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, train: bool, select: Option<&FieldFilter>) -> M {
    struct Set<'a>(bool, Option<&'a FieldFilter>);
    impl<B: Backend> MapParam<B> for Set<'_> {
        fn param<const D: usize>(&mut self, _: &str, (c, f): (&str, &str), p: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.1.is_none_or(|s| s(c, f)) { p.set_require_grad(self.0) } else { p }
        }
    }
    map(module, Set(train, select)).0
}

/// Whether a parameter path names a bias (the reference decays every parameter whose name does
/// not contain "bias"; burn names a LayerNorm shift `beta`). Used by the optimiser only.
pub fn is_bias(path: &str) -> bool {
    path.contains("bias") || path.ends_with(".beta")
}

/// Whether `(container type, field)` is a bias term of one of burn's or our layers: the `bias`
/// of a linear or convolution, the shift `beta` of a LayerNorm (BitFit's selection).
pub fn is_bias_field(container: &str, field: &str) -> bool {
    matches!((container, field), ("Struct:Linear" | "Struct:TunableLinear" | "Struct:Conv2d" | "Struct:PatchEmbed", "bias") | ("Struct:LayerNorm", "beta"))
}

/// The trainable parameters on the host, in module order.
pub fn export_trainable<B: Backend, M: Module<B>>(module: &M) -> NamedTensors {
    struct Ex(NamedTensors);
    impl<B: Backend> VisitParam<B> for Ex {
        fn param<const D: usize>(&mut self, path: &str, _: (&str, &str), p: &Param<Tensor<B, D>>) {
            if p.is_require_grad() {
                self.0.push((path.to_string(), HostTensor::from_tensor(p.val())));
            }
        }
    }
    visit(module, Ex(Vec::new())).0
}

/// Replaces parameter values by path (trainability is kept). Every entry of `values` must name
/// a parameter of the same shape; returns the module or a message listing what did not fit.
pub fn load_by_path<B: Backend, M: Module<B>>(module: M, values: &HashMap<String, HostTensor>) -> crate::Result<M> {
    struct Ld<'a> {
        values: &'a HashMap<String, HostTensor>,
        used: Vec<String>,
        errors: Vec<String>,
    }
    impl<B: Backend> MapParam<B> for Ld<'_> {
        fn param<const D: usize>(&mut self, path: &str, _: (&str, &str), param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let Some(t) = self.values.get(path) else { return param };
            self.used.push(path.to_string());
            let dims = param.shape().to_vec();
            if t.shape != dims {
                self.errors.push(format!("{path}: shape {:?}, the model has {dims:?}", t.shape));
                return param;
            }
            let req = param.is_require_grad();
            let (id, old, mapper) = param.consume();
            let mut new = t.to_tensor::<B, D>(&old.device());
            if req {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        }
    }
    let (module, ld) = map(module, Ld { values, used: Vec::new(), errors: Vec::new() });
    let mut errors = ld.errors;
    let mut unknown: Vec<&String> = values.keys().filter(|k| !ld.used.contains(k)).collect();
    unknown.sort();
    for k in unknown {
        errors.push(format!("{k}: no such parameter in the model"));
    }
    if errors.is_empty() { Ok(module) } else { Err(crate::Error::Values(errors)) }
}
