//! The MoSA step against PyTorch autograd: `../shared/fixtures/mosa_step.*` holds three MoSA
//! training steps (two stochastic passes, CE + symmetric KL with stop-gradient, expert gradient
//! masks, HF-style AdamW) of a MoSA adapter on the frozen `vit.*` fixture, every random choice
//! saved. They are replayed through the engine's own step (`mosa_train::step::step`, fed the
//! saved expert draws) and our AdamW; every size comes from the fixture. Both pass layouts are
//! replayed (two forwards, and one forward over the stacked batch) and compared with PyTorch and
//! with each other.

use std::collections::HashMap;
use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_core::adapter::AdapterOptions;
use mosa_core::mosa::{MosaOptions, Share};
use mosa_core::site::{PeftHost, SiteMut};
use mosa_core::slot::AdapterSlot;
use mosa_core::{HostTensor, Method, Rng, inject, params};
use mosa_models::{Backbone, HeadPolicy};
use mosa_testkit::fixtures;
use mosa_train::TrainConfig;
use mosa_train::optim::{AdamW, AdamWConfig};
use mosa_train::step::PassLayout;
use serde_json::Value;

type B = Flex;
type AB = Autodiff<Flex>;

/// Every tensor of the fixture as f32 (the integer draws and labels too), with its shape.
fn read_fixture(path: &Path) -> HashMap<String, HostTensor> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let b = v.data();
            let data: Vec<f32> = match v.dtype() {
                safetensors::Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
                safetensors::Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
                d => panic!("{name}: dtype {d:?}"),
            };
            (name, HostTensor::new(v.shape().to_vec(), data))
        })
        .collect()
}

fn tensor<BB: Backend, const D: usize>(t: &HostTensor) -> Tensor<BB, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), &Default::default())
}

/// `[.., a, b]` → `[.., b, a]` (PyTorch's `[out, in]` ↔ burn's `[in, out]`, per expert).
fn swap_last(t: &HostTensor) -> HostTensor {
    let n = t.shape.len();
    let (a, b) = (t.shape[n - 2], t.shape[n - 1]);
    let outer: usize = t.shape[..n - 2].iter().product();
    let mut data = vec![0.0; t.data.len()];
    for o in 0..outer {
        for i in 0..a {
            for j in 0..b {
                data[o * a * b + j * a + i] = t.data[o * a * b + i * b + j];
            }
        }
    }
    let mut shape = t.shape.clone();
    shape.swap(n - 2, n - 1);
    HostTensor::new(shape, data)
}

/// Our parameter path and layout of a fixture tensor name (`blocks.B.adapter.{norm,down,up}.*`,
/// `head.*`): the PyTorch layout turned into ours.
fn ours(name: &str, t: &HostTensor) -> (String, HostTensor) {
    // the slot's variant is part of our path: `blocks.B.adapter.Mosa.…`
    let name = &name.replace(".adapter.", ".adapter.Mosa.");
    let (module, field) = name.rsplit_once('.').unwrap();
    match (module.rsplit('.').next().unwrap(), field) {
        ("norm", "weight") => (format!("{module}.gamma"), t.clone()),
        ("norm", "bias") => (format!("{module}.beta"), t.clone()),
        // the shared Down is one expert: [r, d] → [1, d, r]
        ("down", "weight") => (name.clone(), {
            let s = swap_last(t);
            HostTensor::new([vec![1], s.shape.clone()].concat(), s.data)
        }),
        ("down", "bias") => (name.clone(), HostTensor::new([vec![1], t.shape.clone()].concat(), t.data.clone())),
        ("up", "weight") | ("head", "weight") => (name.clone(), swap_last(t)),
        _ => (name.clone(), t.clone()),
    }
}

fn max_diff(a: &HostTensor, b: &HostTensor) -> f32 {
    assert_eq!(a.shape, b.shape);
    mosa_testkit::max_abs_diff(&a.data, &b.data)
}

/// What a replay of the fixture's steps leaves: each step's loss and (masked) gradients by
/// parameter path, and the trainables after the last step.
struct Replay {
    losses: Vec<f32>,
    grads: Vec<HashMap<String, HostTensor>>,
    finals: HashMap<String, HostTensor>,
}

