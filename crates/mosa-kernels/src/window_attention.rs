//! Swin's (shifted) window attention as one kernel, read straight from the token grid: the
//! cyclic shift and the window partition are index arithmetic in the kernel's reads and writes,
//! not copies.
//!
//! Given `qkv` `[b, H, W, 3c]` (timm's packing per token: q, k, v, each `[heads, hd]`) with `H`
//! and `W` whole multiples of the window `w`, a shift `s` and an additive `bias`
//! `[nb, heads, n, n]` (`n = w²`; Swin's relative position bias, plus the shifted-window mask when
//! `s > 0`), window `j` (row-major over the `(H/w) × (W/w)` windows) of image `i` holds the tokens
//! at `((y + s) mod H, (x + s) mod W)` for `y, x` in its `w × w` square (timm's `roll(−s)` then
//! partition), and
//!
//! `out[token] = softmax(q·kᵀ/√hd + bias[j mod nb]) · v` per head, written back at the token's own
//! place (the reverse partition and `roll(+s)`).
//!
//! The backward, given each score row's log-sum-exp, is the attention's (`P = exp(S − lse)`,
//! `dv = Pᵀ·dO`, `dP = dO·vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙ dP))`, `dq = dS·k/√hd`,
//! `dk = dSᵀ·q/√hd`) with `∂L/∂bias[m] = Σ_{j mod nb = m} dS` over images and windows.
//!
//! Grids that are not whole windows are padded by the caller (roll, pad, then this kernel with
//! `s = 0`), as timm pads before the projection. The [`Kernels`] defaults are burn's composition
//! (roll, reshape, permute, matmul, softmax): what the Swin blocks ran before this kernel existed.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::TensorMetadata;
use burn::tensor::activation::softmax;
use burn::tensor::ops::FloatTensor;

use super::attention::{merge_heads, scores, split};
use super::{Kernels, float, primitive};

/// A window attention's layout: heads, window side and cyclic shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Windows {
    pub heads: usize,
    pub window: usize,
    pub shift: usize,
}

/// `qkv`'s grid and the window count, `None` where the shapes do not fit the kernel's contract
/// (module docs).
pub(crate) fn grid(qkv: &[usize], bias: &[usize], win: Windows) -> Option<Grid> {
    let (&[b, h, w, c3], &[nb, bh, n1, n2]) = (qkv, bias) else { return None };
    let ws = win.window;
    let n = ws * ws;
    let fits = ws > 0
        && win.heads > 0
        && h % ws == 0
        && w % ws == 0
        && c3 % (3 * win.heads) == 0
        && win.shift < ws
        && bh == win.heads
        && (n1, n2) == (n, n)
        && nb > 0
        && ((h / ws) * (w / ws)).is_multiple_of(nb);
    fits.then_some(Grid { b, h, w, c: c3 / 3, windows: (h / ws) * (w / ws), nb })
}

/// The sizes [`grid`] checked (read by the backends with a kernel of their own).
#[cfg_attr(not(feature = "flex"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub b: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    /// windows per image
    pub windows: usize,
    /// bias blocks
    pub nb: usize,
}

/// `x` `[b, H, W, k]` as windows `[b·nW, n, k]` after `roll(−s)` (module docs).
pub fn partition<B: Backend>(x: Tensor<B, 4>, win: Windows) -> Tensor<B, 3> {
    let [b, h, w, k] = x.dims();
    let (ws, s) = (win.window, win.shift as i64);
    // burn's `roll_dim(k)` moves element i + k to i: torch's `roll(x, −k)`
    let x = if s > 0 { x.roll_dim(s, 1).roll_dim(s, 2) } else { x };
    x.reshape([b, h / ws, ws, w / ws, ws, k]).permute([0, 1, 3, 2, 4, 5]).reshape([b * (h / ws) * (w / ws), ws * ws, k])
}

/// [`partition`] undone: windows `[b·nW, n, k]` → `[b, H, W, k]`.
pub fn reverse<B: Backend>(x: Tensor<B, 3>, [b, h, w]: [usize; 3], win: Windows) -> Tensor<B, 4> {
    let (ws, s) = (win.window, win.shift as i64);
    let k = x.dims()[2];
    let x = x.reshape([b, h / ws, w / ws, ws, ws, k]).permute([0, 1, 3, 2, 4, 5]).reshape([b, h, w, k]);
    if s > 0 { x.roll_dim(-s, 1).roll_dim(-s, 2) } else { x }
}

/// The scores with the bias added, `[b·nW, heads, n, n]`.
pub fn biased_scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, bias: Tensor<B, 4>) -> Tensor<B, 4> {
    let [bw, h, n, _] = q.dims();
    let nb = bias.dims()[0];
    (scores(q, k).reshape([bw / nb, nb, h, n, n]) + bias.unsqueeze_dim::<5>(0)).reshape([bw, h, n, n])
}

