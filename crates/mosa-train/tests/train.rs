//! End-to-end runs of the engine on a tiny random ViT and a generated dataset.

use mosa_core::MethodKind;
use mosa_train::progress::Silent;
use mosa_train::{Control, Error};

mod common;
use common::*;

#[test]
fn every_method_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    for method in MethodKind::all() {
        let name = method.name();
        let out = tmp.path().join(name);
        let mut s = spec(&ds, method, 3);
        if method == MethodKind::Full {
            s.train.lr = 0.001;
        }
        let summary = finish(mosa_train::run::<AB>(&s, &out, false, Control::default(), &device, &mut Silent).unwrap());
        let m = metrics(&out);
        assert_eq!(m.len(), 3);
        assert!(m[2].train_loss < m[0].train_loss, "{name}: loss {:?}", m.iter().map(|e| e.train_loss).collect::<Vec<_>>());
        assert!(summary.trainable_params > 0);
        for f in ["config.json", "metrics.csv", "summary.json", "checkpoint.safetensors", "model.safetensors"] {
            assert!(out.join(f).exists(), "{name}: {f}");
        }
        // the saved model holds only what trains (no frozen backbone tensor)
        let (saved, meta) = mosa_train::rundir::read_model(&out.join("model.safetensors")).unwrap();
        let n: usize = saved.iter().filter(|(k, _)| !k.starts_with("sparse_mask/")).map(|(_, t)| t.data.len()).sum();
        assert_eq!(n, summary.trainable_params, "{name}");
        if method == MethodKind::Sparse {
            // masks are saved under the path of their delta, and hold keep-ratio of the entries
            let masks: Vec<_> = saved.iter().filter(|(k, _)| k.starts_with("sparse_mask/")).collect();
            assert!(!masks.is_empty());
            for (k, t) in masks {
                let m = &t.data;
                let delta = saved.get(&k["sparse_mask/".len()..]).unwrap_or_else(|| panic!("{k} has no delta"));
                let kept = m.iter().filter(|&&v| v == 1.0).count();
                assert_eq!(kept, (0.05 * m.len() as f64).floor() as usize, "{k}");
                // off the mask the delta stays exactly zero (gradients and moments masked)
                assert!(delta.data.iter().zip(m).all(|(d, mm)| *mm == 1.0 || *d == 0.0), "{k}");
            }
        }
        assert!(meta.contains_key("mosa.backbone"));
    }
}

#[test]
fn nan_loss_stops_with_epoch_and_step() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    let mut s = spec(&ds, MethodKind::Adapter, 2);
    // a finite lr so large that the first update overflows (a NaN lr is refused up front)
    s.train.lr = 1e38;
    s.train.sync_every = 1;
    let out = tmp.path().join("nan");
    let e = mosa_train::run::<AB>(&s, &out, false, Control::default(), &device, &mut Silent).err().unwrap();
    assert!(matches!(e, Error::NonFinite { epoch: 1, step: 2, .. }), "{e}");
    assert!(e.to_string().contains("epoch 1, step 2"));
    assert!(!out.join("checkpoint.safetensors").exists() && !out.join("summary.json").exists());
    // leftovers are only whole files
    for f in std::fs::read_dir(&out).unwrap() {
        let name = f.unwrap().file_name().into_string().unwrap();
        assert!(name == "config.json" || name == ".lock", "unexpected {name}");
    }
}

#[test]
fn sparse_masks_are_selected_at_the_base_lr_even_under_a_warm_up_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    let mut s = spec(&ds, MethodKind::Sparse, 2);
    s.train.warmup_epochs = 1; // the recipe's epoch 0 is at lr 0
    finish(mosa_train::run::<AB>(&s, &tmp.path().join("base"), false, Control::default(), &device, &mut Silent).unwrap());
    // on the recipe's schedule ΔW never moves before the selection, and that is an error, not a random mask
    if let mosa_core::Method::Sparse(sp) = &mut s.method {
        sp.selection_lr = mosa_core::sparse::SelectionLr::Schedule;
    }
    let e = mosa_train::run::<AB>(&s, &tmp.path().join("schedule"), false, Control::default(), &device, &mut Silent).err().unwrap();
    assert!(e.to_string().contains("score of `blocks.0.attn.qkv.weight` is 0"), "{e}");
}

/// The reference head init (kaiming-normal with fan-out = classes, gain √2; bias −ln 99) by its
/// statistics over 64 × 50 draws, and the zero init exactly.
#[test]
fn head_inits_have_the_reference_statistics() {
    let mut s = common::spec("vtab:unused/kitti", MethodKind::Linear, 1);
    s.train.head_init = mosa_train::HeadInit::Reference;
    s.model = mosa_models::VitConfig::new().with_embed_dim(64).with_depth(1).with_num_heads(2).with_img_size(16).with_patch_size(4).into();
    let mut m = mosa_train::model::build_model::<common::AB>(&s, 50, &Default::default()).unwrap();
    let head = mosa_core::PeftHost::head_mut(&mut m).unwrap();
    let w = head.weight.val().into_data().to_vec::<f32>().unwrap();
    let b = head.bias.as_ref().unwrap().val().into_data().to_vec::<f32>().unwrap();
    let n = w.len() as f64;
    let mean = w.iter().map(|&x| x as f64).sum::<f64>() / n;
    let std = (w.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    let want = (2.0f64 / 50.0).sqrt();
    // 3200 draws: the sample mean is within 4 standard errors, the std within 5%
    assert!(mean.abs() < 4.0 * want / n.sqrt(), "mean {mean}");
    assert!((std / want - 1.0).abs() < 0.05, "std {std} vs {want}");
    assert!(b.iter().all(|&x| (x as f64 + 99f64.ln()).abs() < 1e-6), "bias −ln 99");
    s.train.head_init = mosa_train::HeadInit::Zero;
    let mut m = mosa_train::model::build_model::<common::AB>(&s, 50, &Default::default()).unwrap();
    let head = mosa_core::PeftHost::head_mut(&mut m).unwrap();
    assert!(head.weight.val().into_data().to_vec::<f32>().unwrap().iter().all(|&x| x == 0.0));
}