#[test]
fn mosa_step_parity() {
    let separate = replay(PassLayout::Separate);
    let stacked = replay(PassLayout::Stacked);
    // one forward over [x; x] computes the step two forwards compute: losses, every step's
    // gradients and the parameters after the steps, within 1e-5
    for (s, (a, b)) in separate.losses.iter().zip(&stacked.losses).enumerate() {
        assert!((a - b).abs() <= 1e-5, "step {s}: loss {a} (two forwards) vs {b} (stacked)");
    }
    for (s, (ga, gb)) in separate.grads.iter().zip(&stacked.grads).enumerate() {
        assert_eq!(ga.len(), gb.len());
        for (k, g) in ga {
            let d = max_diff(g, &gb[k]);
            assert!(d <= 1e-5, "step {s}: gradient of `{k}` differs between the layouts by {d}");
        }
    }
    assert!(!separate.finals.is_empty());
    for (k, v) in &separate.finals {
        let d = max_diff(v, &stacked.finals[k]);
        assert!(d <= 1e-5, "after the steps `{k}` differs between the layouts by {d}");
    }
}

/// The fixture's steps replayed with `layout`, each checked against PyTorch.
fn replay(layout: PassLayout) -> Replay {
    let f = fixtures();
    let spec: Value = serde_json::from_str(&std::fs::read_to_string(f.join("mosa_step.json")).unwrap()).unwrap();
    let fx = read_fixture(&f.join("mosa_step.safetensors"));
    let m = &spec["mosa"];
    let st = &spec["step"];
    let num = |v: &Value| v.as_f64().unwrap();
    assert_eq!(m["share"], "down", "the replay maps a shared Down");

    // the backbone and the method, every size from the fixture
    let cfg = mosa_models::presets::config_from_json_file(&f.join(spec["backbone"]["config"].as_str().unwrap())).unwrap();
    let model: Backbone<AB> = cfg.load(&f.join(spec["backbone"]["weights"].as_str().unwrap()), HeadPolicy::Load, &Default::default()).unwrap();
    let adapter = AdapterOptions::new()
        .with_r(num(&m["r"]) as usize)
        .with_scale(num(&m["scale"]))
        .with_dropout(num(&m["adapter_dropout"]))
        .with_norm_eps(num(&m["adapter_norm_eps"]));
    let method = Method::Mosa(MosaOptions::new().with_adapter(adapter).with_experts(num(&m["experts"]) as usize).with_share(Share::Down));
    let mut model = inject::apply(model, &method, 0, &Default::default()).unwrap();

    // the fixture's initial trainables and masks replace ours
    let init: HashMap<String, HostTensor> = fx.iter().filter_map(|(k, t)| k.strip_prefix("init.").map(|k| ours(k, t))).collect();
    let listed: Vec<String> = params::list::<AB, _>(&model).into_iter().filter(|p| p.trainable).map(|p| p.path).collect();
    let mut want_paths: Vec<String> = init.keys().cloned().collect();
    let mut got_paths = listed.clone();
    want_paths.sort();
    got_paths.sort();
    assert_eq!(got_paths, want_paths, "the trainables are the fixture's");
    model = params::load_by_path(model, &init).unwrap();
    for (block, s) in model
        .sites_mut()
        .into_iter()
        .filter_map(|s| match s {
            SiteMut::Adapter { site, slot: Some(AdapterSlot::Mosa(a)) } => Some((site.block, a)),
            _ => None,
        })
        .enumerate()
        .map(|(i, (b, a))| {
            assert_eq!(i, b);
            (b, a)
        })
    {
        s.up.mask = Some(tensor(&swap_last(&fx[&format!("mask.blocks.{block}.adapter.up")])));
    }

    let t = TrainConfig { kl_weight: num(&st["kl_weight"]), deepreg: false, ..TrainConfig::default() };
    let betas = st["betas"].as_array().unwrap();
    let mut optim =
        AdamW::<AB>::new(AdamWConfig { beta1: num(&betas[0]), beta2: num(&betas[1]), eps: num(&st["eps"]), weight_decay: num(&st["weight_decay"]) });
    let draws: Vec<usize> = fx["draws"].data.iter().map(|d| *d as usize).collect();
    let mut experts = Rng::scripted(draws);
    let (x, y) = (&fx["x"], &fx["y"]);
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(y.data.iter().map(|v| *v as i64).collect::<Vec<_>>(), [y.data.len()]), &Default::default());
    let steps = num(&st["steps"]) as usize;
    let (mut losses, mut grads) = (Vec::new(), Vec::new());
    for s in 0..steps {
        let (m2, out) = mosa_train::step::step(model, tensor(x), y.clone(), &method, &t, (0, s, steps), layout, &mut experts, &mut Rng::new(0)).unwrap();
        let loss = out.loss.into_scalar();
        let want = fx["loss"].data[s];
        assert!((loss - want).abs() <= 1e-5, "{layout:?}, step {s}: loss {loss}, PyTorch {want}");
        losses.push(loss);
        let mut step_grads = HashMap::new();
        for p in params::list::<AB, _>(&m2).into_iter().filter(|p| p.trainable) {
            let rank = init[&p.path].shape.len();
            let got = match rank {
                1 => HostTensor::from_tensor(out.grads.get::<B, 1>(p.id).unwrap()),
                2 => HostTensor::from_tensor(out.grads.get::<B, 2>(p.id).unwrap()),
                _ => HostTensor::from_tensor(out.grads.get::<B, 3>(p.id).unwrap()),
            };
            if s == 0 {
                // the first step's masked gradients against PyTorch's, tensor by tensor
                let name = fx.keys().filter_map(|k| k.strip_prefix("grad1.")).find(|k| ours(k, &fx[&format!("grad1.{k}")]).0 == p.path).unwrap().to_string();
                let want = ours(&name, &fx[&format!("grad1.{name}")]).1;
                let d = max_diff(&got, &want);
                assert!(d <= 1e-5, "{layout:?}, step 0: gradient of `{}` differs by {d}", p.path);
            }
            step_grads.insert(p.path, got);
        }
        grads.push(step_grads);
        model = optim.step(num(&st["lr"]), m2, out.grads);
    }
    // one draw per block and pass, two passes a step: the whole script, in order
    assert_eq!(experts.scripted_left(), Some(0), "every saved draw was used");
    // every trainable after the steps
    let values: HashMap<String, HostTensor> = params::export_trainable(&model).into_iter().collect();
    for (k, t) in fx.iter().filter_map(|(k, t)| k.strip_prefix("final.").map(|k| ours(k, t))) {
        let d = max_diff(&values[&k], &t);
        assert!(d <= 1e-5, "{layout:?}: after {steps} steps `{k}` differs from PyTorch by {d}");
    }
    // the expert invariant over the AdamW steps: an Up expert's entries outside its mask get no
    // update from Adam (masked gradients, zero moments), only the decoupled decay:
    // w = w0 · (1 − lr·wd)^steps
    let decay = (1.0 - num(&st["lr"]) * num(&st["weight_decay"])).powi(steps as i32);
    for (k, mask) in fx.iter().filter_map(|(k, t)| k.strip_prefix("mask.").map(|k| (k, t))) {
        let path = format!("{}.weight", k.replace(".adapter.", ".adapter.Mosa."));
        let (up, up0, mask) = (&values[&path], &init[&path], swap_last(mask));
        let off: Vec<(f32, f32)> = up.data.iter().zip(&up0.data).zip(&mask.data).filter(|(_, m)| **m == 0.0).map(|((w, w0), _)| (*w, *w0)).collect();
        assert!(!off.is_empty());
        for (w, w0) in off {
            assert!(
                (w as f64 - w0 as f64 * decay).abs() <= 1e-7 * (1.0 + w0.abs() as f64),
                "{k}: an entry outside its expert's mask moved beyond the decay: {w0} → {w}"
            );
        }
    }
    // the merged model's logits (mean of the experts)
    let merged = inject::merged(&model.valid());
    let logits = HostTensor::from_tensor(merged.forward(tensor::<B, 4>(x)).logits);
    let d = max_diff(&logits, &fx["eval_logits"]);
    assert!(d <= 1e-5, "merged logits differ from PyTorch by {d}");
    Replay { losses, grads, finals: values }
}

