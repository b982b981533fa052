//! `--resume` finishes exactly like an uninterrupted run. Its own test binary: burn's backend
//! random generator (dropout) is process-wide, so no other test may draw from it meanwhile.

use burn::backend::Flex;
use mosa_core::MethodKind;
use mosa_train::progress::Silent;
use mosa_train::{Control, Outcome};

mod common;
use common::*;

#[test]
fn resume_equals_uninterrupted() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    let mut s = spec(&ds, MethodKind::Mosa, 4);
    s.train.warmup_epochs = 1;
    let a = tmp.path().join("a");
    let full = finish(mosa_train::run::<AB>(&s, &a, false, Control::default(), &device, &mut Silent).unwrap());

    let b = tmp.path().join("b");
    let o = mosa_train::run::<AB>(&s, &b, false, Control { stop_after_epochs: Some(2) }, &device, &mut Silent).unwrap();
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
    let (pa, _) = mosa_train::checkpoint::read_model(&a.join("model.safetensors")).unwrap();
    let (pb, _) = mosa_train::checkpoint::read_model(&b.join("model.safetensors")).unwrap();
    assert_eq!(pa, pb, "final weights differ");

    // the saved run evaluates to the logged last-epoch test accuracy
    let (_, model, _) = mosa_train::engine::load_run::<Flex>(&a, &device).unwrap();
    let ds = mosa_data::Dataset::open(&s.dataset.parse().unwrap()).unwrap();
    let t = mosa_data::Transform::new(ds.style, 16, false);
    let (test, _) = mosa_data::LoadedSplit::load(ds.test.as_ref().unwrap(), 4, t, &Default::default()).unwrap();
    let (acc, _) = mosa_train::evaluate::evaluate(&model, &test, 7, None, &device);
    assert_eq!(Some(acc), full.last_test);
}

