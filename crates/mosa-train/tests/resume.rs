//! `--resume` finishes exactly like an uninterrupted run. Its own test binary: burn's backend
//! random generator (dropout) is process-wide, so no other test may draw from it meanwhile.

use burn::backend::Flex;
use mosa_core::MethodKind;
use mosa_train::progress::Silent;
use mosa_train::{Control, Outcome};

mod common;
use common::*;

#[test]
fn json_floats_round_trip_exactly() {
    // what a checkpoint's metrics go through on resume: f64 → JSON text → f64
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut off = 0;
    for _ in 0..20_000 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let x = (state >> 11) as f64 / (1u64 << 53) as f64; // an accuracy-like value in [0, 1)
        let back: f64 = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
        off += (back.to_bits() != x.to_bits()) as usize;
    }
    assert_eq!(off, 0, "{off} of 20000 values changed in a JSON round trip");
}

#[test]
fn resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    let mut s = spec(&ds, MethodKind::Mosa, 4);
    s.train.warmup_epochs = 1;
    let a = tmp.path().join("a");
    let full = finish(mosa_train::run::<AB>(&s, &a, false, Control::default(), &device, &mut Silent).unwrap());
    // the recipe left the layout open; the run records the one it trained with (and resumes with it)
    assert_eq!(s.train.passes, None);
    let saved = mosa_train::RunDir::new(&a).read_config().unwrap();
    assert_eq!(saved.run.train.passes, Some(mosa_train::step::PassLayout::Stacked), "a new MoSA run records its pass layout");

    let b = tmp.path().join("b");
    let o = mosa_train::run::<AB>(&s, &b, false, Control { stop_after_epochs: Some(2), ..Default::default() }, &device, &mut Silent).unwrap();
    assert!(matches!(o, Outcome::Interrupted { epochs_done: 2 }));
    assert!(!b.join("summary.json").exists() && !b.join("model.safetensors").exists());
    assert_eq!(metrics(&b).len(), 2);
    // starting again without --resume is refused; with other settings too
    assert!(mosa_train::run::<AB>(&s, &b, false, Control::default(), &device, &mut Silent).is_err());
    let mut other = s.clone();
    other.train.lr = 0.02;
    let e = mosa_train::run::<AB>(&other, &b, true, Control::default(), &device, &mut Silent).err().unwrap().to_string();
    assert!(e.contains("other settings"), "{e}");
    let resumed = finish(mosa_train::run::<AB>(&s, &b, true, Control::default(), &device, &mut Silent).unwrap());

    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), mb.len());
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!((x.epoch, x.train_acc, x.val_acc, x.test_acc, x.lr), (y.epoch, y.train_acc, y.val_acc, y.test_acc, y.lr));
        assert!((x.train_loss - y.train_loss).abs() <= 1e-6 * x.train_loss.abs().max(1.0), "epoch {}: {} vs {}", x.epoch, x.train_loss, y.train_loss);
    }
    assert_eq!((full.test_at_best_val, full.best_test, full.last_test), (resumed.test_at_best_val, resumed.best_test, resumed.last_test));
    // summary.json is the same file but for the wall-clock fields (issue #11 case 8: restored
    // accuracies used to come back one unit in the last place off)
    let without_timings = |d: &std::path::Path| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("summary.json")).unwrap()).unwrap();
        for k in ["train_seconds", "eval_seconds", "train_images_per_second", "eval_images_per_second"] {
            v.as_object_mut().unwrap().remove(k);
        }
        serde_json::to_string_pretty(&v).unwrap()
    };
    assert_eq!(without_timings(&a), without_timings(&b));
    let (pa, _) = mosa_train::rundir::read_model(&a.join("model.safetensors")).unwrap();
    let (pb, _) = mosa_train::rundir::read_model(&b.join("model.safetensors")).unwrap();
    assert_eq!(pa, pb, "final weights differ");

    // the saved run evaluates to the logged last-epoch test accuracy
    let (_, model, _) = mosa_train::rundir::load_run::<Flex>(&a, &device).unwrap();
    let ds = mosa_data::Dataset::open(&s.dataset.parse().unwrap()).unwrap();
    let t = mosa_data::Transform::new(ds.style, 16, false);
    let (test, _) = mosa_data::LoadedSplit::load(ds.test.as_ref().unwrap(), 4, t, &Default::default()).unwrap();
    let (acc, _) = mosa_train::evaluate::evaluate(&model, &test, 7, None, &device);
    assert_eq!(Some(acc), full.last_test);
}
