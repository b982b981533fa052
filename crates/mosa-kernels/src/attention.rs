//! Multi-head self-attention from the packed `qkv` projection, `softmax(q·kᵀ/√hd)·v` per head, as
//! one kernel: the [`Kernels`] defaults here are burn's composition (the exact ops the models ran
//! before this kernel existed), and the `Autodiff` step that records the kernel as one node with
//! its own backward when the inner backend has a fused kernel ([`Kernels::FUSED_ATTENTION`]).
//!
//! The packing is timm's: the last axis of `qkv` is `[3, heads, head_dim]` (q, k, v; each head's
//! columns side by side), the output `[b, t, heads·head_dim]` has the heads side by side again.
//!
//! The backward, given `lse` (each score row's log-sum-exp): `P = exp(S − lse)` with
//! `S = q·kᵀ/√hd`, `dv = Pᵀ·dO`, `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`,
//! `dq = dS·k/√hd`, `dk = dSᵀ·q/√hd`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::FloatTensor;

use super::{Kernels, float, primitive};

/// q, k, v `[b, h, t, hd]` from the packed `[b, t, 3·h·hd]`.
pub fn split<B: Backend>(qkv: Tensor<B, 3>, heads: usize) -> [Tensor<B, 4>; 3] {
    let [b, t, three_d] = qkv.dims();
    let hd = three_d / 3 / heads;
    let qkv = qkv.reshape([b, t, 3, heads, hd]).permute([2, 0, 3, 1, 4]);
    let mut parts = qkv.chunk(3, 0).into_iter().map(|p| p.reshape([b, heads, t, hd]));
    [parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap()]
}

/// `[b, h, t, hd]` → `[b, t, h·hd]`.
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, hd] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * hd])
}

/// The default forward: burn's attention on the split heads.
///
/// # Shapes
/// `[b, t, 3d]` → `[b, t, d]`
pub(super) fn composed<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let [q, k, v] = split(float::<B, 3>(qkv), heads);
    primitive(merge_heads(burn_attention(q, k, v, None, None, Default::default())))
}

/// The scaled scores `q·kᵀ/√hd`, `[b, h, t, t]`.
pub fn scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>) -> Tensor<B, 4> {
    let hd = q.dims()[3];
    q.matmul(k.swap_dims(2, 3)) * (1.0 / (hd as f64).sqrt())
}

/// The default forward that also returns the scores' row log-sum-exp `[b, h, t]`.
pub(super) fn composed_with_lse<B: Backend>(qkv: FloatTensor<B>, heads: usize) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split(float::<B, 3>(qkv), heads);
    let s = scores(q, k);
    let max = s.clone().max_dim(3);
    let lse = (s.clone() - max.clone()).exp().sum_dim(3).log() + max;
    let out = merge_heads(softmax(s, 3).matmul(v));
    (primitive(out), primitive(lse.squeeze_dim::<3>(3)))
}

/// The default backward (module docs), `∂L/∂qkv` `[b, t, 3d]` from `grad` = `∂L/∂out` `[b, t, d]`.
pub(super) fn composed_backward<B: Backend>(qkv: FloatTensor<B>, lse: FloatTensor<B>, grad: FloatTensor<B>, heads: usize) -> FloatTensor<B> {
    let [q, k, v] = split(float::<B, 3>(qkv), heads);
    let [b, h, t, hd] = q.dims();
    let scale = 1.0 / (hd as f64).sqrt();
    let p = (scores(q.clone(), k.clone()) - float::<B, 3>(lse).unsqueeze_dim::<4>(3)).exp();
    let d_out = float::<B, 3>(grad).reshape([b, t, h, hd]).swap_dims(1, 2);
    let dv = p.clone().swap_dims(2, 3).matmul(d_out.clone());
    let dp = d_out.matmul(v.swap_dims(2, 3));
    let row = (p.clone() * dp.clone()).sum_dim(3);
    let ds = p * (dp - row);
    let dq = ds.clone().matmul(k) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q) * scale;
    primitive(Tensor::cat(vec![merge_heads(dq), merge_heads(dk), merge_heads(dv)], 2))
}

/// Attention as one recorded node whose backward is the inner backend's
/// [`Kernels::attention_packed_backward`]; without a fused kernel the composition is recorded op
/// by op, exactly as before.
pub(super) fn autodiff<B: Kernels, C: CheckpointStrategy>(qkv: FloatTensor<Autodiff<B, C>>, heads: usize) -> FloatTensor<Autodiff<B, C>> {
    if !B::FUSED_ATTENTION {
        return composed::<Autodiff<B, C>>(qkv, heads);
    }

    #[derive(Debug)]
    struct AttentionBackward;

    impl<B: Kernels> Backward<B, 1> for AttentionBackward {
        type State = (NodeId, FloatTensor<B>, usize);

        fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let (node, lse, heads) = ops.state;
            let qkv: FloatTensor<B> = checkpointer.retrieve_node_output(node);
            unary::<B, _>(ops.parents, ops.node, grads, |grad| B::attention_packed_backward(qkv, lse, grad, heads));
        }
    }

    match AttentionBackward.prepare::<C>([qkv.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let node = prep.checkpoint(&qkv);
            let (out, lse) = B::attention_packed_with_lse(qkv.primitive.clone(), heads);
            prep.finish((node, lse, heads), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::attention_packed(qkv.primitive, heads)),
    }
}