/// The default forward (module docs) with each score row's log-sum-exp `[b·nW, heads, n]`.
///
/// # Shapes
/// `qkv` `[b, H, W, 3c]`, `bias` `[nb, heads, n, n]` → (`[b, H, W, c]`, `[b·nW, heads, n]`)
pub(super) fn composed_with_lse<B: Backend>(qkv: FloatTensor<B>, bias: FloatTensor<B>, win: Windows) -> (FloatTensor<B>, FloatTensor<B>) {
    let qkv = float::<B, 4>(qkv);
    let [b, h, w, _] = qkv.dims();
    let [q, k, v] = split(partition(qkv, win), win.heads);
    let s = biased_scores(q, k, float::<B, 4>(bias));
    let max = s.clone().max_dim(3);
    let lse = (s.clone() - max.clone()).exp().sum_dim(3).log() + max;
    let out = reverse(merge_heads(softmax(s, 3).matmul(v)), [b, h, w], win);
    (primitive(out), primitive(lse.squeeze_dim::<3>(3)))
}

/// The default forward without the log-sum-exp.
pub(super) fn composed<B: Backend>(qkv: FloatTensor<B>, bias: FloatTensor<B>, win: Windows) -> FloatTensor<B> {
    let qkv = float::<B, 4>(qkv);
    let [b, h, w, _] = qkv.dims();
    let [q, k, v] = split(partition(qkv, win), win.heads);
    let p = softmax(biased_scores(q, k, float::<B, 4>(bias)), 3);
    primitive(reverse(merge_heads(p.matmul(v)), [b, h, w], win))
}

/// The default backward (module docs): `[∂L/∂qkv, ∂L/∂bias]`, the second only when `need_bias`.
pub(super) fn composed_backward<B: Backend>(
    qkv: FloatTensor<B>,
    bias: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    win: Windows,
    need_bias: bool,
) -> (FloatTensor<B>, Option<FloatTensor<B>>) {
    let qkv = float::<B, 4>(qkv);
    let [b, gh, gw, _] = qkv.dims();
    let bias = float::<B, 4>(bias);
    let nb = bias.dims()[0];
    let [q, k, v] = split(partition(qkv, win), win.heads);
    let [bw, h, n, hd] = q.dims();
    let scale = 1.0 / (hd as f64).sqrt();
    let p = (biased_scores(q.clone(), k.clone(), bias) - float::<B, 3>(lse).unsqueeze_dim::<4>(3)).exp();
    let d_out = partition(float::<B, 4>(grad), win).reshape([bw, n, h, hd]).swap_dims(1, 2);
    let dv = p.clone().swap_dims(2, 3).matmul(d_out.clone());
    let dp = d_out.matmul(v.swap_dims(2, 3));
    let row = (p.clone() * dp.clone()).sum_dim(3);
    let ds = p * (dp - row);
    let dbias = need_bias.then(|| primitive(ds.clone().reshape([bw / nb, nb, h, n, n]).sum_dim(0).reshape([nb, h, n, n])));
    let dq = ds.clone().matmul(k) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q) * scale;
    let dqkv = Tensor::cat(vec![merge_heads(dq), merge_heads(dk), merge_heads(dv)], 2);
    (primitive(reverse(dqkv, [b, gh, gw], win)), dbias)
}

/// Window attention as one recorded node whose backward is the inner backend's
/// [`Kernels::window_attention_backward`]; without a fused kernel the composition is recorded op
/// by op.
pub(super) fn autodiff<B: Kernels, C: CheckpointStrategy>(
    qkv: FloatTensor<Autodiff<B, C>>,
    bias: FloatTensor<Autodiff<B, C>>,
    win: Windows,
) -> FloatTensor<Autodiff<B, C>> {
    if !B::FUSED_WINDOW_ATTENTION || grid(&qkv.shape().to_vec(), &bias.shape().to_vec(), win).is_none() {
        return composed::<Autodiff<B, C>>(qkv, bias, win);
    }

    #[derive(Debug)]
    struct WindowAttentionBackward;

    impl<B: Kernels> Backward<B, 2> for WindowAttentionBackward {
        type State = (NodeId, NodeId, FloatTensor<B>, Windows);

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
            let [node_qkv, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (qkv_state, bias_state, lse, win) = ops.state;
            let qkv: FloatTensor<B> = checkpointer.retrieve_node_output(qkv_state);
            let bias: FloatTensor<B> = checkpointer.retrieve_node_output(bias_state);
            let (dqkv, dbias) = B::window_attention_backward(qkv, bias, lse, grad, win, node_bias.is_some());
            if let (Some(node), Some(dbias)) = (node_bias, dbias) {
                grads.register::<B>(node.id, dbias);
            }
            if let Some(node) = node_qkv {
                grads.register::<B>(node.id, dqkv);
            }
        }
    }

    match WindowAttentionBackward.prepare::<C>([qkv.node.clone(), bias.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(mut prep) => {
            let state = (prep.checkpoint(&qkv), prep.checkpoint(&bias));
            let (out, lse) = B::window_attention_with_lse(qkv.primitive, bias.primitive, win);
            prep.finish((state.0, state.1, lse, win), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::window_attention(qkv.primitive, bias.primitive, win)),
    }
}
