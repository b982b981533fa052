//! Merging task experts, as pure functions over host tensors (sparse-experts spec §3).
//!
//! Sparse experts merge **in index space**: per weight, the experts' (index, value) lists are
//! streamed into one tensor's accumulators, so memory is the base model plus one tensor's
//! accumulators per thread, never N dense copies, and time is O(Σ nnz + tensor size). LoRA
//! experts enter as `ΔW = scale·B·A` and full experts as their dense Δ (every entry touched).
//! Kinds are not mixed in one merge (an overlap count means something else for a dense delta):
//! such a merge is refused.
//!
//! With per-expert weights `w_t` (default 1) and scale λ, the merged weight is `W0 + λ·D` with
//!
//! | method | D at an entry |
//! |---|---|
//! | `overlap-mean` (the paper) | `Σ w_t Δ_t / max(C, 1)`, C = experts whose mask holds the entry |
//! | `mean` | `Σ w_t Δ_t / Σ w_t` over all experts |
//! | `task-arithmetic` | `Σ w_t Δ_t` |
//! | `ties` | each Δ_t trimmed to its top-k fraction by magnitude; sign γ = sign(Σ w_t Δ̃_t); `Σ w_t Δ̃_t / Σ w_t` over the experts with sign γ |
//! | `ties-overlap` | as `ties`, but an entry held by one trimmed expert keeps `w_t Δ̃_t` (election only where ≥ 2 overlap) |
//! | `dare` / `dare-ties` | each entry of Δ_t dropped with probability p (seeded), the rest scaled 1/(1−p); then task arithmetic / TIES |
//!
//! Default λ: 0.3 for task arithmetic and DARE (the spec's 0.3–0.4), 1 otherwise.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::expert::{Delta, Expert};
use crate::host::HostTensor;
use crate::rng::Rng;

/// A merge method (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum MergeMethod {
    OverlapMean,
    Mean,
    TaskArithmetic,
    Ties,
    TiesOverlap,
    Dare,
    DareTies,
}

/// A merge and its options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeConfig {
    pub method: MergeMethod,
    /// Per-expert weights (empty: all 1).
    pub weights: Vec<f32>,
    /// Scale of the merged delta (None: the method's default).
    pub lambda: Option<f32>,
    /// TIES: fraction of each expert's entries kept, by magnitude.
    pub ties_k: f32,
    /// DARE: drop probability.
    pub dare_p: f32,
    pub seed: u64,
}

impl MergeConfig {
    pub fn new(method: MergeMethod) -> Self {
        Self { method, weights: Vec::new(), lambda: None, ties_k: 0.2, dare_p: 0.5, seed: 3407 }
    }

    pub fn lambda(&self) -> f32 {
        self.lambda.unwrap_or(match self.method {
            MergeMethod::TaskArithmetic | MergeMethod::Dare => 0.3,
            MergeMethod::OverlapMean | MergeMethod::Mean | MergeMethod::Ties | MergeMethod::TiesOverlap | MergeMethod::DareTies => 1.0,
        })
    }

    fn weight(&self, t: usize) -> f32 {
        self.weights.get(t).copied().unwrap_or(1.0)
    }

    /// Checks the options for `n` experts.
    pub fn validate(&self, n: usize) -> crate::Result<()> {
        if !self.weights.is_empty() && self.weights.len() != n {
            return Err(crate::Error::Option(format!("{} weights given for {n} experts", self.weights.len())));
        }
        if let Some(w) = self.weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(crate::Error::Option(format!("expert weight {w} must be finite and ≥ 0")));
        }
        if !self.lambda().is_finite() {
            return Err(crate::Error::Option(format!("λ must be finite, got {}", self.lambda())));
        }
        if !(self.ties_k > 0.0 && self.ties_k <= 1.0) {
            return Err(crate::Error::Option(format!("--ties-k must be in (0, 1], got {}", self.ties_k)));
        }
        if !(0.0..1.0).contains(&self.dare_p) {
            return Err(crate::Error::Option(format!("--dare-p must be in [0, 1), got {}", self.dare_p)));
        }
        Ok(())
    }
}

/// One expert's entries of one tensor: sparse (sorted indices) or dense, borrowed from the
/// expert until a method (DARE, TIES) changes its values.
#[derive(Clone)]
enum Entries<'a> {
    Sparse(&'a [u32], Cow<'a, [f32]>),
    Dense(Cow<'a, [f32]>),
}

