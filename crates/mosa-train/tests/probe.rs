//! The linear probe trained on features computed once ([`mosa_train::probe`]) is the same run as
//! recomputing them every epoch: metrics (losses bit for bit), summary and saved model, for each
//! family, at a batch that does not divide the training set (the last batch is smaller). Its own
//! test binary: runs seed burn's process-wide generator.

use mosa_core::MethodKind;
use mosa_models::{BackboneConfig, ConvNextConfig, SwinConfig};
use mosa_train::progress::Silent;
use mosa_train::{Control, RunSpec};

mod common;
use common::*;

fn without_timings(d: &std::path::Path) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
    for k in ["train_seconds", "eval_seconds", "train_images_per_second", "eval_images_per_second"] {
        v.as_object_mut().unwrap().remove(k);
    }
    serde_json::to_string_pretty(&v).unwrap()
}

fn both_ways(s: &RunSpec, dir: &std::path::Path) {
    let device = Default::default();
    let (a, b) = (dir.join("once"), dir.join("every-epoch"));
    finish(mosa_train::run::<AB>(s, &a, false, Control::default(), &device, &mut Silent).unwrap());
    finish(mosa_train::run::<AB>(s, &b, false, Control { recompute_probe_features: true, ..Default::default() }, &device, &mut Silent).unwrap());
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), s.train.epochs);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(
            (x.train_loss.to_bits(), x.train_acc, x.val_acc, x.test_acc, x.lr),
            (y.train_loss.to_bits(), y.train_acc, y.val_acc, y.test_acc, y.lr),
            "{}: epoch {}",
            s.model.family(),
            x.epoch
        );
    }
    assert!(ma.last().unwrap().train_loss < ma[0].train_loss, "{}: the head learns", s.model.family());
    assert_eq!(without_timings(&a), without_timings(&b));
    let (pa, _) = mosa_train::rundir::read_model(&a.join("model.safetensors")).unwrap();
    let (pb, _) = mosa_train::rundir::read_model(&b.join("model.safetensors")).unwrap();
    assert_eq!(pa, pb, "{}: final weights differ", s.model.family());
}

#[test]
fn the_probe_on_features_computed_once_is_the_same_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let mut s = spec(&ds, MethodKind::Linear, 3);
    s.train.batch_size = 7;
    s.train.lr = 0.05;
    assert!(mosa_train::probe::applies(&s, &load_train(&s)), "the shortcut is taken");
    both_ways(&s, &tmp.path().join("vit"));
    s.model = BackboneConfig::Swin(
        SwinConfig::new().with_img_size(16).with_patch_size(2).with_window_size(4).with_embed_dim(16).with_depths(vec![1, 1]).with_num_heads(vec![2, 2]),
    );
    both_ways(&s, &tmp.path().join("swin"));
    s.model = BackboneConfig::ConvNext(ConvNextConfig::new().with_depths(vec![1, 1]).with_dims(vec![8, 16]).with_patch_size(2));
    both_ways(&s, &tmp.path().join("convnext"));
}

#[test]
fn the_shortcut_is_not_taken_where_features_change_per_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let s = spec(&ds, MethodKind::Linear, 1);
    let train = load_train(&s);
    let mut dropout = s.clone();
    dropout.train.backbone_dropout = Some(0.1);
    assert!(!mosa_train::probe::applies(&dropout, &train));
    let mut drop_path = s.clone();
    drop_path.model = BackboneConfig::Vit(mosa_models::VitConfig::new().with_img_size(16).with_patch_size(4).with_drop_path_rate(0.1));
    assert!(!mosa_train::probe::applies(&drop_path, &train));
    assert!(!mosa_train::probe::applies(&spec(&ds, MethodKind::Adapter, 1), &train), "a method that trains the backbone");
    let fgvc = mosa_data::Transform::new(mosa_data::Style::Fgvc, 16, true);
    assert!(fgvc.augments() && !mosa_data::Transform::new(mosa_data::Style::Vtab, 16, true).augments());
}

fn load_train(s: &RunSpec) -> mosa_data::LoadedSplit {
    let ds = mosa_data::Dataset::open(&s.dataset.parse().unwrap()).unwrap();
    mosa_data::LoadedSplit::load(&ds.train, ds.num_classes, mosa_data::Transform::new(ds.style, 16, true), &Default::default()).unwrap().0
}
