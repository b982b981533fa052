//! Our own kernels, through burn's backend-extension mechanism (burn-book
//! `advanced/backend-extension`): [`Kernels`] is a [`Backend`] subtrait whose default methods are
//! burn's own composition, so every backend keeps exactly its results unless it overrides a
//! method. Flex (`flex.rs`) overrides them with vectorised, multi-threaded CPU kernels;
//! `Autodiff<B>` implements them with its own backward steps, which call `B`'s kernels; NdArray,
//! CUDA and wgpu take the defaults.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//!
//! let device = Default::default();
//! let x = Tensor::<Flex, 1>::from_floats([-1.0, 0.0, 2.0], &device);
//! // Flex's own exact GELU, x·Φ(x)
//! let y: Vec<f32> = mosa_kernels::gelu(x).into_data().to_vec().unwrap();
//! for (got, want) in y.iter().zip([-0.158_655_25_f32, 0.0, 1.954_499_7]) {
//!     assert!((got - want).abs() < 1e-6);
//! }
//! ```
//!
//! Models and methods are written against `B: Kernels` (training code against
//! [`AutodiffKernels`]) and call the typed helpers here ([`gelu`], [`attention_packed`], [`window_attention()`], [`depthwise_conv()`], [`linear_rows`], [`linear_layer`]) or the
//! `LayerNorm` module of mosa-core, never a backend directly.
//!
//! | kernel | default | Flex |
//! |---|---|---|
//! | [`Kernels::gelu_exact`] | `ActivationOps::gelu` (burn-flex: scalar `erff`, one thread) | branch-free erf and exp, SIMD by runtime dispatch, rayon |
//! | [`Kernels::gelu_exact_backward`] | `ActivationOps::gelu_backward` | the same, fused with the incoming gradient |
//! | [`Kernels::attention_packed`] | split heads (reshape, permute), `module::attention`, merge heads | per (batch, head) on rayon: strided GEMMs straight from the packed `qkv`, SIMD softmax, output written into `[b, t, d]` |
//! | [`Kernels::attention_packed_backward`] | the backward composed of tensor ops (`attention.rs`) | per (batch, head): the softmax recomputed from the saved log-sum-exp, five strided GEMMs into the packed gradient |
//! | [`Kernels::window_attention`] | roll, partition (reshape, permute), matmul, bias and mask added, softmax, matmul, reverse | per (image, window, head) on rayon: the window's q, k, v gathered from the grid through the shift, the bias rows under the scores, SIMD softmax, the output scattered back to the tokens' places |
//! | [`Kernels::window_attention_backward`] | the backward composed of tensor ops (`window_attention.rs`) | per (image, window, head): softmax recomputed from the log-sum-exp, five GEMMs, ∂bias reduced over windows that share a bias block |
//! | [`Kernels::depthwise_conv`] | permute to NCHW, `ModuleOps::conv2d` with C groups, permute back | channels last: per output row on rayon, each tap a SIMD multiply-add over the channels of whole pixel runs |
//! | [`Kernels::depthwise_conv_backward`] | `ModuleOps::conv2d_{x,weight}_backward` between permutes, ∂bias a sum | ∂x: the forward with the kernel flipped; ∂weight and ∂bias folded per task over rows, then summed |
//! | [`Kernels::linear_rows`] | `ModuleOps::linear` (matmul, then the bias added on one thread) | bias rows written first, one GEMM over all rows accumulating into them, on rayon (ours, `flex/gemm.rs`, on AVX2 CPUs without AVX-512, a 6 × 16 tile; the `gemm` crate elsewhere, or our 12 × 32 AVX-512 tile with `MOSA_GEMM=avx512`); under `Autodiff` ∂W is one GEMM over all rows |
//! | [`Kernels::linear_rows_backward`] | `ModuleOps::linear_{x,weight,bias}_backward` | ∂x and ∂W as one parallel GEMM each on strided views (no transposed copies), ∂b summed per task |
//! | [`Kernels::layer_norm`] | `ModuleOps::layer_norm` (burn-flex: SIMD, rayon) | the default |
//! | [`Kernels::add_at`], [`Kernels::set_at`] | gather + scatter-add; a host round trip (`entries.rs`) | in place, O(k), when the tensor owns its buffer |
//! | [`Kernels::layer_norm_backward`] | the backward composed of tensor ops (`layer_norm.rs`) | rows on rayon, one SIMD pass per row, γ and β gradients reduced per task |

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{ActivationOps, FloatTensor, IntTensor, ModuleOps};
use burn::tensor::{TensorMetadata, TensorPrimitive};

