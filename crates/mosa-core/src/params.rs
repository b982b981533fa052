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

/// The trainable parameters on the host: `(path, shape, values)`, in module order.
pub fn export_trainable<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    struct Ex {
        stack: Vec<String>,
        out: Vec<(String, Vec<usize>, Vec<f32>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Ex {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if param.is_require_grad() {
                let v = param.val();
                let shape = v.dims().to_vec();
                let data = v.into_data().convert::<f32>().to_vec::<f32>().unwrap_or_default();
                self.out.push((self.stack.join("."), shape, data));
            }
        }
    }
    let mut ex = Ex { stack: Vec::new(), out: Vec::new() };
    module.visit(&mut ex);
    ex.out
}

/// Replaces parameter values by path (trainability is kept). Every entry of `values` must name
/// a parameter of the same shape; returns the module or a message listing what did not fit.
pub fn load_by_path<B: Backend, M: Module<B>>(module: M, values: &std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>) -> Result<M, String> {
    struct Ld<'a> {
        stack: Vec<String>,
        values: &'a std::collections::HashMap<String, (Vec<usize>, Vec<f32>)>,
        used: Vec<String>,
        errors: Vec<String>,
    }
    impl<B: Backend> ModuleMapper<B> for Ld<'_> {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.stack.push(name.to_string());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.stack.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let path = self.stack.join(".");
            let Some((shape, data)) = self.values.get(&path) else { return param };
            self.used.push(path.clone());
            let dims = param.val().dims().to_vec();
            if *shape != dims {
                self.errors.push(format!("{path}: shape {shape:?}, the model has {dims:?}"));
                return param;
            }
            let req = param.is_require_grad();
            let (id, t, mapper) = param.consume();
            let mut new = Tensor::<B, D>::from_data(TensorData::new(data.clone(), shape.clone()), &t.device());
            if req {
                new = new.require_grad();
            }
            Param::from_mapped_value(id, new, mapper)
        }
    }
    let mut ld = Ld { stack: Vec::new(), values, used: Vec::new(), errors: Vec::new() };
    let module = module.map(&mut ld);
    let mut unknown: Vec<&String> = values.keys().filter(|k| !ld.used.contains(k)).collect();
    unknown.sort();
    for k in unknown {
        ld.errors.push(format!("{k}: no such parameter in the model"));
    }
    if ld.errors.is_empty() { Ok(module) } else { Err(ld.errors.join("; ")) }
}