impl<'a> Entries<'a> {
    fn of(delta: &'a Delta, n: usize) -> Entries<'a> {
        match delta {
            Delta::Sparse { indices, values } => Entries::Sparse(indices, Cow::Borrowed(values)),
            Delta::Dense(d) => Entries::Dense(Cow::Borrowed(d)),
            other => Entries::Dense(Cow::Owned(other.to_dense(n))),
        }
    }

    fn for_each(&self, mut f: impl FnMut(usize, f32)) {
        match self {
            Entries::Sparse(i, v) => i.iter().zip(v.iter()).for_each(|(&i, &v)| f(i as usize, v)),
            Entries::Dense(d) => d.iter().enumerate().for_each(|(i, &v)| f(i, v)),
        }
    }

    fn values_mut(&mut self) -> &mut [f32] {
        match self {
            Entries::Sparse(_, v) => v.to_mut(),
            Entries::Dense(d) => d.to_mut(),
        }
    }

    /// DARE: drop each entry with probability p, scale the rest by 1/(1−p).
    fn dare(mut self, p: f32, rng: &mut Rng) -> Self {
        let keep = 1.0 / (1.0 - p);
        for v in self.values_mut() {
            *v = if (rng.uniform() as f32) < p { 0.0 } else { *v * keep };
        }
        self
    }

    /// TIES trim: keep the ⌈k·m⌉ largest magnitudes of the m stored entries (ties by position),
    /// zero the rest.
    fn trim(mut self, k: f32) -> Self {
        let v = self.values_mut();
        let m = v.len();
        let keep = ((k as f64 * m as f64).ceil() as usize).min(m);
        if keep < m {
            let mut mags: Vec<f32> = v.iter().map(|x| x.abs()).collect();
            let (_, kth, _) = mags.select_nth_unstable_by(m - keep, |a, b| a.total_cmp(b));
            let t = *kth;
            let above = v.iter().filter(|x| x.abs() > t).count();
            let mut at_t = keep - above;
            for x in v.iter_mut() {
                let a = x.abs();
                if a < t || (a == t && at_t == 0) {
                    *x = 0.0;
                } else if a == t {
                    at_t -= 1;
                }
            }
        }
        self
    }
}

/// Merges the experts' deltas of one tensor into `w` (`n` entries, in place). `deltas` holds, per
/// expert touching the tensor, its index among all experts and its delta; `total_weight` is the
/// weight sum over all experts (for `mean`); `tensor` seeds DARE.
pub fn merge_tensor(w: &mut [f32], deltas: &[(usize, &Delta)], cfg: &MergeConfig, total_weight: f32, tensor: u64) {
    let n = w.len();
    let lambda = cfg.lambda();
    let linear = matches!(cfg.method, MergeMethod::OverlapMean | MergeMethod::Mean | MergeMethod::TaskArithmetic);
    if linear && deltas.iter().all(|(_, d)| matches!(d, Delta::Sparse { .. })) {
        return merge_sparse_linear(w, deltas, cfg, total_weight);
    }
    let mut entries: Vec<(usize, Entries)> = deltas.iter().map(|&(t, d)| (t, Entries::of(d, n))).collect();
    if matches!(cfg.method, MergeMethod::Dare | MergeMethod::DareTies) {
        entries = entries.into_iter().map(|(t, e)| (t, e.dare(cfg.dare_p, &mut Rng::derive(cfg.seed, (t as u64) << 32 | tensor)))).collect();
    }
    if matches!(cfg.method, MergeMethod::Ties | MergeMethod::TiesOverlap | MergeMethod::DareTies) {
        let trim = if cfg.method == MergeMethod::DareTies { 1.0 } else { cfg.ties_k };
        entries = entries.into_iter().map(|(t, e)| (t, e.trim(trim))).collect();
    }
    match cfg.method {
        MergeMethod::OverlapMean => {
            let mut sum = vec![0f32; n];
            let mut count = vec![0u32; n];
            for (t, e) in &entries {
                let wt = cfg.weight(*t);
                e.for_each(|i, v| {
                    sum[i] += wt * v;
                    count[i] += 1;
                });
            }
            for i in 0..n {
                if count[i] > 0 {
                    w[i] += lambda * (sum[i] / count[i] as f32);
                }
            }
        }
        MergeMethod::Mean | MergeMethod::TaskArithmetic | MergeMethod::Dare => {
            let mut sum = vec![0f32; n];
            let mut touched = vec![false; n];
            for (t, e) in &entries {
                let wt = cfg.weight(*t);
                e.for_each(|i, v| {
                    sum[i] += wt * v;
                    touched[i] = true;
                });
            }
            let div = if cfg.method == MergeMethod::Mean { total_weight.max(f32::MIN_POSITIVE) } else { 1.0 };
            for i in 0..n {
                if touched[i] {
                    w[i] += lambda * (sum[i] / div);
                }
            }
        }
        MergeMethod::Ties | MergeMethod::TiesOverlap | MergeMethod::DareTies => {
            // pass 1: elected sign (total mass) and number of trimmed owners
            let mut mass = vec![0f32; n];
            let mut owners = vec![0u32; n];
            for (t, e) in &entries {
                let wt = cfg.weight(*t);
                e.for_each(|i, v| {
                    if v != 0.0 {
                        mass[i] += wt * v;
                        owners[i] += 1;
                    }
                });
            }
            // pass 2: disjoint (weighted) mean of the experts that agree with the sign
            let mut sum = vec![0f32; n];
            let mut wsum = vec![0f32; n];
            let overlap_only = cfg.method == MergeMethod::TiesOverlap;
            for (t, e) in &entries {
                let wt = cfg.weight(*t);
                e.for_each(|i, v| {
                    if v == 0.0 {
                        return;
                    }
                    if overlap_only && owners[i] == 1 {
                        sum[i] += wt * v;
                        wsum[i] = 1.0;
                    } else if (v > 0.0) == (mass[i] > 0.0) && mass[i] != 0.0 {
                        sum[i] += wt * v;
                        wsum[i] += wt;
                    }
                });
            }
            for i in 0..n {
                if wsum[i] > 0.0 {
                    w[i] += lambda * (sum[i] / wsum[i]);
                }
            }
        }
    }
}

/// Entries per block of the streaming merge (1 MiB of accumulators; measured fastest among 2^12..2^18
/// on the 2-core machine, `mosa bench merge`).
const BLOCK: usize = 1 << 17;

/// The linear merges of sparse experts, streamed block by block: per block of the weight, each
/// expert's entries in it (a sorted slice, found by binary search) are added into small
/// accumulators, then the block of `w` is updated once. Every byte of the base and of the
/// experts is read once, in order.
fn merge_sparse_linear(w: &mut [f32], deltas: &[(usize, &Delta)], cfg: &MergeConfig, total_weight: f32) {
    let lambda = cfg.lambda();
    let lists: Vec<(f32, &[u32], &[f32])> = deltas
        .iter()
        .map(|&(t, d)| match d {
            Delta::Sparse { indices, values } => (cfg.weight(t), indices.as_slice(), values.as_slice()),
            _ => unreachable!("checked by the caller"),
        })
        .collect();
    let mut cursor: Vec<usize> = vec![0; lists.len()];
    // interleaved (sum, count) pairs: one cache line holds both
    let mut acc = vec![[0f32; 2]; BLOCK];
    let overlap = cfg.method == MergeMethod::OverlapMean;
    let scale = if cfg.method == MergeMethod::Mean { lambda / total_weight.max(f32::MIN_POSITIVE) } else { lambda };
    for (b, wb) in w.chunks_mut(BLOCK).enumerate() {
        let lo = b * BLOCK;
        let hi = lo + wb.len();
        let acc = &mut acc[..wb.len()];
        acc.fill([0.0; 2]);
        for (k, (wt, idx, val)) in lists.iter().enumerate() {
            let start = cursor[k];
            let end = start + idx[start..].partition_point(|&i| (i as usize) < hi);
            for (&i, &v) in idx[start..end].iter().zip(&val[start..end]) {
                // SAFETY: `Expert::validate` guarantees sorted indices below the tensor's size, and
                // this slice holds exactly those in [lo, hi), so `i - lo` < `acc.len()`.
                let a = unsafe { acc.get_unchecked_mut(i as usize - lo) };
                a[0] += wt * v;
                a[1] += 1.0;
            }
            cursor[k] = end;
        }
        // branch-free: an entry no expert touches gets + 0.0, as `W0 + M ⊙ ΔW` does in training
        if overlap {
            for (x, a) in wb.iter_mut().zip(acc.iter()) {
                *x += lambda * (a[0] / a[1].max(1.0));
            }
        } else {
            for (x, a) in wb.iter_mut().zip(acc.iter()) {
                *x += scale * a[0];
            }
        }
    }
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MergeReport {
    pub experts: usize,
    /// Weights changed.
    pub tensors: usize,
    /// Entries read from the experts.
    pub entries: usize,
}

/// Checks that a set of experts can be merged together onto `base` (timm names and layout).
pub fn check(base: &BTreeMap<String, HostTensor>, experts: &[&Expert]) -> crate::Result<()> {
    let Some(first) = experts.first() else { return Err(crate::Error::Mismatch("no experts to merge".into())) };
    let mut tasks = HashSet::new();
    for e in experts {
        if e.meta.kind != first.meta.kind {
            return Err(crate::Error::Mismatch(format!(
                "cannot mix expert kinds in one merge: task `{}` is {:?}, task `{}` is {:?}",
                first.meta.task, first.meta.kind, e.meta.task, e.meta.kind
            )));
        }
        if e.meta.backbone.sha256 != first.meta.backbone.sha256 {
            return Err(crate::Error::Mismatch(format!(
                "task `{}` was trained on another backbone (SHA-256 {}) than task `{}` ({})",
                e.meta.task,
                e.meta.backbone.sha256.as_deref().unwrap_or("none"),
                first.meta.task,
                first.meta.backbone.sha256.as_deref().unwrap_or("none")
            )));
        }
        if !tasks.insert(&e.meta.task) {
            return Err(crate::Error::Mismatch(format!("task `{}` appears twice", e.meta.task)));
        }
        for t in &e.tensors {
            match base.get(&t.name) {
                None => return Err(crate::Error::Mismatch(format!("task `{}`: tensor `{}` is not a weight of the backbone", e.meta.task, t.name))),
                Some(b) if b.shape != t.shape => {
                    return Err(crate::Error::Mismatch(format!(
                        "task `{}`: tensor `{}` has shape {:?}, the backbone's is {:?}",
                        e.meta.task, t.name, t.shape, b.shape
                    )));
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Merges `experts` into `base` in place (index space, one tensor at a time, tensors in parallel).
pub fn merge(base: &mut BTreeMap<String, HostTensor>, experts: &[&Expert], cfg: &MergeConfig) -> crate::Result<MergeReport> {
    check(base, experts)?;
    cfg.validate(experts.len())?;
    let total_weight: f32 = (0..experts.len()).map(|t| cfg.weight(t)).sum();
    // which experts touch which tensor, in a stable tensor order
    let mut by_tensor: BTreeMap<&str, Vec<(usize, &Delta)>> = BTreeMap::new();
    for (t, e) in experts.iter().enumerate() {
        for x in &e.tensors {
            by_tensor.entry(x.name.as_str()).or_default().push((t, &x.delta));
        }
    }
    let order: Vec<&str> = by_tensor.keys().copied().collect();
    let index: BTreeMap<&str, u64> = order.iter().enumerate().map(|(i, n)| (*n, i as u64)).collect();
    let mut targets: Vec<(&String, &mut HostTensor)> = base.iter_mut().filter(|(k, _)| by_tensor.contains_key(k.as_str())).collect();
    targets.par_iter_mut().for_each(|(name, w)| {
        let deltas = &by_tensor[name.as_str()];
        merge_tensor(&mut w.data, deltas, cfg, total_weight, index[name.as_str()]);
    });
    Ok(MergeReport { experts: experts.len(), tensors: order.len(), entries: experts.iter().map(|e| e.nnz()).sum() })
}

/// An applied expert's undo record: the original bits of every entry it touched.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    saved: Vec<(String, Vec<u32>, Vec<f32>)>,
}

/// Hot-swap: adds `scale · Δ` of one expert to a loaded backbone's weights (timm names and
/// layout) in O(nnz) for a sparse expert, keeping the touched entries so that [`remove`]
/// restores the original bits exactly (float add-then-subtract would not).
pub fn apply(base: &mut BTreeMap<String, HostTensor>, e: &Expert, scale: f32) -> crate::Result<Applied> {
    check(base, &[e])?;
    let mut saved = Vec::new();
    for t in &e.tensors {
        let w = base.get_mut(&t.name).expect("checked");
        match &t.delta {
            Delta::Sparse { indices, values } => {
                saved.push((t.name.clone(), indices.clone(), indices.iter().map(|&i| w.data[i as usize]).collect()));
                for (&i, &v) in indices.iter().zip(values) {
                    w.data[i as usize] += scale * v;
                }
            }
            other => {
                let d = other.to_dense(t.numel());
                saved.push((t.name.clone(), (0..t.numel() as u32).collect(), w.data.clone()));
                for (x, v) in w.data.iter_mut().zip(d) {
                    *x += scale * v;
                }
            }
        }
    }
    Ok(Applied { saved })
}

/// Removes an applied expert: the touched entries get their original bits back.
pub fn remove(base: &mut BTreeMap<String, HostTensor>, applied: Applied) {
    for (name, idx, orig) in applied.saved {
        if let Some(w) = base.get_mut(&name) {
            for (i, v) in idx.into_iter().zip(orig) {
                w.data[i as usize] = v;
            }
        }
    }
}