pub mod attention;
pub mod depthwise_conv;
pub mod entries;
#[cfg(feature = "flex")]
pub mod flex;
pub mod layer_norm;
pub mod linear;
pub mod math;
pub mod window_attention;

pub use window_attention::Windows;

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

    /// Whether [`Kernels::attention_packed_with_lse`] and [`Kernels::attention_packed_backward`]
    /// are this backend's own kernel: only then does `Autodiff` record attention as one node with
    /// that backward (otherwise it records the default composition op by op, as burn does).
    const FUSED_ATTENTION: bool = false;

    /// Multi-head self-attention from the packed projection ([`attention`] module docs).
    ///
    /// # Shapes
    /// `qkv` `[b, t, 3·heads·head_dim]` → `[b, t, heads·head_dim]`
    fn attention_packed(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        attention::composed::<Self>(qkv, heads)
    }

    /// [`Kernels::attention_packed`] and each score row's log-sum-exp `[b, heads, t]`, which the
    /// backward uses to recompute the softmax.
    fn attention_packed_with_lse(qkv: FloatTensor<Self>, heads: usize) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::composed_with_lse::<Self>(qkv, heads)
    }

    /// `∂L/∂qkv` `[b, t, 3d]` from `grad` = `∂L/∂out` `[b, t, d]` and the forward's `lse`.
    fn attention_packed_backward(qkv: FloatTensor<Self>, lse: FloatTensor<Self>, grad: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        attention::composed_backward::<Self>(qkv, lse, grad, heads)
    }

    /// Whether [`Kernels::window_attention_with_lse`] and [`Kernels::window_attention_backward`]
    /// are this backend's own kernel: only then does `Autodiff` record window attention as one
    /// node with that backward.
    const FUSED_WINDOW_ATTENTION: bool = false;

    /// Swin's (shifted) window attention read from the token grid ([`window_attention`](mod@window_attention) module docs).
    ///
    /// # Shapes
    /// `qkv` `[b, H, W, 3c]`, `bias` `[nb, heads, w², w²]` → `[b, H, W, c]`
    fn window_attention(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, win: Windows) -> FloatTensor<Self> {
        window_attention::composed::<Self>(qkv, bias, win)
    }

    /// [`Kernels::window_attention`] and each score row's log-sum-exp `[b·windows, heads, w²]`.
    fn window_attention_with_lse(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, win: Windows) -> (FloatTensor<Self>, FloatTensor<Self>) {
        window_attention::composed_with_lse::<Self>(qkv, bias, win)
    }

    /// `(∂L/∂qkv, ∂L/∂bias)` from `grad` = `∂L/∂out` and the forward's `lse`; the bias's only
    /// when `need_bias`.
    fn window_attention_backward(
        qkv: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        win: Windows,
        need_bias: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        window_attention::composed_backward::<Self>(qkv, bias, lse, grad, win, need_bias)
    }

    /// Whether [`Kernels::depthwise_conv`] and [`Kernels::depthwise_conv_backward`] are this
    /// backend's own kernels: only then does `Autodiff` record the convolution as one node with
    /// that backward.
    const FUSED_DEPTHWISE_CONV: bool = false;

    /// Depthwise `k × k` convolution, stride 1, zero padding `padding`, channels last
    /// ([`depthwise_conv`](mod@depthwise_conv) module docs).
    ///
    /// # Shapes
    /// `x` `[b, H, W, C]`, `weight` `[C, 1, k, k]`, `bias` `[C]` → `[b, H + 2p − k + 1, W + 2p − k + 1, C]`
    fn depthwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        depthwise_conv::composed::<Self>(x, weight, bias, padding)
    }

    /// `[∂L/∂x, ∂L/∂weight, ∂L/∂bias]` of [`Kernels::depthwise_conv`] from `grad` = `∂L/∂out`, each
    /// only where `need` asks for it.
    fn depthwise_conv_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        padding: usize,
        need: [bool; 3],
    ) -> [Option<FloatTensor<Self>>; 3] {
        depthwise_conv::composed_backward::<Self>(x, weight, grad, padding, need)
    }

    /// Whether [`Kernels::linear_rows`] and [`Kernels::linear_rows_backward`] are this backend's
    /// own kernels: only then does `Autodiff` record a linear as one node with a row-flattened
    /// backward ([`linear`] docs).
    const FUSED_LINEAR: bool = false;

    /// `x·W + b` over the last axis.
    ///
    /// # Shapes
    /// `x` `[…, in]`, `weight` `[in, out]`, `bias` `[out]` → `[…, out]`
    fn linear_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::linear(x, weight, bias)
    }

    /// `[∂L/∂x, ∂L/∂W, ∂L/∂b]` of [`Kernels::linear_rows`] on rows (`x` `[rows, in]`, `grad`
    /// `[rows, out]`), each only where `need` asks for it.
    fn linear_rows_backward(x: FloatTensor<Self>, weight: FloatTensor<Self>, grad: FloatTensor<Self>, need: [bool; 3]) -> [Option<FloatTensor<Self>>; 3] {
        linear::composed_backward::<Self>(x, weight, grad, need)
    }

    /// Whether [`Kernels::layer_norm_backward`] is this backend's own kernel: only then does
    /// `Autodiff` record LayerNorm as one node with that backward.
    const FUSED_LAYER_NORM: bool = false;

    /// LayerNorm over the last axis with a bias ([`layer_norm`](mod@layer_norm) module docs).
    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        <Self as ModuleOps<Self>>::layer_norm(x, gamma, Some(beta), epsilon)
    }

    /// `(∂L/∂x, (∂L/∂γ, ∂L/∂β))` from `grad` = `∂L/∂y`; the parameters' gradients only when
    /// `params`.
    #[allow(clippy::type_complexity)]
    fn layer_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        epsilon: f64,
        params: bool,
    ) -> (FloatTensor<Self>, Option<(FloatTensor<Self>, FloatTensor<Self>)>) {
        layer_norm::composed_backward::<Self>(x, gamma, grad, epsilon, params)
    }

    /// Adds `values` at the flat `indices` of `x` and returns the entries' previous values too
    /// ([`entries`] module docs: a sparse change put in place).
    ///
    /// # Shapes
    /// `x` `[n]`, `indices` and `values` `[k]` → (`[n]`, `[k]`)
    fn add_at(x: FloatTensor<Self>, indices: IntTensor<Self>, values: FloatTensor<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        entries::composed_add_at::<Self>(x, indices, values)
    }

    /// Writes `values` at the flat `indices` of `x` (exactly those bits: [`Kernels::add_at`]
    /// undone).
    ///
    /// # Shapes
    /// `x` `[n]`, `indices` and `values` `[k]` → `[n]`
    fn set_at(x: FloatTensor<Self>, indices: IntTensor<Self>, values: FloatTensor<Self>) -> FloatTensor<Self> {
        entries::composed_set_at::<Self>(x, indices, values)
    }
}

