//! Our own kernels, through burn's backend-extension mechanism (burn-book
//! `advanced/backend-extension`): [`Kernels`] is a [`Backend`] subtrait whose default methods are
//! burn's own composition, so every backend keeps exactly its results unless it overrides a
//! method. Flex (`flex.rs`) overrides them with vectorised, multi-threaded CPU kernels;
//! `Autodiff<B>` implements them with its own backward steps, which call `B`'s kernels; NdArray,
//! CUDA and wgpu take the defaults.
//!
//! Models and methods are written against `B: Kernels` (training code against
//! [`AutodiffKernels`]) and call the typed helpers here ([`gelu`]), never a backend directly.
//!
//! | kernel | default | Flex |
//! |---|---|---|
//! | [`Kernels::gelu_exact`] | `ActivationOps::gelu` (burn-flex: scalar `erff`, one thread) | branch-free erf and exp, SIMD by runtime dispatch, rayon |
//! | [`Kernels::gelu_exact_backward`] | `ActivationOps::gelu_backward` | the same, fused with the incoming gradient |

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ActivationOps, FloatTensor};

#[cfg(feature = "flex")]
pub mod flex;
pub mod math;

/// A backend with mosa's kernels (module docs).
pub trait Kernels: Backend {
    /// Exact GELU, `0.5·x·(1 + erf(x/√2))`, element-wise.
    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu(x)
    }

    /// `grad · GELU'(x)`, `GELU'(x) = Φ(x) + x·φ(x)`.
    fn gelu_exact_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        <Self as ActivationOps<Self>>::gelu_backward(x, grad)
    }
}

/// A training backend whose forward and inner (evaluation) backends both have [`Kernels`].
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}
impl<B> AutodiffKernels for B where B: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

/// Exact GELU through the backend's kernel.
pub fn gelu<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(B::gelu_exact(x.into_primitive().tensor())))
}

impl<B: Kernels, C: CheckpointStrategy> Kernels for Autodiff<B, C> {
    fn gelu_exact(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct GeluBackward;

        impl<B: Kernels> Backward<B, 1> for GeluBackward {
            type State = NodeId;

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let input: FloatTensor<B> = checkpointer.retrieve_node_output(ops.state);
                unary::<B, _>(ops.parents, ops.node, grads, |grad| B::gelu_exact_backward(input, grad));
            }
        }

        match GeluBackward.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = prep.checkpoint(&x);
                prep.finish(state, B::gelu_exact(x.primitive.clone()))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::gelu_exact(x.primitive)),
        }
    }
}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray {}
#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {}
