//! Every tuning method on Swin and ConvNeXt through the one injection mechanism: trainability
//! by the documented rule, the frozen backbone bit-identical after a step, zero-initialised
//! methods leave the logits unchanged, only masked sparse entries train, merged models give the
//! unmerged logits, and methods that do not apply are refused naming the family.

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_core::site::{PeftHost, SiteMut};
use mosa_core::slot::LinearBranch;
use mosa_core::{Method, MethodKind, Rng, inject, params};
use mosa_models::{Backbone, BackboneConfig, ConvNextConfig, SwinConfig};
use mosa_testkit::param_values as values;

type B = Flex;
type AB = Autodiff<Flex>;
const SEED: u64 = 3407;

/// Tiny Swin (grids 8 and 4: stage 0 shifted windows, stage 1 one window) and ConvNeXt.
fn families() -> Vec<BackboneConfig> {
    vec![
        BackboneConfig::Swin(
            SwinConfig::new()
                .with_img_size(16)
                .with_patch_size(2)
                .with_embed_dim(16)
                .with_depths(vec![2, 2])
                .with_num_heads(vec![2, 4])
                .with_window_size(4)
                .with_num_classes(3),
        ),
        BackboneConfig::ConvNext(
            ConvNextConfig::new().with_img_size(16).with_depths(vec![1, 2]).with_dims(vec![8, 16]).with_num_classes(3).with_ls_init_value(Some(0.5)),
        ),
    ]
}

/// Whether a method applies to a family (the documented table in docs/methods.md).
fn applies(family: &str, kind: MethodKind) -> bool {
    !matches!((family, kind), (_, MethodKind::VptShallow | MethodKind::VptDeep) | ("convnext", MethodKind::Houlsby))
}

fn method(kind: MethodKind) -> Method {
    let mut m = Method::new(kind);
    if let Some(a) = m.adapter_options_mut() {
        a.r = 4;
    }
    if let Method::Sparse(s) = &mut m {
        s.keep_ratio = 0.2;
    }
    m
}

/// The documented freeze rule, by parameter path.
fn trains(m: &Method, path: &str) -> bool {
    let head = path == "head" || path.starts_with("head.");
    match m {
        Method::Full => true,
        Method::Linear => head,
        Method::Bitfit => head || path.ends_with(".bias") || path.ends_with(".beta"),
        Method::Adapter(_) | Method::Pfeiffer(_) | Method::Houlsby(_) | Method::Mosa(_) | Method::PrunedAdapter(_) => head || path.contains("adapter"),
        Method::Lora(_) | Method::MosaLora(_) | Method::Sparse(_) => head || path.contains(".branch."),
        Method::VptShallow(_) | Method::VptDeep(_) => unreachable!(),
    }
}

fn input<BB: Backend>(seed: u64) -> Tensor<BB, 4> {
    let mut rng = Rng::new(seed);
    let data: Vec<f32> = (0..4 * 3 * 16 * 16).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(data, [4, 3, 16, 16]), &Default::default())
}

fn host<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

/// One CE step with masked gradients; returns the model and a copy of the 2-D gradients (what
/// a sparse re-selection reads).
fn step<O: Optimizer<Backbone<AB>, AB>>(model: Backbone<AB>, optim: &mut O, rng: &mut Rng, seed: u64) -> (Backbone<AB>, GradientsParams) {
    let out = model.forward_rng(input(seed), false, rng);
    let labels = Tensor::<AB, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 1], [4]), &Default::default());
    let loss = CrossEntropyLossConfig::new().init(&Default::default()).forward(out.logits, labels);
    let grads = loss.backward();
    let mut model = model;
    let mut g = GradientsParams::from_grads(grads, &model);
    inject::mask_gradients(&mut model, &mut g);
    // a copy for the caller (the optimiser consumes the gradients)
    let mut copy = GradientsParams::new();
    for p in params::list::<AB, _>(&model) {
        if let Some(t) = g.get::<Flex, 2>(p.id) {
            copy.register::<Flex, 2>(p.id, t);
        }
    }
    (optim.step(0.05, model, g), copy)
}

#[test]
fn inapplicable_methods_are_refused_naming_the_family() {
    for cfg in families() {
        for kind in MethodKind::all().filter(|k| !applies(cfg.family(), *k)) {
            let e = inject::apply(cfg.init::<B>(&Default::default()), &method(kind), SEED, &Default::default())
                .err()
                .unwrap_or_else(|| panic!("{} accepted {}", cfg.family(), kind.name()));
            assert!(matches!(e, mosa_core::Error::Target(_)) && e.to_string().contains(cfg.family()), "{}: {e:?}", kind.name());
        }
    }
}