/// A tiny ViT with a MoSA adapter (N 4, r 4, no dropout) whose Up experts are random (std 1),
/// so that different expert draws give different logits: the KL between two passes was 1.3e-3 to
/// 3.7e-2 over 60 unseeded runs (at std 0.5 it fell below 1e-3 in 1 run of 40).
fn wired_model() -> (Backbone<AB>, Method) {
    use burn::tensor::Distribution;
    let cfg = mosa_models::BackboneConfig::Vit(
        mosa_models::VitConfig::new().with_embed_dim(32).with_depth(2).with_num_heads(2).with_img_size(16).with_patch_size(4).with_num_classes(5),
    );
    let adapter = AdapterOptions::new().with_r(4).with_dropout(0.0);
    let method = Method::Mosa(MosaOptions::new().with_adapter(adapter).with_experts(4).with_share(Share::Down));
    let mut model = inject::apply(cfg.init::<AB>(&Default::default()), &method, 7, &Default::default()).unwrap();
    let _ = params::list::<AB, _>(&model); // initialise every lazy parameter once
    for s in model.sites_mut() {
        if let SiteMut::Adapter { slot: Some(AdapterSlot::Mosa(a)), .. } = s {
            let shape = a.up.weight.shape();
            a.up.weight = burn::module::Param::from_tensor(Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default()));
        }
    }
    (model, method)
}

