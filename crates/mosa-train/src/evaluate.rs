//! Evaluation: accuracy of a (merged) model on a split, in evaluation mode (the inner,
//! non-autodiff backend: no dropout, MoSA slots use their merged adapter).

use burn::prelude::*;
use mosa_data::LoadedSplit;
use mosa_kernels::Kernels;
use mosa_models::Backbone;

/// Accuracy on the first `limit` images of `split` (all if `None`), and how many were scored.
pub fn evaluate<B: Kernels>(model: &Backbone<B>, split: &LoadedSplit, batch: usize, limit: Option<usize>, device: &B::Device) -> (f64, usize) {
    let n = limit.map_or(split.len(), |l| l.min(split.len()));
    let idx: Vec<usize> = (0..n).collect();
    let mut correct: Option<Tensor<B, 1, Int>> = None;
    for chunk in idx.chunks(batch.max(1)) {
        let (px, labels) = split.batch(chunk, 0);
        let (x, y) = mosa_data::batcher::to_tensors::<B>(px, &labels, split.transform.size, device);
        let pred = model.forward(x).logits.argmax(1).reshape([chunk.len()]);
        let c = pred.equal(y).int().sum();
        correct = Some(match correct {
            Some(t) => t.add(c),
            None => c,
        });
    }
    let c = correct.map(|t| t.into_scalar().elem::<i64>()).unwrap_or(0);
    (c as f64 / n.max(1) as f64, n)
}

/// The split a role names (`train`, `val` or `test`) of a dataset whose classes a head of
/// `classes` outputs scores: the one check `mosa eval` and [`accuracy_on`] make.
pub fn split_for<'a>(ds: &'a mosa_data::Dataset, role: &str, classes: usize) -> crate::Result<&'a mosa_data::list::Split> {
    if ds.num_classes != classes {
        return Err(crate::Error::Input(format!("{} has {} classes, the head has {classes}", ds.spec, ds.num_classes)));
    }
    match role {
        "train" => Some(&ds.train),
        "val" => ds.val.as_ref(),
        "test" => ds.test.as_ref(),
        other => return Err(crate::Error::Input(format!("unknown split `{other}`: test, val or train"))),
    }
    .ok_or_else(|| crate::Error::Input(format!("{} has no {role} split", ds.spec)))
}

/// Accuracy of `model` on a split (`train`, `val` or `test`) of a dataset (`folder:…`, `vtab:…`,
/// …), its images at `resolution`, and how many were scored.
pub fn accuracy_on<B: Kernels>(model: &Backbone<B>, dataset: &str, split: &str, resolution: usize, device: &B::Device) -> crate::Result<(f64, usize)> {
    let ds = mosa_data::Dataset::open(&dataset.parse()?)?;
    let list = split_for(&ds, split, model.num_classes())?;
    let transform = mosa_data::Transform::new(ds.style, resolution, false);
    let (loaded, _) = LoadedSplit::load(list, ds.num_classes, transform, &mosa_data::LoadOptions::default())?;
    Ok(evaluate(model, &loaded, 64, None, device))
}