#[test]
fn trainability_is_the_documented_rule_and_the_frozen_backbone_stays_bit_identical() {
    for cfg in families() {
        let family = cfg.family();
        for kind in MethodKind::all().filter(|k| applies(family, *k)) {
            let mc = method(kind);
            let model = inject::apply(cfg.init::<AB>(&Default::default()), &mc, SEED, &Default::default()).unwrap();
            for p in params::list::<AB, _>(&model) {
                assert_eq!(p.trainable, trains(&mc, &p.path), "{family} {}: `{}`", kind.name(), p.path);
            }
            let before = values::<AB, _>(&model);
            let mut adam = AdamWConfig::new().with_weight_decay(0.01).init::<AB, Backbone<AB>>();
            let (model, _) = step(model, &mut adam, &mut Rng::new(4), 0);
            let after = values::<AB, _>(&model);
            let mut trained = 0;
            for (path, v) in &before {
                if trains(&mc, path) {
                    trained += usize::from(v != &after[path]);
                } else {
                    assert_eq!(v, &after[path], "{family} {}: frozen `{path}` changed", kind.name());
                }
            }
            assert!(trained > 0, "{family} {}: nothing trained", kind.name());
        }
    }
}

#[test]
fn zero_initialised_methods_leave_the_logits_unchanged() {
    for cfg in families() {
        let base = cfg.init::<B>(&Default::default());
        let x = input::<B>(3);
        let want = host(base.forward(x.clone()).logits);
        for kind in [
            MethodKind::Adapter,
            MethodKind::Pfeiffer,
            MethodKind::Houlsby,
            MethodKind::Mosa,
            MethodKind::PrunedAdapter,
            MethodKind::Lora,
            MethodKind::MosaLora,
            MethodKind::Sparse,
        ] {
            if !applies(cfg.family(), kind) {
                continue;
            }
            let tuned = inject::apply(base.clone(), &method(kind), SEED, &Default::default()).unwrap();
            assert_eq!(host(tuned.forward(x.clone()).logits), want, "{} {}", cfg.family(), kind.name());
        }
    }
}

