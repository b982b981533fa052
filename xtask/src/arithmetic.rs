//! The model arithmetic of a grid's finished runs and the rate it was done at: per run, the
//! forward FLOPs of one image (the run's own model config at its resolution,
//! `BackboneConfig::forward_flops`) times the images it pushed through — training: the images
//! seen × the method's step factor (`MethodKind::step_flops_factor`, the count `mosa bench` uses:
//! 2 for a frozen backbone, 3 where base weights train, × 2 for MoSA's two passes), the linear
//! probe: its training images once (mosa-train computes the frozen features once); evaluation:
//! the images scored — divided by the seconds the runs spent training and evaluating.

use std::path::Path;

use mosa_core::{MethodKind, Passes};
use mosa_train::rundir::RunDir;

/// (FLOPs, seconds of training and evaluation) of one finished run directory (any run format).
pub fn of_run(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let rd = RunDir::new(dir);
    let (config, summary) = (rd.read_config()?, rd.summary()?);
    let (run, train) = (&config.run, &config.run.train);
    let forward = run.model.clone().with_img_size(train.resolution).forward_flops();
    let passes = if mosa_train::step::two_passes(&run.method, train) { Passes::Two } else { Passes::One };
    let trained = summary.train_images_per_second * summary.train_seconds;
    let scored = summary.eval_images_per_second * summary.eval_seconds;
    let train_flops = match run.method.kind() {
        // features once per training image (mosa-train's probe); the head's arithmetic is negligible
        MethodKind::Linear => forward * train.train_images(config.dataset.train) as f64,
        kind => forward * trained * kind.step_flops_factor(passes),
    };
    Ok((train_flops + forward * scored, summary.train_seconds + summary.eval_seconds))
}

/// One line: the runs' model arithmetic and its rate, over their own seconds and over `wall`
/// seconds, against `peak` GFLOP/s when known; `None` when no run under `runs` has finished.
pub fn summary(run_dirs: &[std::path::PathBuf], wall: Option<f64>, peak: Option<f64>) -> Option<String> {
    let (mut flops, mut secs, mut n) = (0.0, 0.0, 0);
    for d in run_dirs {
        if let Ok((f, s)) = of_run(d) {
            flops += f;
            secs += s;
            n += 1;
        }
    }
    if n == 0 || secs <= 0.0 {
        return None;
    }
    let pct = |g: f64| peak.map(|p| format!(" ({:.0}% of the {p:.0} GFLOP/s FMA peak)", 100.0 * g / p)).unwrap_or_default();
    let g = flops / secs / 1e9;
    let mut line = format!("model arithmetic of {n} runs: {:.1} TFLOP; {g:.0} GFLOP/s over their training and evaluation time{}", flops / 1e12, pct(g));
    if let Some(w) = wall.filter(|w| *w > 0.0) {
        let gw = flops / w / 1e9;
        line += &format!("; {gw:.0} GFLOP/s over the bench's wall time{}", pct(gw));
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosa_core::Method;
    use mosa_train::rundir::{BackboneId, DatasetInfo, FORMAT};
    use mosa_train::{RunConfig, RunSpec, Summary, TrainConfig};

    /// A finished run directory as the engine writes it (config.json, summary.json).
    fn run(dir: &Path, kind: MethodKind, kl: f64, max_train: Option<usize>, (train_s, train_ips, eval_s, eval_ips): (f64, f64, f64, f64)) {
        std::fs::create_dir_all(dir).unwrap();
        let train = TrainConfig { resolution: 112, kl_weight: kl, max_train_images: max_train, ..TrainConfig::default() };
        let model = mosa_models::presets::preset("vit-s16").unwrap();
        let spec =
            RunSpec { model_name: "vit-s16".into(), model, weights: None, method: Method::new(kind), dataset: "d".into(), train, skip_unreadable: false };
        let dataset = DatasetInfo { name: "d".into(), classes: 10, style: serde_json::Value::Null, train: 1000, val: None, test: None, fingerprint: None };
        let backbone = BackboneId { model: "vit-s16".into(), weights: None, sha256: None };
        let rd = RunDir::new(dir);
        rd.write_config(&RunConfig { format: FORMAT, run: spec, backbone, dataset, trainable_params: 0, backend: String::new() }).unwrap();
        rd.write_summary(&Summary {
            dataset: "d".into(),
            method: kind.name().into(),
            model: "vit-s16".into(),
            epochs: 1,
            trainable_params: 0,
            merged_trainable_params: 0,
            test_at_best_val: None,
            best_val_epoch: None,
            best_val: None,
            best_test: None,
            best_test_epoch: None,
            last_test: None,
            train_seconds: train_s,
            eval_seconds: eval_s,
            train_images_per_second: train_ips,
            eval_images_per_second: eval_ips,
            head_init: "zero".into(),
            backend: String::new(),
        })
        .unwrap();
    }

    #[test]
    fn counts_each_method_as_mosa_bench_does() {
        let t = tempfile::tempdir().unwrap();
        // ViT-S/16 at 112 px: 49 patches + the class token; per block 24·t·d² (qkv, proj, MLP)
        // + 4·t²·d (scores and P·v); the patch embedding; the head (100 classes)
        let (t_, d) = (50.0, 384.0);
        let forward = 12.0 * (24.0 * t_ * d * d + 4.0 * t_ * t_ * d) + 2.0 * 49.0 * 768.0 * d + 2.0 * d * 1000.0;
        let times = (10.0, 100.0, 2.0, 500.0); // 1,000 images trained, 1,000 scored
        for (kind, kl, train_factor) in [
            (MethodKind::Adapter, 1.0, 2.0 * 1000.0),
            (MethodKind::Mosa, 1.0, 4.0 * 1000.0),
            (MethodKind::Mosa, 0.0, 2.0 * 1000.0),
            (MethodKind::MosaLora, 1.0, 4.0 * 1000.0),
            (MethodKind::Full, 1.0, 3.0 * 1000.0),
            (MethodKind::Sparse, 1.0, 3.0 * 1000.0),
            (MethodKind::Linear, 1.0, 1000.0),
        ] {
            let dir = t.path().join(format!("{kind}{kl}"));
            run(&dir, kind, kl, None, times);
            let (flops, secs) = of_run(&dir).unwrap();
            let want = forward * (train_factor + 1000.0);
            assert!((flops / want - 1.0).abs() < 0.02, "{kind}: {flops:e} vs {want:e}");
            assert_eq!(secs, 12.0);
        }
        // a probe on a subset (`--max-train-images`) computes the subset's features only
        let dir = t.path().join("subset");
        run(&dir, MethodKind::Linear, 1.0, Some(64), times);
        let (flops, _) = of_run(&dir).unwrap();
        assert!((flops / (forward * (64.0 + 1000.0)) - 1.0).abs() < 0.02, "subset probe: {flops:e}");
        let line = summary(&[t.path().join("adapter1"), t.path().join("missing")], Some(24.0), Some(200.0)).unwrap();
        assert!(line.starts_with("model arithmetic of 1 runs"), "{line}");
    }
}
