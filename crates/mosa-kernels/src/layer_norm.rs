//! LayerNorm over the last axis with a bias, `y = γ ⊙ x̂ + β`, `x̂ = (x − μ)/√(σ² + ε)`, as one
//! recorded node with its own backward when the backend has a fused kernel
//! ([`Kernels::FUSED_LAYER_NORM`]); otherwise `Autodiff` records burn's composition op by op,
//! as before. The forward is burn's `layer_norm` op on every backend (burn-flex's is already
//! vectorised and parallel).
//!
//! The backward per row, with `gγ = grad ⊙ γ`: `dx = (gγ − mean(gγ) − x̂ · mean(gγ ⊙ x̂)) / √(σ² + ε)`,
//! and over all rows `dγ = Σ grad ⊙ x̂`, `dβ = Σ grad`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::TensorMetadata;
use burn::tensor::ops::{FloatTensor, ModuleOps};

use super::{Kernels, as_rows, float, primitive};

/// `(dx, Some((dγ, dβ)))`.
pub(super) type LayerNormGrads<B> = (FloatTensor<B>, Option<(FloatTensor<B>, FloatTensor<B>)>);

/// The default backward, composed of tensor ops: `(dx, Some((dγ, dβ)))` (the latter only when
/// `params`), `dx` in `x`'s shape.
pub(super) fn composed_backward<B: Backend>(x: FloatTensor<B>, gamma: FloatTensor<B>, grad: FloatTensor<B>, epsilon: f64, params: bool) -> LayerNormGrads<B> {
    let shape = x.shape();
    let (x, grad): (Tensor<B, 2>, Tensor<B, 2>) = (float(as_rows::<B>(x)), float(as_rows::<B>(grad)));
    let gamma = float::<B, 1>(gamma).unsqueeze::<2>();
    let mean = x.clone().mean_dim(1);
    let centred = x - mean;
    let rstd = (centred.clone().square().mean_dim(1) + epsilon).sqrt().recip();
    let xhat = centred * rstd.clone();
    let gg = grad.clone() * gamma;
    let a = gg.clone().mean_dim(1);
    let c = (gg.clone() * xhat.clone()).mean_dim(1);
    let dx = (gg - a - xhat.clone() * c) * rstd;
    let dx = B::float_reshape(primitive(dx), shape);
    let params = params.then(|| {
        let dgamma = primitive((grad.clone() * xhat).sum_dim(0).squeeze_dim::<1>(0));
        let dbeta = primitive(grad.sum_dim(0).squeeze_dim::<1>(0));
        (dgamma, dbeta)
    });
    (dx, params)
}

/// LayerNorm with a bias under `Autodiff` (module docs).
pub(super) fn autodiff<B: Kernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    gamma: FloatTensor<Autodiff<B, C>>,
    beta: FloatTensor<Autodiff<B, C>>,
    epsilon: f64,
) -> FloatTensor<Autodiff<B, C>> {
    if !B::FUSED_LAYER_NORM {
        return <Autodiff<B, C> as ModuleOps<Autodiff<B, C>>>::layer_norm(x, gamma, Some(beta), epsilon);
    }

    #[derive(Debug)]
    struct LayerNormBackward;

    impl<B: Kernels> Backward<B, 3> for LayerNormBackward {
        type State = (NodeId, NodeId, f64);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_gamma, node_beta] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, gamma_state, epsilon) = ops.state;
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
            let gamma: FloatTensor<B> = checkpointer.retrieve_node_output(gamma_state);
            let params = node_gamma.is_some() || node_beta.is_some();
            let (dx, dparams) = B::layer_norm_backward(x, gamma, grad, epsilon, params);
            if let Some(node) = node_x {
                grads.register::<B>(node.id, dx);
            }
            if let Some((dgamma, dbeta)) = dparams {
                if let Some(node) = node_gamma {
                    grads.register::<B>(node.id, dgamma);
                }
                if let Some(node) = node_beta {
                    grads.register::<B>(node.id, dbeta);
                }
            }
        }
    }

    match LayerNormBackward.prepare::<C>([x.node.clone(), gamma.node.clone(), beta.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&gamma), epsilon);
            prep.finish(state, <B as Kernels>::layer_norm(x.primitive, gamma.primitive, beta.primitive, epsilon))
        }
        OpsKind::UnTracked(prep) => prep.finish(<B as Kernels>::layer_norm(x.primitive, gamma.primitive, beta.primitive, epsilon)),
    }
}
