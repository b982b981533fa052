//! burn's fused attention must agree with plain softmax attention at the sizes real ViTs use
//! (the parity fixtures only have up to 17 tokens).

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::softmax;
use burn::tensor::module::attention;

type B = Flex;

fn naive(q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
    let hd = q.dims()[3];
    softmax(q.matmul(k.swap_dims(2, 3)) / (hd as f64).sqrt(), 3).matmul(v)
}

#[test]
fn fused_attention_matches_naive_at_vit_sizes() {
    let dev = Default::default();
    for (b, h, t, hd) in [(1, 3, 17, 16), (2, 6, 65, 64), (3, 6, 197, 64), (3, 6, 257, 64), (1, 12, 197, 64)] {
        let q = Tensor::<B, 4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<B, 4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<B, 4>::random([b, h, t, hd], Distribution::Normal(0.0, 1.0), &dev);
        let fused = attention(q.clone(), k.clone(), v.clone(), None, None, Default::default());
        let d = (fused - naive(q, k, v)).abs().max().into_scalar();
        println!("b{b} h{h} t{t} hd{hd}: {d:e}");
        assert!(d < 1e-4, "b{b} h{h} t{t} hd{hd}: fused attention differs by {d}");
    }
}

/// q, k, v as the ViT makes them: views of one permuted `qkv` projection (not contiguous).
#[test]
fn fused_attention_matches_naive_on_strided_views() {
    let dev = Default::default();
    for (b, h, t, hd) in [(2, 3, 17, 16), (1, 6, 257, 64), (3, 6, 197, 64)] {
        let qkv = Tensor::<B, 3>::random([b, t, 3 * h * hd], Distribution::Normal(0.0, 1.0), &dev).reshape([b, t, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let parts: Vec<Tensor<B, 4>> = qkv.chunk(3, 0).into_iter().map(|p| p.reshape([b, h, t, hd])).collect();
        let fused = attention(parts[0].clone(), parts[1].clone(), parts[2].clone(), None, None, Default::default());
        // the same values, made contiguous through a host round trip
        let contig = |x: &Tensor<B, 4>| Tensor::<B, 4>::from_data(x.to_data(), &dev);
        let want = naive(contig(&parts[0]), contig(&parts[1]), contig(&parts[2]));
        let d = (fused - want).abs().max().into_scalar();
        println!("strided b{b} h{h} t{t} hd{hd}: {d:e}");
        assert!(d < 1e-4, "b{b} h{h} t{t} hd{hd}: fused attention on strided views differs by {d}");
    }
}