/// Sparse deltas of every site, `(mask, delta)`.
fn sparse(m: &mut Backbone<AB>) -> Vec<(Vec<f32>, Vec<f32>)> {
    m.sites_mut()
        .into_iter()
        .filter_map(|s| match s {
            SiteMut::Linear { linear, .. } => match &linear.branch {
                Some(LinearBranch::Sparse(s)) => Some((host(s.mask.clone().inner()), host(s.delta.val().inner()))),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

#[test]
fn only_masked_sparse_entries_train() {
    for cfg in families() {
        let mc = method(MethodKind::Sparse);
        let model = inject::apply(cfg.init::<AB>(&Default::default()), &mc, SEED, &Default::default()).unwrap();
        let mut sgd = SgdConfig::new().init::<AB, Backbone<AB>>();
        let mut rng = Rng::new(8);
        // a dense step, a selection from its gradients, then a masked step
        let (model, grads) = step(model, &mut sgd, &mut rng, 0);
        let mut model = inject::reselect_sparse(model, &grads, mc.sparse().unwrap(), &mut rng).unwrap();
        let selected = sparse(&mut model);
        assert!(!selected.is_empty(), "{}: no sparse sites", cfg.family());
        for (mask, delta) in &selected {
            assert_eq!(mask.iter().filter(|&&m| m == 1.0).count(), (0.2 * mask.len() as f64) as usize);
            assert!(mask.iter().zip(delta).all(|(m, d)| *m == 1.0 || *d == 0.0));
        }
        let (mut model, _) = step(model, &mut sgd, &mut rng, 1);
        for ((mask, d0), (_, d1)) in selected.iter().zip(sparse(&mut model)) {
            let changed: Vec<usize> = (0..mask.len()).filter(|&i| d0[i] != d1[i]).collect();
            assert!(!changed.is_empty() && changed.iter().all(|&i| mask[i] == 1.0), "{}: an entry off the mask changed", cfg.family());
        }
    }
}

#[test]
fn merged_models_give_the_unmerged_logits() {
    for cfg in families() {
        for kind in [
            MethodKind::Lora,
            MethodKind::Mosa,
            MethodKind::MosaLora,
            MethodKind::Sparse,
            MethodKind::Adapter,
            MethodKind::Pfeiffer,
            MethodKind::Houlsby,
            MethodKind::PrunedAdapter,
        ] {
            if !applies(cfg.family(), kind) {
                continue;
            }
            let mc = method(kind);
            let mut model = inject::apply(cfg.init::<AB>(&Default::default()), &mc, SEED, &Default::default()).unwrap();
            let mut adam = AdamWConfig::new().init::<AB, Backbone<AB>>();
            let mut rng = Rng::new(2);
            for s in 0..3 {
                let (m, grads) = step(model, &mut adam, &mut rng, s);
                model = if kind == MethodKind::Sparse && s == 0 { inject::reselect_sparse(m, &grads, mc.sparse().unwrap(), &mut rng).unwrap() } else { m };
            }
            let model = model.valid();
            let x = input::<B>(9);
            let unmerged = model.forward(x.clone()).logits;
            let merged = inject::merged(&model);
            let folded = merged.clone().sites_mut().into_iter().all(|s| match s {
                SiteMut::Linear { linear, .. } => linear.branch.is_none(),
                SiteMut::Adapter { slot, .. } => !matches!(slot, Some(mosa_core::slot::AdapterSlot::Mosa(_))),
            });
            assert!(folded, "{} {}: merged", cfg.family(), kind.name());
            let d = (unmerged.clone() - merged.forward(x).logits).abs().max().into_scalar();
            let scale = unmerged.abs().max().into_scalar();
            assert!(d < 1e-4 * scale.max(1.0), "{} {}: merged logits differ by {d}", cfg.family(), kind.name());
        }
    }
}

/// The reference's training dropout: on in training (an autodiff backend: two passes differ),
/// off in evaluation (the inner backend: the logits of the model without it); where it sits
/// (after the position embedding and in the MLPs, attention 0), as spec §1 states it.
#[test]
fn training_dropout_is_active_in_training_only_and_where_the_reference_puts_it() {
    let vit = BackboneConfig::Vit(
        mosa_models::VitConfig::new().with_embed_dim(32).with_depth(2).with_num_heads(2).with_img_size(16).with_patch_size(4).with_num_classes(3),
    );
    for cfg in std::iter::once(vit).chain(families()) {
        let base = cfg.init::<AB>(&Default::default());
        let _ = params::list::<AB, _>(&base); // materialise lazy parameters before cloning
        let with = base.clone().with_training_dropout(0.5);
        let x = input::<AB>(5);
        let (a, b) = (with.forward_rng(x.clone(), false, &mut Rng::new(1)).logits, with.forward_rng(x, false, &mut Rng::new(1)).logits);
        assert!(host(a.inner()) != host(b.inner()), "{}: dropout is not active in training", cfg.family());
        let xe = input::<B>(5);
        assert_eq!(host(with.valid().forward(xe.clone()).logits), host(base.valid().forward(xe).logits), "{}: dropout in evaluation", cfg.family());
        match &with {
            Backbone::Vit(m) => {
                assert_eq!(m.pos_drop.prob, 0.5);
                assert!(m.blocks.iter().all(|b| b.mlp.drop.prob == 0.5 && b.attn.attn_drop.prob == 0.0 && b.attn.proj_drop.prob == 0.0));
            }
            Backbone::Swin(m) => assert!(m.layers.iter().flat_map(|s| &s.blocks).all(|b| b.mlp.drop.prob == 0.5 && b.attn.attn_drop.prob == 0.0)),
            Backbone::ConvNext(m) => assert!(m.stages.iter().flat_map(|s| &s.blocks).all(|b| b.mlp.drop.prob == 0.5)),
        }
    }
}

/// The one by-path writer leaves every method's modules out (the keys of a model with any method
/// are the plain model's), and the one by-path loader puts a state dict back bit for bit; with
/// `HeadPolicy::Skip` everything but the head is loaded.
#[test]
fn state_dicts_leave_methods_out_and_load_back_exactly() {
    let dev = Default::default();
    for cfg in families() {
        let sd = cfg.init::<B>(&dev).state_dict();
        let keys = |sd: &mosa_models::StateDict| sd.tensors.keys().cloned().collect::<Vec<_>>();
        assert!(sd.tensors.keys().any(|k| k.starts_with(cfg.head_key())), "{}: {:?}", cfg.family(), keys(&sd));
        for kind in MethodKind::all().filter(|k| applies(cfg.family(), *k)) {
            let with = inject::apply(cfg.init::<B>(&dev), &method(kind), SEED, &dev).unwrap();
            assert_eq!(keys(&with.state_dict()), keys(&sd), "{} with {}", cfg.family(), kind.name());
        }
        let back = cfg.load_state::<B>(sd.clone(), mosa_models::HeadPolicy::Load, &dev).unwrap().state_dict();
        for (k, t) in &sd.tensors {
            assert_eq!((&back.tensors[k].shape, &back.tensors[k].data), (&t.shape, &t.data), "{}: {k}", cfg.family());
        }
        let fresh = cfg.load_state::<B>(sd.clone(), mosa_models::HeadPolicy::Skip, &dev).unwrap().state_dict();
        for (k, t) in &sd.tensors {
            // (a fresh head's bias is zero, like the stored one: its weight tells)
            if !k.starts_with(cfg.head_key()) || k.ends_with(".weight") {
                assert_eq!(fresh.tensors[k].data == t.data, !k.starts_with(cfg.head_key()), "{}: {k} with a fresh head", cfg.family());
            }
        }
    }
}
