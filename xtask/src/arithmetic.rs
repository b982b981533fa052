//! The model arithmetic of a grid's finished runs and the rate it was done at: per run, the
//! forward FLOPs of one image (the run's own model config at its resolution,
//! `BackboneConfig::forward_flops`) times the images it pushed through — training: the images
//! seen × 2 (forward and ∂x through the frozen backbone; 3 for `full`, × 2 again for MoSA's two
//! passes), the linear probe: its training images once (features computed once); evaluation: the
//! images scored — divided by the seconds the runs spent training and evaluating. The same count as
//! `mosa bench`'s model GFLOP/s.

use std::path::Path;

use serde_json::Value;

/// (FLOPs, seconds of training and evaluation) of one finished run directory.
pub fn of_run(dir: &Path) -> anyhow::Result<(f64, f64)> {
    let read = |f: &str| -> anyhow::Result<Value> {
        let p = dir.join(f);
        Ok(serde_json::from_str(&std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?)?)
    };
    let (config, summary) = (read("config.json")?, read("summary.json")?);
    let run = &config["run"];
    let train = &run["train"];
    let num = |v: &Value, what: &str| v.as_f64().ok_or_else(|| anyhow::anyhow!("{}: no number `{what}`", dir.display()));
    let resolution = num(&train["resolution"], "run.train.resolution")? as usize;
    let model = mosa_models::presets::config_from_json(&run["model"])?.with_img_size(resolution);
    let forward = model.forward_flops();
    let method = run["method"]["method"].as_str().unwrap_or_default();
    let two_passes = method.starts_with("mosa") && train["kl_weight"].as_f64().unwrap_or(0.0) > 0.0;
    let (train_s, eval_s) = (num(&summary["train_seconds"], "train_seconds")?, num(&summary["eval_seconds"], "eval_seconds")?);
    let trained = num(&summary["train_images_per_second"], "train_images_per_second")? * train_s;
    let scored = num(&summary["eval_images_per_second"], "eval_images_per_second")? * eval_s;
    let train_flops = match method {
        // features once per training image (mosa-train's probe), the head's arithmetic is negligible
        "linear" => {
            let images = num(&config["dataset"]["train"], "dataset.train")?;
            forward * train["max_train_images"].as_f64().map_or(images, |m| m.min(images))
        }
        "full" => 3.0 * forward * trained,
        _ => 2.0 * forward * trained * if two_passes { 2.0 } else { 1.0 },
    };
    Ok((train_flops + forward * scored, train_s + eval_s))
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

    /// A finished run directory with the files `of_run` reads.
    fn run(dir: &Path, method: &str, kl: f64, (train_s, train_ips, eval_s, eval_ips): (f64, f64, f64, f64)) {
        std::fs::create_dir_all(dir).unwrap();
        let model = serde_json::to_value(mosa_models::presets::preset("vit-s16").unwrap()).unwrap();
        let config = serde_json::json!({"run": {"model": model, "method": {"method": method}, "train": {"resolution": 112, "kl_weight": kl}}, "dataset": {"train": 1000}});
        let summary =
            serde_json::json!({"train_seconds": train_s, "train_images_per_second": train_ips, "eval_seconds": eval_s, "eval_images_per_second": eval_ips});
        std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
        std::fs::write(dir.join("summary.json"), summary.to_string()).unwrap();
    }

    #[test]
    fn counts_each_method_as_mosa_bench_does() {
        let t = tempfile::tempdir().unwrap();
        // ViT-S/16 at 112 px: 49 patches + the class token; per block 24·t·d² (qkv, proj, MLP)
        // + 4·t²·d (scores and P·v); the patch embedding; the head (100 classes)
        let (t_, d) = (50.0, 384.0);
        let forward = 12.0 * (24.0 * t_ * d * d + 4.0 * t_ * t_ * d) + 2.0 * 49.0 * 768.0 * d + 2.0 * d * 1000.0;
        let times = (10.0, 100.0, 2.0, 500.0); // 1,000 images trained, 1,000 scored
        for (method, kl, train_factor) in
            [("adapter", 1.0, 2.0 * 1000.0), ("mosa", 1.0, 4.0 * 1000.0), ("mosa", 0.0, 2.0 * 1000.0), ("full", 1.0, 3.0 * 1000.0), ("linear", 1.0, 1000.0)]
        {
            let dir = t.path().join(format!("{method}{kl}"));
            run(&dir, method, kl, times);
            let (flops, secs) = of_run(&dir).unwrap();
            let want = forward * (train_factor + 1000.0);
            assert!((flops / want - 1.0).abs() < 0.02, "{method}: {flops:e} vs {want:e}");
            assert_eq!(secs, 12.0);
        }
        // a probe on a subset (`--max-train-images`) computes the subset's features only
        let dir = t.path().join("subset");
        run(&dir, "linear", 1.0, times);
        let mut c: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        c["run"]["train"]["max_train_images"] = 64.into();
        std::fs::write(dir.join("config.json"), c.to_string()).unwrap();
        let (flops, _) = of_run(&dir).unwrap();
        assert!((flops / (forward * (64.0 + 1000.0)) - 1.0).abs() < 0.02, "subset probe: {flops:e}");
        let line = summary(&[t.path().join("adapter1"), t.path().join("missing")], Some(24.0), Some(200.0)).unwrap();
        assert!(line.starts_with("model arithmetic of 1 runs"), "{line}");
    }
}
