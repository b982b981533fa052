//! `y = x·W + b` over the last axis of `x`, the frozen and full-rank linears of every backbone.
//! The default is burn's `linear` op; with a fused kernel ([`Kernels::FUSED_LINEAR`]) `Autodiff`
//! records one node (a missing bias is a constant zero one) whose backward flattens `x` and
//! `∂L/∂y` to rows first, so that `∂L/∂W = xᵀ·∂L/∂y` is one GEMM over all `b·t` rows (burn's own backward of a 3-D input is a
//! batched GEMM per sample and then a sum), `∂L/∂x = ∂L/∂y·Wᵀ`, `∂L/∂b = Σ_rows ∂L/∂y`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::TensorMetadata;
use burn::tensor::ops::{FloatTensor, ModuleOps};

use super::{Kernels, as_rows};

/// The default backward on rows: burn's `linear_*_backward` ops, each only where `need`s it.
pub(super) fn composed_backward<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, grad: FloatTensor<B>, need: [bool; 3]) -> [Option<FloatTensor<B>>; 3] {
    [
        need[0].then(|| <B as ModuleOps<B>>::linear_x_backward(weight, grad.clone())),
        need[1].then(|| <B as ModuleOps<B>>::linear_weight_backward(x, grad.clone())),
        need[2].then(|| <B as ModuleOps<B>>::linear_bias_backward(grad)),
    ]
}

/// The linear under `Autodiff` (module docs).
pub(super) fn autodiff<B: Kernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
) -> FloatTensor<Autodiff<B, C>> {
    if !B::FUSED_LINEAR {
        return <Autodiff<B, C> as ModuleOps<Autodiff<B, C>>>::linear(x, weight, bias);
    }
    // without a bias: a constant zero one (no gradient is tracked for it), so that one node serves
    let bias = bias.unwrap_or_else(|| {
        let out = weight.shape().to_vec()[1];
        let zeros = B::float_zeros(burn::tensor::Shape::new([out]), &B::float_device(&weight.primitive), weight.primitive.dtype().into());
        <Autodiff<B, C> as burn::tensor::backend::AutodiffBackend>::from_inner(zeros)
    });

    #[derive(Debug)]
    struct LinearBackward;

    impl<B: Kernels> Backward<B, 3> for LinearBackward {
        type State = (NodeId, NodeId);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, weight_state) = ops.state;
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
            let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
            let x_shape = x.shape();
            let need = [node_x.is_some(), node_weight.is_some(), node_bias.is_some()];
            let [dx, dweight, dbias] = B::linear_rows_backward(as_rows::<B>(x), weight, as_rows::<B>(grad), need);
            if let (Some(node), Some(dweight)) = (node_weight, dweight) {
                grads.register::<B>(node.id, dweight);
            }
            if let (Some(node), Some(dbias)) = (node_bias, dbias) {
                grads.register::<B>(node.id, dbias);
            }
            if let (Some(node), Some(dx)) = (node_x, dx) {
                grads.register::<B>(node.id, B::float_reshape(dx, x_shape));
            }
        }
    }

    match LinearBackward.prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&weight));
            prep.finish(state, B::linear_rows(x.primitive, weight.primitive, Some(bias.primitive)))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::linear_rows(x.primitive, weight.primitive, Some(bias.primitive))),
    }
}
