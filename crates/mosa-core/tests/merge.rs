//! Expert files and merges against references computed independently here: dense re-implementations
//! of every merge formula, hand-worked 1-D cases, file round trips, bad files, and hot-swap.

use std::collections::{BTreeMap, HashMap};

use mosa_core::Rng;
use mosa_core::expert::{BackboneIdentity, Delta, EXPERT_FORMAT, Expert, ExpertKind, ExpertMeta, ExpertTensor, Head, ValueDtype};
use mosa_core::host::HostTensor;
use mosa_core::merge::{self, MergeConfig, MergeMethod};

const SHAPES: [(&str, [usize; 2]); 3] = [("blocks.0.attn.qkv.weight", [12, 4]), ("blocks.0.mlp.fc1.weight", [8, 4]), ("blocks.1.attn.qkv.weight", [12, 4])];

fn meta(kind: ExpertKind, task: &str) -> ExpertMeta {
    ExpertMeta {
        format: EXPERT_FORMAT,
        kind,
        backbone: BackboneIdentity { model: "tiny".into(), config: serde_json::json!({}), weights: None, sha256: Some("abc".into()) },
        method: serde_json::json!({"method": "sparse"}),
        task: task.into(),
        dataset: format!("vtab:/data/{task}"),
        keep_ratio: Some(0.3),
        criterion: Some("sensitivity-signed".into()),
        summary: serde_json::json!({}),
        classes: vec!["a".into(), "b".into(), "c".into()],
        values: ValueDtype::F32,
        resolution: Some(16),
        tensors: Default::default(),
    }
}

fn base() -> BTreeMap<String, HostTensor> {
    let mut rng = Rng::new(1);
    SHAPES.iter().map(|(n, s)| (n.to_string(), HostTensor::new(s.to_vec(), (0..s[0] * s[1]).map(|_| rng.uniform() as f32 - 0.5).collect()))).collect()
}

/// A random sparse expert: each tensor keeps a random `density` of its entries.
fn sparse_expert(seed: u64, task: &str, density: f64, skip_last: bool) -> Expert {
    let mut rng = Rng::new(seed);
    let tensors = SHAPES
        .iter()
        .take(if skip_last { 2 } else { 3 })
        .map(|(n, s)| {
            let numel = s[0] * s[1];
            let indices: Vec<u32> = (0..numel as u32).filter(|_| rng.uniform() < density).collect();
            let values = indices.iter().map(|_| (rng.uniform() as f32 - 0.5) * 2.0).collect();
            ExpertTensor { name: n.to_string(), shape: s.to_vec(), delta: Delta::Sparse { indices, values } }
        })
        .collect();
    let head = Head { weight: HostTensor::new(vec![3, 4], vec![0.5; 12]), bias: Some(HostTensor::new(vec![3], vec![0.1, 0.2, 0.3])) };
    Expert { meta: meta(ExpertKind::Sparse, task), tensors, head: Some(head) }
}

fn dense(e: &Expert, name: &str) -> Option<Vec<f32>> {
    e.tensors.iter().find(|t| t.name == name).map(|t| t.delta.to_dense(t.numel()))
}

/// TIES trim written independently: sort by magnitude (ties: earlier position first), keep ⌈k·m⌉.
fn trim_ref(positions: &[usize], d: &mut [f32], k: f32) {
    let keep = ((k as f64 * positions.len() as f64).ceil() as usize).min(positions.len());
    let mut order: Vec<usize> = positions.to_vec();
    order.sort_by(|&a, &b| d[b].abs().total_cmp(&d[a].abs()).then(a.cmp(&b)));
    for &i in &order[keep..] {
        d[i] = 0.0;
    }
}

