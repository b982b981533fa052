//! `--eval-every`: two runs compared bit for bit, so in a binary of its own: burn's backend random
//! generator (the adapter's dropout) is process-wide, so no other test may draw from it meanwhile.

use mosa_core::MethodKind;
use mosa_train::Control;
use mosa_train::progress::Silent;

mod common;
use common::*;

#[test]
fn eval_every_skips_the_epochs_between_and_leaves_training_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = dataset(tmp.path());
    let device = Default::default();
    let every = spec(&ds, MethodKind::Adapter, 5);
    let mut sparse = every.clone();
    sparse.train.eval_every = Some(2);
    let (a, b) = (tmp.path().join("every"), tmp.path().join("every2"));
    finish(mosa_train::run::<AB>(&every, &a, false, Control::default(), &device, &mut Silent).unwrap());
    let s = finish(mosa_train::run::<AB>(&sparse, &b, false, Control::default(), &device, &mut Silent).unwrap());
    let (ma, mb) = (metrics(&a), metrics(&b));
    // evaluated after epochs 2, 4 and the last (5) only, with the accuracies of the every-epoch run
    let evaluated: Vec<usize> = mb.iter().filter(|e| e.test_acc.is_some()).map(|e| e.epoch).collect();
    assert_eq!(evaluated, [2, 4, 5]);
    for (x, y) in ma.iter().zip(&mb) {
        assert_eq!(x.train_loss, y.train_loss, "epoch {}: evaluation changed training", x.epoch);
        if y.test_acc.is_some() {
            assert_eq!((x.val_acc, x.test_acc), (y.val_acc, y.test_acc), "epoch {}", x.epoch);
        } else {
            assert!(y.val_acc.is_none() && y.eval_seconds == 0.0);
        }
    }
    // the best validation epoch is one of the evaluated ones
    assert!(s.best_val_epoch.is_some_and(|e| evaluated.contains(&e)), "{:?}", s.best_val_epoch);
    assert_eq!(s.last_test, mb[4].test_acc);
}