/// A training backend whose forward and inner (evaluation) backends both have [`Kernels`].
pub trait AutodiffKernels: AutodiffBackend<InnerBackend: Kernels> + Kernels {}
impl<B> AutodiffKernels for B where B: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

/// A backend float primitive as a tensor of rank `D`.
pub(crate) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// A tensor's float primitive.
pub(crate) fn primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

/// `t` reshaped to `[rows, last]`, its leading axes flattened.
pub(crate) fn as_rows<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let dims = t.shape().to_vec();
    let last = *dims.last().unwrap_or(&1);
    let rows = dims.iter().product::<usize>() / last.max(1);
    B::float_reshape(t, burn::tensor::Shape::new([rows, last]))
}

/// Multi-head self-attention from the packed `[b, t, 3d]` projection through the backend's
/// kernel ([`attention`] module docs).
///
/// # Shapes
/// `[b, t, 3d]` → `[b, t, d]`
pub fn attention_packed<B: Kernels>(qkv: Tensor<B, 3>, heads: usize) -> Tensor<B, 3> {
    float(B::attention_packed(primitive(qkv), heads))
}

/// Swin's (shifted) window attention through the backend's kernel
/// ([`window_attention`](mod@window_attention) module docs).
///
/// # Shapes
/// `qkv` `[b, H, W, 3c]`, `bias` `[nb, heads, w², w²]` → `[b, H, W, c]`
pub fn window_attention<B: Kernels>(qkv: Tensor<B, 4>, bias: Tensor<B, 4>, win: Windows) -> Tensor<B, 4> {
    float(B::window_attention(primitive(qkv), primitive(bias), win))
}

