//! VPT prompt tokens (Jia et al. 2022): `n` learned tokens inserted after the class token,
//! before the first block (shallow) or replaced before every block (deep), and removed again
//! before the final norm and head. Init: U(±√(6 / (3·p² + d))) as in the VPT code.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::site::PromptSite;

/// VPT's options (`--prompt-tokens`, `--prompt-dropout`); the one source of their defaults.
#[derive(Config, Debug)]
pub struct PromptOptions {
    #[config(default = 10)]
    pub tokens: usize,
    #[config(default = 0.1)]
    pub dropout: f64,
}

impl PromptOptions {
    /// One set per block (`deep`) or one before the first block, at a backbone's prompt site.
    pub fn init<B: Backend>(&self, site: &PromptSite, deep: bool, device: &B::Device) -> Prompts<B> {
        let layers = if deep { site.depth } else { 1 };
        let v = (6.0 / (3 * site.patch_size * site.patch_size + site.width) as f64).sqrt();
        Prompts {
            tokens: Param::from_tensor(Tensor::random([layers, self.tokens, site.width], Distribution::Uniform(-v, v), device)),
            dropout: DropoutConfig::new(self.dropout).init(),
        }
    }
}

#[derive(Module, Debug)]
pub struct Prompts<B: Backend> {
    /// `[layers, n, d]`
    pub tokens: Param<Tensor<B, 3>>,
    pub dropout: Dropout,
}

impl<B: Backend> Prompts<B> {
    pub fn count(&self) -> usize {
        self.tokens.dims()[1]
    }

    pub fn deep(&self) -> bool {
        self.tokens.dims()[0] > 1
    }

    fn layer(&self, l: usize, batch: usize) -> Tensor<B, 3> {
        let [_, n, d] = self.tokens.dims();
        self.dropout.forward(self.tokens.val().slice([l..l + 1, 0..n, 0..d]).expand([batch, n, d]))
    }

    /// Inserts layer `l`'s prompts after the class token: `[cls, prompts, patches]`.
    pub fn insert(&self, x: Tensor<B, 3>, l: usize) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let cls = x.clone().slice([0..b, 0..1, 0..d]);
        let rest = x.slice([0..b, 1..t, 0..d]);
        Tensor::cat(vec![cls, self.layer(l, b), rest], 1)
    }

    /// Replaces the prompt tokens after the class token with layer `l`'s (deep VPT).
    pub fn replace(&self, x: Tensor<B, 3>, l: usize) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let n = self.count();
        let cls = x.clone().slice([0..b, 0..1, 0..d]);
        let rest = x.slice([0..b, 1 + n..t, 0..d]);
        Tensor::cat(vec![cls, self.layer(l, b), rest], 1)
    }

    /// Removes the prompt tokens again.
    pub fn remove(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let n = self.count();
        let cls = x.clone().slice([0..b, 0..1, 0..d]);
        Tensor::cat(vec![cls, x.slice([0..b, 1 + n..t, 0..d])], 1)
    }
}