/// The MoSA loss written out here: CE on pass 1 + w · ½[KL(p2‖p1) + KL(p1‖p2)], with the target
/// side of each KL detached when `detach`.
fn loss_by_hand(z1: Tensor<AB, 2>, z2: Tensor<AB, 2>, y: Tensor<AB, 1, Int>, w: f64, detach: bool) -> Tensor<AB, 1> {
    use burn::tensor::activation::{log_softmax, softmax};
    let b = z1.dims()[0] as f64;
    let ce = log_softmax(z1.clone(), 1).gather(1, y.reshape([-1, 1])).mean().neg();
    let kl = |input: Tensor<AB, 2>, target: Tensor<AB, 2>| {
        let t = if detach { target.detach() } else { target };
        (softmax(t.clone(), 1) * (log_softmax(t, 1) - log_softmax(input, 1))).sum().div_scalar(b)
    };
    ce + (kl(z1.clone(), z2.clone()) + kl(z2, z1)).mul_scalar(0.5 * w)
}

#[test]
fn the_engine_step_adds_the_kl_draws_each_pass_anew_and_detaches_the_target() {
    for layout in [PassLayout::Separate, PassLayout::Stacked] {
        engine_step_checks(layout);
    }
}

fn engine_step_checks(layout: PassLayout) {
    use burn::optim::GradientsParams;
    use burn::tensor::Distribution;
    let (model, method) = wired_model();
    let blocks = 2;
    let x: Tensor<AB, 4> = Tensor::random([6, 3, 16, 16], Distribution::Normal(0.0, 1.0), &Default::default());
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 0], [6]), &Default::default());
    // pass 1 draws experts (0, 1), pass 2 (3, 2): one draw per block and pass
    let (p1, p2) = (vec![0usize, 1], vec![3usize, 2]);
    let t = TrainConfig { kl_weight: 1.0, deepreg: false, ..TrainConfig::default() };
    let step = |model: Backbone<AB>, t: &TrainConfig, draws: Vec<usize>| {
        let mut rng = Rng::scripted(draws);
        let (m, out) = mosa_train::step::step(model, x.clone(), y.clone(), &method, t, (0, 0, 1), layout, &mut rng, &mut Rng::new(0)).unwrap();
        (m, out, rng.scripted_left())
    };
    let (_, out, left) = step(model.clone(), &t, [p1.clone(), p2.clone()].concat());
    assert_eq!(left, Some(0), "two passes draw {} experts in all", 2 * blocks);
    // the same loss and masked gradients by hand, each pass with its own draws
    let forward = |draws: &[usize]| model.forward_rng(x.clone(), false, &mut Rng::scripted(draws.to_vec())).logits;
    let (z1, z2) = (forward(&p1), forward(&p2));
    let grads_of = |loss: Tensor<AB, 1>| {
        let mut g = GradientsParams::from_grads(loss.backward(), &model);
        let mut m = model.clone();
        inject::mask_gradients(&mut m, &mut g);
        g
    };
    let want = loss_by_hand(z1.clone(), z2.clone(), y.clone(), 1.0, true);
    let ce_only = loss_by_hand(z1.clone(), z2.clone(), y.clone(), 0.0, true).into_scalar();
    let got = out.loss.clone().into_scalar();
    assert!((got - want.clone().into_scalar()).abs() < 1e-5, "loss {got} vs CE + KL by hand {}", want.clone().into_scalar());
    assert!(got - ce_only > 1e-4, "the KL term is in the loss ({got} vs CE {ce_only}), beyond 10× the tolerance above");
    let trainable: Vec<_> = params::list::<AB, _>(&model).into_iter().filter(|p| p.trainable).collect();
    let diff = |a: &GradientsParams, b: &GradientsParams| {
        trainable
            .iter()
            .map(|p| {
                let v = |g: &GradientsParams| -> Vec<f32> {
                    for d in 1..=3 {
                        let t = match d {
                            1 => g.get::<B, 1>(p.id).map(|t| t.into_data().to_vec::<f32>().unwrap()),
                            2 => g.get::<B, 2>(p.id).map(|t| t.into_data().to_vec::<f32>().unwrap()),
                            _ => g.get::<B, 3>(p.id).map(|t| t.into_data().to_vec::<f32>().unwrap()),
                        };
                        if let Some(t) = t {
                            return t;
                        }
                    }
                    vec![]
                };
                v(a).iter().zip(v(b)).map(|(x, y)| (x - y).abs()).fold(0.0f32, mosa_testkit::max_nan)
            })
            .fold(0.0f32, mosa_testkit::max_nan)
    };
    let detached = grads_of(want);
    assert!(diff(&out.grads, &detached) < 1e-5, "the step's gradients are those of the detached loss");
    let attached = grads_of(loss_by_hand(forward(&p1), forward(&p2), y.clone(), 1.0, false));
    assert!(diff(&detached, &attached) > 1e-4, "without stop-gradient the gradients differ (so the check above can tell)");
    // had both passes used pass 1's draws, the KL would vanish: the second pass draws anew
    let (_, same, _) = step(model.clone(), &t, [p1.clone(), p1.clone()].concat());
    assert!((same.loss.into_scalar() - ce_only).abs() < 1e-5, "equal draws give CE alone");
    // without the consistency term the step makes one pass (one draw per block) and CE alone
    let t0 = TrainConfig { kl_weight: 0.0, ..t.clone() };
    let (_, one, left) = step(model.clone(), &t0, [p1.clone(), p2.clone()].concat());
    assert_eq!(left, Some(blocks), "one pass");
    assert!((one.loss.into_scalar() - ce_only).abs() < 1e-5);
}

