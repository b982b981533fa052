//! Losses of the MoSA step (spec §3): cross-entropy on the first pass, symmetric KL between the
//! two passes with stop-gradient on the target side, and the optional DEEPREG term.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};

/// Mean cross-entropy of `logits` `[b, c]` against `labels` `[b]` (no label smoothing).
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    let logp = log_softmax(logits, 1);
    logp.gather(1, labels.reshape([b, 1])).mean().neg()
}

/// `KL(softmax(sg(target)) || softmax(input))` summed over classes, averaged over the batch.
pub fn kl_stopgrad<B: Backend>(input: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, _] = input.dims();
    let t = target.detach();
    let p = softmax(t.clone(), 1);
    let logp = log_softmax(t, 1);
    let logq = log_softmax(input, 1);
    p.mul(logp.sub(logq)).sum().div_scalar(b as f64)
}

/// `0.5·[KL(sg(z2)||z1) + KL(sg(z1)||z2)]`.
pub fn symmetric_kl<B: Backend>(z1: Tensor<B, 2>, z2: Tensor<B, 2>) -> Tensor<B, 1> {
    kl_stopgrad(z1.clone(), z2.clone()).add(kl_stopgrad(z2, z1)).mul_scalar(0.5)
}

/// DEEPREG: `(0.01/L)·Σ_{l<6} MSE(h1_l, h2_l)` over the outputs of every block (`L` of them: 12 on
/// ViT-B, as the reference's constant), both sides get gradient.
pub fn deepreg<B: Backend>(h1: &[Tensor<B, 3>], h2: &[Tensor<B, 3>]) -> Tensor<B, 1> {
    let blocks = h1.len().min(h2.len());
    let n = blocks.min(6);
    let mut total: Option<Tensor<B, 1>> = None;
    for l in 0..n {
        let mse = h1[l].clone().sub(h2[l].clone()).powi_scalar(2).mean();
        total = Some(match total {
            Some(t) => t.add(mse),
            None => mse,
        });
    }
    total.map(|t| t.mul_scalar(0.01 / blocks as f64)).unwrap_or_else(|| Tensor::zeros([1], &h1.first().map(|h| h.device()).unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type B = Flex;

    fn t2(v: Vec<f32>, shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, shape), &Default::default())
    }

    #[test]
    fn closed_forms() {
        let z1 = vec![1.0f32, 2.0, 0.5, -1.0, 0.0, 3.0];
        let z2 = vec![0.0f32, 1.0, 1.0, 2.0, -2.0, 0.5];
        let y = Tensor::<B, 1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), &Default::default());
        let sm = |z: &[f32]| {
            let m = z.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
        };
        let ce_hand = -(sm(&z1[0..3])[1].ln() + sm(&z1[3..6])[2].ln()) / 2.0;
        let ce = cross_entropy(t2(z1.clone(), [2, 3]), y).into_scalar() as f64;
        assert!((ce - ce_hand).abs() < 1e-5, "{ce} vs {ce_hand}");
        let kl = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * (a / b).ln()).sum::<f64>();
        let mut hand = 0.0;
        for r in 0..2 {
            let (p1, p2) = (sm(&z1[r * 3..r * 3 + 3]), sm(&z2[r * 3..r * 3 + 3]));
            hand += 0.5 * (kl(&p2, &p1) + kl(&p1, &p2)) / 2.0;
        }
        let got = symmetric_kl(t2(z1.clone(), [2, 3]), t2(z2, [2, 3])).into_scalar() as f64;
        assert!((got - hand).abs() < 1e-5, "{got} vs {hand}");
        assert!(symmetric_kl(t2(z1.clone(), [2, 3]), t2(z1, [2, 3])).into_scalar().abs() < 1e-6);
    }

    /// 8 blocks of `[1, 1, 2]` hidden states, pass 2 = pass 1 + (l + 1) at every entry: the first
    /// six blocks count, MSE_l = (l + 1)², divided by L = 8 blocks: 0.01 · 91 / 8.
    #[test]
    fn deepreg_by_hand() {
        let h = |l: usize, off: f32| Tensor::<B, 3>::from_data(TensorData::new(vec![l as f32 + off, -(l as f32) + off], [1, 1, 2]), &Default::default());
        let h1: Vec<_> = (0..8).map(|l| h(l, 0.0)).collect();
        let h2: Vec<_> = (0..8).map(|l| h(l, l as f32 + 1.0)).collect();
        let got = deepreg(&h1, &h2).into_scalar() as f64;
        let want = 0.01 * (1..=6).map(|k| (k * k) as f64).sum::<f64>() / 8.0;
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    }

    #[test]
    fn kl_target_side_gets_no_gradient() {
        type AB = burn::backend::Autodiff<Flex>;
        let d = Default::default();
        let a = Tensor::<AB, 2>::from_data(TensorData::new(vec![1.0f32, 2.0, 0.5, -1.0], [2, 2]), &d).require_grad();
        let b = Tensor::<AB, 2>::from_data(TensorData::new(vec![0.0f32, 1.0, 1.0, 2.0], [2, 2]), &d).require_grad();
        let grads = kl_stopgrad(a.clone(), b.clone()).backward();
        assert!(b.grad(&grads).is_none(), "the target of the KL must be detached");
        let ga = a.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        // d/dz1 of KL(p2 || softmax(z1)) / batch = (softmax(z1) - p2) / batch
        let sm = |x: f32, y: f32| {
            let (ex, ey) = (x.exp(), y.exp());
            [ex / (ex + ey), ey / (ex + ey)]
        };
        let (p1, q1) = (sm(1.0, 2.0), sm(0.0, 1.0));
        let (p2, q2) = (sm(0.5, -1.0), sm(1.0, 2.0));
        let want = [(p1[0] - q1[0]) / 2.0, (p1[1] - q1[1]) / 2.0, (p2[0] - q2[0]) / 2.0, (p2[1] - q2[1]) / 2.0];
        for (g, w) in ga.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{g} vs {w}");
        }
    }
}