/// Depthwise `k × k` convolution over a channels-last grid through the backend's kernel
/// (stride 1, zero padding `padding`; no bias: a zero one) ([`depthwise_conv`](mod@depthwise_conv) module docs).
///
/// # Shapes
/// `x` `[b, H, W, C]`, `weight` `[C, 1, k, k]`, `bias` `[C]` → `[b, H + 2p − k + 1, W + 2p − k + 1, C]`
pub fn depthwise_conv<B: Kernels>(x: Tensor<B, 4>, weight: Tensor<B, 4>, bias: Option<Tensor<B, 1>>, padding: usize) -> Tensor<B, 4> {
    let bias = bias.unwrap_or_else(|| Tensor::zeros([weight.dims()[0]], &weight.device()));
    float(B::depthwise_conv(primitive(x), primitive(weight), primitive(bias), padding))
}

/// `x·W + b` over the last axis through the backend's kernel ([`linear`] module docs).
///
/// # Shapes
/// `x` `[…, in]`, `weight` `[in, out]`, `bias` `[out]` → `[…, out]`
pub fn linear_rows<B: Kernels, const D: usize>(x: Tensor<B, D>, weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Tensor<B, D> {
    float(B::linear_rows(primitive(x), primitive(weight), bias.map(primitive)))
}

/// A burn `Linear` module's `x·W + b` through [`linear_rows`].
pub fn linear_layer<B: Kernels, const D: usize>(layer: &burn::nn::Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    linear_rows(x, layer.weight.val(), layer.bias.as_ref().map(|b| b.val()))
}

/// LayerNorm over the last axis, `γ ⊙ (x − μ)/√(σ² + ε) + β`, through the backend's kernel
/// (without β, burn's own: its kernel has no β-free form) ([`layer_norm`](mod@layer_norm) module docs).
///
/// # Shapes
/// `x` `[…, d]`, `gamma`, `beta` `[d]` → `[…, d]`
pub fn layer_norm<B: Kernels, const D: usize>(x: Tensor<B, D>, gamma: Tensor<B, 1>, beta: Option<Tensor<B, 1>>, epsilon: f64) -> Tensor<B, D> {
    let (x, gamma) = (primitive(x), primitive(gamma));
    float(match beta {
        Some(beta) => <B as Kernels>::layer_norm(x, gamma, primitive(beta), epsilon),
        None => <B as ModuleOps<B>>::layer_norm(x, gamma, None, epsilon),
    })
}

/// Exact GELU through the backend's kernel.
pub fn gelu<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    float(B::gelu_exact(primitive(x)))
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

    fn attention_packed(qkv: FloatTensor<Self>, heads: usize) -> FloatTensor<Self> {
        attention::autodiff::<B, C>(qkv, heads)
    }

    fn window_attention(qkv: FloatTensor<Self>, bias: FloatTensor<Self>, win: Windows) -> FloatTensor<Self> {
        window_attention::autodiff::<B, C>(qkv, bias, win)
    }

    fn depthwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        depthwise_conv::autodiff::<B, C>(x, weight, bias, padding)
    }

    fn layer_norm(x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>, epsilon: f64) -> FloatTensor<Self> {
        layer_norm::autodiff::<B, C>(x, gamma, beta, epsilon)
    }

    fn linear_rows(x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        linear::autodiff::<B, C>(x, weight, bias)
    }
}

#[cfg(feature = "ndarray")]
impl Kernels for burn::backend::NdArray {}
#[cfg(feature = "cuda")]
impl Kernels for burn::backend::Cuda {}
#[cfg(feature = "wgpu")]
impl Kernels for burn::backend::Wgpu {}