/// Every trainable's gradient in `g`, by path.
fn grad_values(model: &Backbone<AB>, g: &burn::optim::GradientsParams) -> HashMap<String, Vec<f32>> {
    params::list::<AB, _>(model)
        .into_iter()
        .filter(|p| p.trainable)
        .map(|p| {
            let v = g
                .get::<B, 1>(p.id)
                .map(|t| t.into_data())
                .or_else(|| g.get::<B, 2>(p.id).map(|t| t.into_data()))
                .or_else(|| g.get::<B, 3>(p.id).map(|t| t.into_data()))
                .unwrap_or_else(|| panic!("no gradient for `{}`", p.path));
            (p.path, v.to_vec::<f32>().unwrap())
        })
        .collect()
}

/// One forward over the stacked batch gives the step of two forwards for every expert split the
/// fixture above does not cover: MoSA with Down and Up both split (the halves' Down experts too)
/// and DEEPREG on (hidden states split by half), and MoSA-LoRA on its default targets, on a tiny
/// model of each family. Every expert tensor is random, so that each draw changes the outputs.
#[test]
fn stacked_passes_equal_separate_ones_for_every_split() {
    use burn::module::Param;
    use burn::tensor::Distribution;
    use mosa_core::lora::MosaLoraOptions;
    use mosa_core::slot::LinearBranch;
    use mosa_models::{BackboneConfig, ConvNextConfig, SwinConfig, VitConfig};
    let device = Default::default();
    // one tiny model per family (Swin: shifted windows in stage 0, one window in stage 1;
    // ConvNeXt's layer scale at 0.5, not 1e-6, so that its branches show in the logits)
    let families = [
        BackboneConfig::Vit(VitConfig::new().with_embed_dim(32).with_depth(2).with_num_heads(2).with_img_size(16).with_patch_size(4).with_num_classes(5)),
        BackboneConfig::Swin(
            SwinConfig::new()
                .with_img_size(16)
                .with_patch_size(2)
                .with_embed_dim(16)
                .with_depths(vec![2, 2])
                .with_num_heads(vec![2, 4])
                .with_window_size(4)
                .with_num_classes(5),
        ),
        BackboneConfig::ConvNext(
            ConvNextConfig::new().with_img_size(16).with_depths(vec![1, 2]).with_dims(vec![8, 16]).with_num_classes(5).with_ls_init_value(Some(0.5)),
        ),
    ];
    let adapter = AdapterOptions::new().with_r(4).with_dropout(0.0);
    let methods = [
        Method::Mosa(MosaOptions::new().with_adapter(adapter).with_experts(4).with_share(Share::None)),
        Method::MosaLora(MosaLoraOptions::new().with_experts(4)),
    ];
    let x: Tensor<AB, 4> = Tensor::random([6, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
    let y = Tensor::<AB, 1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 4, 0], [6]), &device);
    for (cfg, method) in families.iter().flat_map(|c| methods.iter().map(move |m| (c, m))) {
        let mut model = inject::apply(cfg.init::<AB>(&device), method, 7, &device).unwrap();
        let _ = params::list::<AB, _>(&model); // initialise every lazy parameter once
        let random = |w: &Param<Tensor<AB, 3>>| Param::from_tensor(Tensor::random(w.shape(), Distribution::Normal(0.0, 1.0), &device));
        let mut split = 0;
        for s in model.sites_mut() {
            if let SiteMut::Adapter { slot: Some(AdapterSlot::Mosa(a)), .. } = s {
                (a.down.weight, a.up.weight) = (random(&a.down.weight), random(&a.up.weight));
                split += 1;
            } else if let SiteMut::Linear { linear, .. } = s
                && let Some(LinearBranch::MosaLora(l)) = &mut linear.branch
            {
                (l.a.weight, l.b.weight) = (random(&l.a.weight), random(&l.b.weight));
                split += 1;
            }
        }
        assert!(split >= 2, "{} on {}: the method put its experts in the model", method.name(), cfg.family());
        let t = TrainConfig { kl_weight: 1.0, deepreg: true, ..TrainConfig::default() };
        let run = |t: &TrainConfig, layout: PassLayout| {
            let mut rng = Rng::new(5);
            let (_, out) = mosa_train::step::step(model.clone(), x.clone(), y.clone(), method, t, (0, 0, 1), layout, &mut rng, &mut Rng::new(0)).unwrap();
            (out.loss.into_scalar(), grad_values(&model, &out.grads), rng)
        };
        let (loss_a, grads_a, rng_a) = run(&t, PassLayout::Separate);
        let (loss_b, grads_b, rng_b) = run(&t, PassLayout::Stacked);
        let name = format!("{} on {}", method.name(), cfg.family());
        assert_eq!(rng_a, rng_b, "{name}: the expert stream continues from the same point");
        assert!((loss_a - loss_b).abs() <= 1e-5, "{name}: loss {loss_a} (two forwards) vs {loss_b} (stacked)");
        let (ce, _, _) = run(&TrainConfig { kl_weight: 0.0, deepreg: false, ..t.clone() }, PassLayout::Stacked);
        assert!(loss_a - ce > 1e-4, "{name}: the passes drew different experts (consistency terms {}), so the halves can be told apart", loss_a - ce);
        assert_eq!(grads_a.len(), grads_b.len());
        // within 1e-5 of the tensor's largest entry (at least 1): the random experts make some
        // gradients large, and the frozen products over 2B rows may sum in another order
        for (k, g) in &grads_a {
            let e = mosa_testkit::scaled_worst(&grads_b[k], g);
            assert!(e <= 1e-5, "{name}: gradient of `{k}` differs between the layouts by {e} of its largest entry (at least 1)");
        }
    }
}
