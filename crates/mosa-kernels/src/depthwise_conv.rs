//! Depthwise `k × k` convolution (stride 1, zero padding `p` on every side) over a channels-last
//! grid, ConvNeXt's token mixer:
//!
//! `out[b, y, x, c] = bias[c] + Σ_{i, j < k} weight[c, 0, i, j] · in[b, y + i − p, x + j − p, c]`,
//!
//! `in` `[b, H, W, C]`, `weight` `[C, 1, k, k]` (burn's and timm's grouped-conv layout),
//! `out` `[b, H + 2p − k + 1, W + 2p − k + 1, C]`. Channels last keeps a ConvNeXt stage in one
//! layout from its LayerNorm through its MLP (no NCHW ↔ NHWC copies per block).
//!
//! The backward: `∂in` is the same convolution of `∂out` with the kernel flipped and padding
//! `k − 1 − p`; `∂weight[c, 0, i, j] = Σ_{b, y, x} ∂out[b, y, x, c] · in[b, y + i − p, x + j − p, c]`;
//! `∂bias[c] = Σ ∂out[…, c]`.
//!
//! The [`Kernels`] defaults are burn's grouped `conv2d` (and its backward ops) between two
//! permutes: what the ConvNeXt blocks computed before this kernel existed.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, FloatTensor, ModuleOps};
use burn::tensor::{Shape, TensorMetadata};

use super::Kernels;

/// The convolution's sizes, `None` where the shapes do not fit (module docs; read by the backends
/// with a kernel of their own).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
pub(crate) fn geometry(x: &[usize], weight: &[usize], padding: usize) -> Option<Geometry> {
    let (&[b, h, w, c], &[wc, one, k, k2]) = (x, weight) else { return None };
    let fits = wc == c && one == 1 && k == k2 && k > 0 && h + 2 * padding >= k && w + 2 * padding >= k;
    fits.then(|| Geometry { b, h, w, c, k, p: padding, ho: h + 2 * padding + 1 - k, wo: w + 2 * padding + 1 - k })
}

/// The sizes [`geometry`] checked.
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub k: usize,
    pub p: usize,
    pub ho: usize,
    pub wo: usize,
}

fn options(channels: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [padding, padding], [1, 1], channels)
}

fn channels<B: Backend>(x: &FloatTensor<B>) -> usize {
    *x.shape().to_vec().last().unwrap_or(&0)
}

/// The default forward: burn's grouped conv on NCHW between two permutes.
pub(super) fn composed<B: Backend>(x: FloatTensor<B>, weight: FloatTensor<B>, bias: FloatTensor<B>, padding: usize) -> FloatTensor<B> {
    let c = channels::<B>(&x);
    let y = <B as ModuleOps<B>>::conv2d(B::float_permute(x, &[0, 3, 1, 2]), weight, Some(bias), options(c, padding));
    B::float_permute(y, &[0, 2, 3, 1])
}

/// The default backward: `[∂x, ∂weight, ∂bias]` from burn's conv backward ops, each where `need`ed.
pub(super) fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    padding: usize,
    need: [bool; 3],
) -> [Option<FloatTensor<B>>; 3] {
    let c = channels::<B>(&x);
    let rows = grad.shape().num_elements() / c.max(1);
    let db = need[2].then(|| B::float_reshape(B::float_sum_dim(B::float_reshape(grad.clone(), Shape::new([rows, c])), 0), Shape::new([c])));
    let (x, g) = (B::float_permute(x, &[0, 3, 1, 2]), B::float_permute(grad, &[0, 3, 1, 2]));
    let dx =
        need[0].then(|| B::float_permute(<B as ModuleOps<B>>::conv2d_x_backward(x.clone(), weight.clone(), g.clone(), options(c, padding)), &[0, 2, 3, 1]));
    let dw = need[1].then(|| <B as ModuleOps<B>>::conv2d_weight_backward(x, weight, g, options(c, padding)));
    [dx, dw, db]
}

/// The convolution under `Autodiff`: one node whose backward is the inner backend's
/// [`Kernels::depthwise_conv_backward`] when it has its own kernel
/// ([`Kernels::FUSED_DEPTHWISE_CONV`]); otherwise the composition recorded op by op.
pub(super) fn autodiff<B: Kernels, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    padding: usize,
) -> FloatTensor<Autodiff<B, C>> {
    if !B::FUSED_DEPTHWISE_CONV {
        return composed::<Autodiff<B, C>>(x, weight, bias, padding);
    }

    #[derive(Debug)]
    struct DepthwiseConvBackward;

    impl<B: Kernels> Backward<B, 3> for DepthwiseConvBackward {
        type State = (NodeId, NodeId, usize);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_x, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (x_state, weight_state, padding) = ops.state;
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
            let weight: FloatTensor<B> = checkpointer.retrieve_node_output(weight_state);
            let need = [node_x.is_some(), node_weight.is_some(), node_bias.is_some()];
            let [dx, dweight, dbias] = B::depthwise_conv_backward(x, weight, grad, padding, need);
            for (node, g) in [(node_x, dx), (node_weight, dweight), (node_bias, dbias)] {
                if let (Some(node), Some(g)) = (node, g) {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    match DepthwiseConvBackward.prepare::<C>([x.node.clone(), weight.node.clone(), bias.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&x), prep.checkpoint(&weight), padding);
            prep.finish(state, B::depthwise_conv(x.primitive, weight.primitive, bias.primitive, padding))
        }
        OpsKind::UnTracked(prep) => prep.finish(B::depthwise_conv(x.primitive, weight.primitive, bias.primitive, padding)),
    }
}
