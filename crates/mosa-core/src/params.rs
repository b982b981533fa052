//! Parameters by name. A visitor gives every parameter its dotted path (timm-style names such as
//! `blocks.3.adapter.down.weight`), so that methods state their freeze rules as predicates over
//! names, as HF PEFT does, and the optimiser can tell biases from weights.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;

/// One parameter: its path, element count and whether it trains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamInfo {
    pub path: String,
    pub id: ParamId,
    pub numel: usize,
    pub trainable: bool,
}

#[derive(Default)]
struct Lister {
    stack: Vec<String>,
    out: Vec<ParamInfo>,
}

impl Lister {
    fn path(&self) -> String {
        self.stack.join(".")
    }
}

impl<B: Backend> ModuleVisitor<B> for Lister {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.out.push(ParamInfo {
            path: self.path(),
            id: param.id,
            numel: param.shape().num_elements(),
            trainable: param.is_require_grad(),
        });
    }
}

/// Every float parameter of `module` with its path.
pub fn list<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamInfo> {
    let mut v = Lister::default();
    module.visit(&mut v);
    v.out
}

struct Trainable<'a> {
    stack: Vec<String>,
    rule: &'a dyn Fn(&str) -> bool,
}

impl<B: Backend> ModuleMapper<B> for Trainable<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.stack.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let train = (self.rule)(&self.stack.join("."));
        param.set_require_grad(train)
    }
}

/// Sets which parameters train: those whose path satisfies `rule`; all others are frozen
/// (no gradient is tracked for them, so backward never reaches into them).
pub fn set_trainable<B: Backend, M: Module<B>>(module: M, rule: &dyn Fn(&str) -> bool) -> M {
    module.map(&mut Trainable { stack: Vec::new(), rule })
}

/// Number of trainable elements.
pub fn count_trainable(params: &[ParamInfo]) -> usize {
    params.iter().filter(|p| p.trainable).map(|p| p.numel).sum()
}

/// Whether a parameter path names a bias (the reference decays every parameter whose name does
/// not contain "bias"; burn names a LayerNorm shift `beta`).
pub fn is_bias(path: &str) -> bool {
    path.contains("bias") || path.ends_with(".beta")
}