/// Every merge method on dense tensors, from the formulas in the spec.
fn reference(base: &BTreeMap<String, HostTensor>, experts: &[&Expert], cfg: &MergeConfig) -> BTreeMap<String, Vec<f32>> {
    let lambda = cfg.lambda();
    let w = |t: usize| cfg.weights.get(t).copied().unwrap_or(1.0);
    let total: f32 = (0..experts.len()).map(w).sum();
    let mut out = BTreeMap::new();
    for (ti, (name, b)) in base.iter().enumerate() {
        let n = b.data.len();
        let _ = ti;
        let mut d: Vec<Option<(Vec<f32>, Vec<bool>)>> = experts
            .iter()
            .map(|e| {
                e.tensors.iter().find(|t| &t.name == name).map(|t| {
                    let mut mask = vec![false; n];
                    match &t.delta {
                        Delta::Sparse { indices, .. } => indices.iter().for_each(|&i| mask[i as usize] = true),
                        _ => mask.iter_mut().for_each(|m| *m = true),
                    }
                    (t.delta.to_dense(n), mask)
                })
            })
            .collect();
        if d.iter().all(|x| x.is_none()) {
            out.insert(name.clone(), b.data.clone());
            continue;
        }
        let tensor_index = experts
            .iter()
            .flat_map(|e| e.tensors.iter().map(|t| t.name.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .iter()
            .position(|x| x == name)
            .unwrap() as u64;
        if matches!(cfg.method, MergeMethod::Dare | MergeMethod::DareTies) {
            for (t, x) in d.iter_mut().enumerate() {
                if let Some((v, m)) = x {
                    let mut rng = Rng::derive(cfg.seed, (t as u64) << 32 | tensor_index);
                    for i in 0..n {
                        if m[i] {
                            v[i] = if (rng.uniform() as f32) < cfg.dare_p { 0.0 } else { v[i] / (1.0 - cfg.dare_p) };
                        }
                    }
                }
            }
        }
        if matches!(cfg.method, MergeMethod::Ties | MergeMethod::TiesOverlap) {
            for (v, m) in d.iter_mut().flatten() {
                let pos: Vec<usize> = (0..n).filter(|&i| m[i]).collect();
                trim_ref(&pos, v, cfg.ties_k);
            }
        }
        let mut res = b.data.clone();
        for i in 0..n {
            let items: Vec<(f32, f32, bool)> = d.iter().enumerate().filter_map(|(t, x)| x.as_ref().map(|(v, m)| (w(t), v[i], m[i]))).collect();
            let touched = items.iter().any(|x| x.2);
            let delta = match cfg.method {
                MergeMethod::OverlapMean => {
                    let c = items.iter().filter(|x| x.2).count();
                    if c == 0 { None } else { Some(items.iter().map(|x| x.0 * x.1).sum::<f32>() / c as f32) }
                }
                MergeMethod::Mean => touched.then(|| items.iter().map(|x| x.0 * x.1).sum::<f32>() / total),
                MergeMethod::TaskArithmetic | MergeMethod::Dare => touched.then(|| items.iter().map(|x| x.0 * x.1).sum::<f32>()),
                MergeMethod::Ties | MergeMethod::TiesOverlap | MergeMethod::DareTies => {
                    let nz: Vec<&(f32, f32, bool)> = items.iter().filter(|x| x.1 != 0.0).collect();
                    if nz.is_empty() {
                        None
                    } else if cfg.method == MergeMethod::TiesOverlap && nz.len() == 1 {
                        Some(nz[0].0 * nz[0].1)
                    } else {
                        let mass: f32 = nz.iter().map(|x| x.0 * x.1).sum();
                        let agree: Vec<&&(f32, f32, bool)> = nz.iter().filter(|x| mass != 0.0 && (x.1 > 0.0) == (mass > 0.0)).collect();
                        let ws: f32 = agree.iter().map(|x| x.0).sum();
                        (ws > 0.0).then(|| agree.iter().map(|x| x.0 * x.1).sum::<f32>() / ws)
                    }
                }
            };
            if let Some(x) = delta {
                res[i] += lambda * x;
            }
        }
        out.insert(name.clone(), res);
    }
    out
}

fn max_diff(a: &BTreeMap<String, HostTensor>, b: &BTreeMap<String, Vec<f32>>) -> f32 {
    mosa_testkit::max_or_nan(a.iter().map(|(k, t)| mosa_testkit::max_abs_diff(&t.data, &b[k])))
}

const METHODS: [MergeMethod; 7] = [
    MergeMethod::OverlapMean,
    MergeMethod::Mean,
    MergeMethod::TaskArithmetic,
    MergeMethod::Ties,
    MergeMethod::TiesOverlap,
    MergeMethod::Dare,
    MergeMethod::DareTies,
];

#[test]
fn every_method_matches_the_dense_reference_on_random_experts() {
    let experts: Vec<Expert> = (0..5).map(|t| sparse_expert(10 + t, &format!("task{t}"), 0.3, t == 4)).collect();
    let refs: Vec<&Expert> = experts.iter().collect();
    for method in METHODS {
        for weights in [vec![], vec![1.0, 0.5, 2.0, 1.0, 0.25]] {
            let mut cfg = MergeConfig::new(method);
            cfg.weights = weights.clone();
            let mut b = base();
            merge::merge(&mut b, &refs, &cfg).unwrap();
            let want = reference(&base(), &refs, &cfg);
            let d = max_diff(&b, &want);
            assert!(d <= 1e-6, "{method:?} weights {weights:?}: index space vs dense differ by {d}");
        }
    }
}

#[test]
fn one_expert_with_weight_one_merges_to_exactly_its_model() {
    let e = sparse_expert(3, "only", 0.3, false);
    for method in [MergeMethod::OverlapMean, MergeMethod::Mean, MergeMethod::TiesOverlap] {
        let mut b = base();
        let mut cfg = MergeConfig::new(method);
        cfg.ties_k = 1.0;
        merge::merge(&mut b, &[&e], &cfg).unwrap();
        for (name, t) in &b {
            let d = dense(&e, name).unwrap();
            let want: Vec<f32> = base()[name].data.iter().zip(&d).map(|(w, x)| w + x).collect();
            assert_eq!(t.data, want, "{method:?} {name}: W0 + Δ exactly");
        }
    }
}

fn one_d(values: &[(u32, f32)]) -> Expert {
    let mut e = sparse_expert(0, "x", 0.0, false);
    e.tensors = vec![ExpertTensor {
        name: "blocks.0.mlp.fc1.weight".into(),
        shape: vec![8, 4],
        delta: Delta::Sparse { indices: values.iter().map(|v| v.0).collect(), values: values.iter().map(|v| v.1).collect() },
    }];
    e
}

#[test]
fn hand_worked_ties_overlap_mean_and_dare() {
    // entry 0: +1, +3, −2 → mass +2, agreeing {+1, +3} → mean 2
    // entry 1: −4 alone → TIES keeps −4; entry 2: +1 and −1 → mass 0, nobody agrees → 0
    let mut e = [one_d(&[(0, 1.0), (1, -4.0), (2, 1.0)]), one_d(&[(0, 3.0), (2, -1.0)]), one_d(&[(0, -2.0)])];
    for (t, x) in e.iter_mut().enumerate() {
        x.meta.task = format!("t{t}");
    }
    let refs: Vec<&Expert> = e.iter().collect();
    let at = |m: &BTreeMap<String, HostTensor>, i: usize| m["blocks.0.mlp.fc1.weight"].data[i] - base()["blocks.0.mlp.fc1.weight"].data[i];
    let mut cfg = MergeConfig::new(MergeMethod::Ties);
    cfg.ties_k = 1.0;
    let mut b = base();
    merge::merge(&mut b, &refs, &cfg).unwrap();
    assert!((at(&b, 0) - 2.0).abs() < 1e-6 && (at(&b, 1) + 4.0).abs() < 1e-6 && at(&b, 2) == 0.0 && at(&b, 3) == 0.0);
    // overlap-mean: (1 + 3 − 2) / 3, −4 / 1, (1 − 1) / 2
    let mut b = base();
    merge::merge(&mut b, &refs, &MergeConfig::new(MergeMethod::OverlapMean)).unwrap();
    assert!((at(&b, 0) - 2.0 / 3.0).abs() < 1e-6 && (at(&b, 1) + 4.0).abs() < 1e-6 && at(&b, 2).abs() < 1e-7);
    // TIES trim at k = 0.5 keeps ⌈0.5·3⌉ = 2 of expert 0's entries: −4 and the first of the tied 1s
    let mut cfg = MergeConfig::new(MergeMethod::Ties);
    cfg.ties_k = 0.5;
    let mut b = base();
    merge::merge(&mut b, &[&e[0]], &cfg).unwrap();
    assert!((at(&b, 0) - 1.0).abs() < 1e-6 && (at(&b, 1) + 4.0).abs() < 1e-6 && at(&b, 2) == 0.0);
    // DARE: every kept entry is scaled by exactly 1/(1−p), every other is 0, about p are dropped
    let big = one_d(&(0..32).map(|i| (i, 1.0)).collect::<Vec<_>>());
    let mut dropped = 0;
    for seed in 0..50 {
        let mut cfg = MergeConfig::new(MergeMethod::Dare);
        cfg.lambda = Some(1.0);
        cfg.dare_p = 0.25;
        cfg.seed = seed;
        let mut b = base();
        merge::merge(&mut b, &[&big], &cfg).unwrap();
        for i in 0..32 {
            let d = at(&b, i);
            assert!(d.abs() < 1e-6 || (d - 1.0 / 0.75).abs() < 1e-5, "entry {i}: {d}");
            dropped += usize::from(d.abs() < 1e-6);
        }
    }
    let frac = dropped as f64 / (50.0 * 32.0);
    assert!((frac - 0.25).abs() < 0.05, "dropped fraction {frac}");
}

#[test]
fn expert_files_round_trip_for_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    // sparse: a low density is stored as indices, a high one as a bitmap; f16 values round to f16
    for (density, enc) in [(0.01, "indices"), (0.3, "bitmap")] {
        let e = sparse_expert(5, "s", density, false);
        let p = dir.path().join(format!("s{enc}.safetensors"));
        e.write(&p).unwrap();
        let back = Expert::read(&p).unwrap();
        assert_eq!(back.tensors, e.tensors);
        assert_eq!(back.head, e.head);
        assert_eq!(back.meta.tensors.values().next().unwrap().encoding, enc);
        let st = std::fs::read(&p).unwrap();
        let names: Vec<String> = safetensors::SafeTensors::deserialize(&st).unwrap().names().into_iter().map(String::from).collect();
        assert!(names.iter().any(|n| n.ends_with(&format!(".{enc}"))), "{names:?}");
    }
    let mut e = sparse_expert(6, "h", 0.3, false);
    e.meta.values = ValueDtype::F16;
    let p = dir.path().join("f16.safetensors");
    e.write(&p).unwrap();
    let back = Expert::read(&p).unwrap();
    for (a, b) in back.tensors.iter().zip(&e.tensors) {
        let (Delta::Sparse { values: va, .. }, Delta::Sparse { values: vb, .. }) = (&a.delta, &b.delta) else { panic!() };
        assert!(va.iter().zip(vb).all(|(x, y)| (x - y).abs() <= 1e-3 * y.abs().max(1e-3)), "f16 values");
    }
    // lora and full
    let mut rng = Rng::new(2);
    let mut r = |n: usize| (0..n).map(|_| rng.uniform() as f32).collect::<Vec<_>>();
    let lora = Expert {
        meta: meta(ExpertKind::Lora, "l"),
        tensors: vec![ExpertTensor {
            name: "blocks.0.attn.qkv.weight".into(),
            shape: vec![12, 4],
            delta: Delta::LowRank { a: HostTensor::new(vec![2, 4], r(8)), b: HostTensor::new(vec![12, 2], r(24)), scale: 0.5 },
        }],
        head: None,
    };
    let full = Expert {
        meta: meta(ExpertKind::Full, "f"),
        tensors: vec![ExpertTensor { name: "blocks.0.mlp.fc1.weight".into(), shape: vec![8, 4], delta: Delta::Dense(r(32)) }],
        head: None,
    };
    // LoRA's ΔW is scale·B·A
    let Delta::LowRank { a, b, scale } = &lora.tensors[0].delta else { panic!() };
    let d = lora.tensors[0].delta.to_dense(48);
    let want = (0..12 * 4).map(|k| (0..2).map(|j| scale * b.data[(k / 4) * 2 + j] * a.data[j * 4 + k % 4]).sum::<f32>());
    assert!(d.iter().zip(want).all(|(x, y)| (x - y).abs() < 1e-6));
    for e in [lora, full] {
        let p = dir.path().join("k.safetensors");
        e.write(&p).unwrap();
        let mut back = Expert::read(&p).unwrap();
        assert_eq!(back.meta.tensors[&e.tensors[0].name].shape, e.tensors[0].shape);
        back.meta.tensors.clear();
        assert_eq!(back, e);
    }
}

/// Writes a safetensors file with the given raw tensors and an expert header.
fn raw(path: &std::path::Path, meta: &ExpertMeta, tensors: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.iter().map(|(n, d, s, b)| (n.to_string(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let header = HashMap::from([("mosa.expert".to_string(), serde_json::to_string(meta).unwrap())]);
    std::fs::write(path, safetensors::serialize(views, Some(header)).unwrap()).unwrap();
}

#[test]
fn bad_expert_files_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = sparse_expert(1, "g", 0.01, false);
    let p = dir.path().join("good.safetensors");
    good.write(&p).unwrap();
    // truncated
    let bytes = std::fs::read(&p).unwrap();
    let t = dir.path().join("trunc.safetensors");
    std::fs::write(&t, &bytes[..bytes.len() - 7]).unwrap();
    let e = Expert::read(&t).unwrap_err();
    assert!(matches!(&e, mosa_core::Error::File { path, source } if path == &t && matches!(**source, mosa_core::Error::Expert(_))), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("trunc.safetensors"), "{e}");
    // foreign: a safetensors file that is not an expert
    let f = dir.path().join("foreign.safetensors");
    std::fs::write(&f, safetensors::serialize(Vec::<(String, safetensors::tensor::TensorView<'_>)>::new(), None).unwrap()).unwrap();
    assert!(Expert::read(&f).unwrap_err().to_string().contains("not a mosa expert"));
    std::fs::write(&f, b"hello").unwrap();
    assert!(Expert::read(&f).unwrap_err().to_string().contains("not a safetensors file"));
    // indices out of range, unsorted, duplicated; values of the wrong length
    let name = "blocks.0.mlp.fc1.weight";
    let mut m = meta(ExpertKind::Sparse, "bad");
    m.tensors.insert(name.into(), mosa_core::expert::TensorMeta { shape: vec![8, 4], encoding: "indices".into(), scale: None });
    let u = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let fl = |n: usize| vec![0u8; 4 * n];
    for (idx, nvals, want) in [(vec![1u32, 40], 2, "out of range"), (vec![3, 1], 2, "unsorted"), (vec![2, 2], 2, "duplicated"), (vec![1, 2], 3, "3 values")] {
        let b = dir.path().join("bad.safetensors");
        raw(
            &b,
            &m,
            &[
                (&format!("{name}.indices"), safetensors::Dtype::U32, vec![idx.len()], u(&idx)),
                (&format!("{name}.values"), safetensors::Dtype::F32, vec![nvals], fl(nvals)),
            ],
        );
        let e = Expert::read(&b).unwrap_err().to_string();
        assert!(e.contains("bad.safetensors") && e.contains(name) && e.contains(want), "{want}: {e}");
    }
}

#[test]
fn merges_that_cannot_be_made_are_refused() {
    let a = sparse_expert(1, "a", 0.1, false);
    let mut b = sparse_expert(2, "b", 0.1, false);
    b.meta.backbone.sha256 = Some("other".into());
    assert!(merge::merge(&mut base(), &[&a, &b], &MergeConfig::new(MergeMethod::Mean)).unwrap_err().to_string().contains("another backbone"));
    let a2 = sparse_expert(2, "a", 0.1, false);
    assert!(merge::merge(&mut base(), &[&a, &a2], &MergeConfig::new(MergeMethod::Mean)).unwrap_err().to_string().contains("appears twice"));
    let mut l = a2.clone();
    l.meta.task = "l".into();
    l.meta.kind = ExpertKind::Lora;
    assert!(merge::check(&base(), &[&a, &l]).unwrap_err().to_string().contains("cannot mix"));
    let mut s = sparse_expert(3, "s", 0.1, false);
    s.tensors[0].shape = vec![4, 12];
    assert!(merge::merge(&mut base(), &[&s], &MergeConfig::new(MergeMethod::Mean)).unwrap_err().to_string().contains("has shape"));
    for (k, p, w) in [(0.0, 0.5, vec![]), (0.2, 1.0, vec![]), (0.2, 0.5, vec![1.0])] {
        let mut cfg = MergeConfig::new(MergeMethod::Ties);
        cfg.ties_k = k;
        cfg.dare_p = p;
        cfg.weights = w;
        assert!(merge::merge(&mut base(), &[&a, &sparse_expert(4, "c", 0.1, false)], &cfg).is_err());
    }
}

#[test]
fn hot_swap_round_trip_returns_the_original_bits() {
    let mut b = base();
    // values whose add-then-subtract is not exact in f32
    for t in b.values_mut() {
        for (i, x) in t.data.iter_mut().enumerate() {
            *x = 0.1 + i as f32 * 1e-3;
        }
    }
    let orig = b.clone();
    let e = sparse_expert(9, "swap", 0.3, false);
    let applied = merge::apply(&mut b, &e, 1.0).unwrap();
    assert_ne!(b, orig);
    for t in &e.tensors {
        let d = t.delta.to_dense(t.numel());
        assert!(b[&t.name].data.iter().zip(&orig[&t.name].data).zip(&d).all(|((x, o), v)| *x == o + v));
    }
    let mut naive = b.clone();
    for t in &e.tensors {
        let d = t.delta.to_dense(t.numel());
        naive.get_mut(&t.name).unwrap().data.iter_mut().zip(&d).for_each(|(x, v)| *x -= v);
    }
    assert_ne!(naive, orig, "subtracting back is not exact here, so the test can tell");
    merge::remove(&mut b, applied);
    assert_eq!(b, orig, "bit-exact round trip");
}
