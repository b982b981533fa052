//! `mosa bench merge`: the speed of merging sparse experts (sparse-experts spec §4). Synthetic
//! experts on ViT-B/16-shaped weights; the index-space merge of `mosa_core::merge` against a
//! dense-expansion merge (densify every expert's tensor, then combine: what mttl and PEFT do,
//! here one tensor at a time) and against memcpy, counting bytes the same way on both sides
//! (read + written). Everything is in memory: file I/O is not part of the timing.

use std::collections::BTreeMap;
use std::time::Instant;

use mosa_core::expert::{BackboneIdentity, Delta, EXPERT_FORMAT, Expert, ExpertKind, ExpertMeta, ExpertTensor, ValueDtype};
use mosa_core::host::HostTensor;
use mosa_core::merge::{self, MergeConfig, MergeMethod};
use rayon::prelude::*;

#[derive(clap::Args)]
pub struct Args {
    /// Number of experts.
    #[arg(long, default_value_t = 20)]
    experts: usize,
    /// Fraction of each weight every expert keeps.
    #[arg(long, default_value_t = 0.05)]
    density: f64,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Merge method.
    #[arg(long, value_enum, default_value_t = MergeMethod::OverlapMean)]
    method: MergeMethod,
    /// Skip the dense-expansion comparison.
    #[arg(long)]
    no_dense: bool,
    /// Print one JSON object instead of the table row.
    #[arg(long)]
    json: bool,
}

/// The weights of ViT-B/16 that experts touch: patch embedding (as `[768, 3·16·16]`) and the
/// four linears of each of the 12 blocks, `[out, in]`.
fn vit_b16() -> Vec<(String, [usize; 2])> {
    let mut v = vec![("patch_embed.proj.weight".to_string(), [768, 768])];
    for b in 0..12 {
        for (n, s) in [("attn.qkv", [2304, 768]), ("attn.proj", [768, 768]), ("mlp.fc1", [3072, 768]), ("mlp.fc2", [768, 3072])] {
            v.push((format!("blocks.{b}.{n}.weight"), s));
        }
    }
    v
}

/// A fast seeded generator for synthetic data (splitmix64).
struct Fill(u64);

impl Fill {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn expert(t: usize, shapes: &[(String, [usize; 2])], density: f64) -> Expert {
    let tensors = shapes
        .par_iter()
        .enumerate()
        .map(|(k, (name, s))| {
            let n = s[0] * s[1];
            let mut g = Fill((t as u64) << 32 | k as u64);
            let want = (density * n as f64).round() as usize;
            let mut idx: Vec<u32> = (0..want).map(|_| (g.next() % n as u64) as u32).collect();
            idx.sort_unstable();
            idx.dedup();
            let values = (0..idx.len()).map(|_| g.f32()).collect();
            ExpertTensor { name: name.clone(), shape: s.to_vec(), delta: Delta::Sparse { indices: idx, values } }
        })
        .collect();
    let meta = ExpertMeta {
        format: EXPERT_FORMAT,
        kind: ExpertKind::Sparse,
        backbone: BackboneIdentity { model: "vit-b16 (synthetic)".into(), config: serde_json::Value::Null, weights: None, sha256: None },
        method: serde_json::Value::Null,
        task: format!("task{t}"),
        dataset: String::new(),
        keep_ratio: Some(density),
        criterion: None,
        summary: serde_json::Value::Null,
        classes: Vec::new(),
        values: ValueDtype::F32,
        resolution: None,
        tensors: Default::default(),
    };
    Expert { meta, tensors, head: None }
}

/// Dense expansion: every expert's tensor densified (values and mask), then combined.
fn dense_merge(base: &mut BTreeMap<String, HostTensor>, experts: &[&Expert]) {
    base.par_iter_mut().for_each(|(name, w)| {
        let n = w.data.len();
        let dense: Vec<(Vec<f32>, Vec<f32>)> = experts
            .iter()
            .filter_map(|e| e.tensors.iter().find(|t| &t.name == name))
            .map(|t| {
                let (mut d, mut m) = (vec![0f32; n], vec![0f32; n]);
                if let Delta::Sparse { indices, values } = &t.delta {
                    for (&i, &v) in indices.iter().zip(values) {
                        d[i as usize] = v;
                        m[i as usize] = 1.0;
                    }
                }
                (d, m)
            })
            .collect();
        let (mut s, mut c) = (vec![0f32; n], vec![0f32; n]);
        for (d, m) in &dense {
            for i in 0..n {
                s[i] += d[i];
                c[i] += m[i];
            }
        }
        for i in 0..n {
            w.data[i] += s[i] / c[i].max(1.0);
        }
    });
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// Peak resident memory of this process so far (MiB), from /proc.
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.experts > 0 && a.iters > 0, "--experts and --iters must be positive");
    anyhow::ensure!(a.density > 0.0 && a.density <= 1.0, "--density must be in (0, 1]");
    let shapes = vit_b16();
    let numel: usize = shapes.iter().map(|(_, s)| s[0] * s[1]).sum();
    let mut g = Fill(1);
    let mut base: BTreeMap<String, HostTensor> =
        shapes.iter().map(|(n, s)| (n.clone(), HostTensor::new(s.to_vec(), (0..s[0] * s[1]).map(|_| g.f32()).collect()))).collect();
    let experts: Vec<Expert> = (0..a.experts).map(|t| expert(t, &shapes, a.density)).collect();
    let refs: Vec<&Expert> = experts.iter().collect();
    let nnz: usize = experts.iter().map(|e| e.nnz()).sum();
    let cfg = MergeConfig::new(a.method);
    let base_bytes = 4 * numel;
    let expert_bytes = 8 * nnz; // u32 index + f32 value per entry
    let moved = 2 * base_bytes + expert_bytes;

    let mut times = Vec::new();
    for _ in 0..a.iters + 1 {
        let t0 = Instant::now();
        merge::merge(&mut base, &refs, &cfg).map_err(anyhow::Error::msg)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    times.remove(0); // first run: page faults of the accumulators
    let secs = median(times);
    let rss = peak_rss_mib();

    // memcpy of the base, counted as read + written
    let src: Vec<f32> = base.values().flat_map(|t| t.data.iter().copied()).collect();
    let mut dst = vec![0f32; src.len()];
    let mut mt = Vec::new();
    for _ in 0..a.iters + 1 {
        let t0 = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        mt.push(t0.elapsed().as_secs_f64());
    }
    mt.remove(0);
    let memcpy_gbps = 2.0 * base_bytes as f64 / median(mt) / 1e9;
    drop((src, dst));

    let dense_seconds = if a.no_dense {
        None
    } else {
        let mut dt = Vec::new();
        for _ in 0..a.iters.min(3) {
            let t0 = Instant::now();
            dense_merge(&mut base, &refs);
            dt.push(t0.elapsed().as_secs_f64());
        }
        Some(median(dt))
    };
    let gbps = moved as f64 / secs / 1e9;
    let v = serde_json::json!({
        "experts": a.experts, "density": a.density, "method": a.method, "seconds": secs, "gbps": gbps, "memcpy_gbps": memcpy_gbps,
        "fraction_of_memcpy": gbps / memcpy_gbps, "dense_seconds": dense_seconds, "speedup_vs_dense": dense_seconds.map(|d| d / secs),
        "peak_rss_mb": rss, "base_mb": base_bytes as f64 / 1048576.0, "experts_mb": expert_bytes as f64 / 1048576.0,
        "bytes_moved": moved, "entries": nnz, "threads": rayon::current_num_threads(), "iters": a.iters,
    });
    if a.json {
        println!("{v}");
    } else {
        println!("| experts | density | method | median s | GB/s | memcpy GB/s | of memcpy | dense s | × vs dense | peak RSS MiB | base + experts MiB |");
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {} | {:?} | {secs:.3} | {gbps:.1} | {memcpy_gbps:.1} | {:.0}% | {} | {} | {} | {:.0} |",
            a.experts,
            a.density,
            a.method,
            100.0 * gbps / memcpy_gbps,
            dense_seconds.map(|d| format!("{d:.3}")).unwrap_or_default(),
            dense_seconds.map(|d| format!("{:.1}", d / secs)).unwrap_or_default(),
            rss.map(|r| format!("{r:.0}")).unwrap_or_default(),
            (base_bytes + expert_bytes) as f64 / 1048576.0
        );
    }
    Ok(())
}
