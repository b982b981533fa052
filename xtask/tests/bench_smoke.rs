//! CI-sized smoke test of `cargo xtask bench-vtab`: two tiny tasks, two methods, a tiny random
//! ViT, a few steps; the output files exist and agree with each other; a re-run skips the cells.

use std::path::{Path, PathBuf};
use std::process::Command;

use mosa_testkit::{fixtures, read_json};

mod common;
use common::{mosa_bin, task, two_tasks_and_a_tiny_vit, xtask};
use mosa_data::synth::{ShapesTask, shapes_image, write_vtab_task};

/// The 95% Wilson score interval, written out independently of the harness.
fn wilson(p: f64, n: f64) -> (f64, f64) {
    let z2 = 1.959964f64 * 1.959964;
    let d = 1.0 + z2 / n;
    let c = (p + z2 / (2.0 * n)) / d;
    let h = (z2 * (p * (1.0 - p) / n + z2 / (4.0 * n * n))).sqrt() / d;
    (c - h, c + h)
}

#[test]
fn bench_vtab_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, model) = two_tasks_and_a_tiny_vit(tmp.path());
    let run_with = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(tmp.path())
            .args(["bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,mosa", "--model", model.to_str().unwrap(), "--weights", "none"])
            .args(["--resolution", "16", "--epochs", "2", "--batch-size", "8", "--max-train-images", "16", "--max-eval-images", "8", "--name", "smoke"])
            .args(extra)
            .arg("--mosa-bin")
            .arg(mosa_bin())
            .output()
            .unwrap()
    };
    let run = || run_with(&[]);
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("[4/4] clevr_count / mosa"), "{err}");
    let out = tmp.path().join("results/smoke");
    for f in ["results.md", "results.csv", "results.json", "accuracy.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("| method | svhn | clevr_count |"), "{md}");
    // consistency: the JSON's means are the means of its per-task numbers, and match the CSV
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4);
    for m in j["methods"].as_array().unwrap() {
        let name = m["method"].as_str().unwrap();
        let per: Vec<f64> = ["svhn", "clevr_count"].iter().map(|t| m["tasks"][t]["last_test"].as_f64().unwrap()).collect();
        assert!(per.iter().all(|a| (0.0..=1.0).contains(a)));
        let mean = m["mean"].as_f64().unwrap();
        assert!((mean - (per[0] + per[1]) / 2.0).abs() < 1e-12, "{name}");
        assert!((m["group_means"]["Natural"].as_f64().unwrap() - per[0]).abs() < 1e-12);
        assert!((m["group_means"]["Structured"].as_f64().unwrap() - per[1]).abs() < 1e-12);
        assert!((m["mean_of_groups"].as_f64().unwrap() - mean).abs() < 1e-12);
        let mut cells = Vec::new();
        for (t, a) in ["svhn", "clevr_count"].iter().zip(&per) {
            let row: Vec<&str> = csv.lines().find(|l| l.starts_with(&format!("{name},{t},"))).unwrap().split(',').collect();
            let last: f64 = row[6].parse().unwrap();
            assert_eq!(last, *a);
            // each accuracy with its images (the 8 scored of the test split) and its Wilson interval
            let (seeds, n, lo, hi): (usize, f64, f64, f64) =
                (row[13].parse().unwrap(), row[14].parse().unwrap(), row[17].parse().unwrap(), row[18].parse().unwrap());
            let (wl, wh) = wilson(*a, 8.0);
            assert_eq!((seeds, n), (1, 8.0), "{name} {t}");
            assert!((lo - wl).abs() < 1e-9 && (hi - wh).abs() < 1e-9, "{name} {t}: [{lo}, {hi}] vs Wilson [{wl}, {wh}]");
            cells.push(format!("{:.1} ±{:.1}", 100.0 * a, 50.0 * (wh - wl)));
        }
        assert!(md.contains(&format!("| {name} | {} | {} |", cells[0], cells[1])), "{md}");
        // the mean's interval: normal, from the two binomial variances
        let se = (per.iter().map(|p| p * (1.0 - p) / 8.0).sum::<f64>()).sqrt() / 2.0;
        let ci = m["mean_ci95"].as_array().unwrap();
        assert!(
            (ci[0].as_f64().unwrap() - (mean - 1.959964 * se)).abs() < 1e-9 && (ci[1].as_f64().unwrap() - (mean + 1.959964 * se)).abs() < 1e-9,
            "{name}: {ci:?}"
        );
    }
    assert!(md.contains("Test images per task: svhn 8, clevr_count 8."), "{md}");
    let svg = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 4 + 2, "4 bars + 2 legend boxes");
    // learning curves: every cell's two epochs, the loss as in its metrics.jsonl; evaluated only
    // after the last epoch (the default --eval-every 5 is longer than the run)
    let curves = std::fs::read_to_string(out.join("curves.csv")).unwrap();
    assert_eq!(curves.lines().count(), 1 + 4 * 2, "{curves}");
    for l in curves.lines().skip(1) {
        let f: Vec<&str> = l.split(',').collect();
        let metrics = std::fs::read_to_string(out.join("runs").join(f[0]).join(f[1]).join("metrics.jsonl")).unwrap();
        let e: serde_json::Value = serde_json::from_str(metrics.lines().nth(f[3].parse::<usize>().unwrap() - 1).unwrap()).unwrap();
        assert_eq!(f[5].parse::<f64>().unwrap(), e["train_loss"].as_f64().unwrap(), "{l}");
        assert_eq!(f[8].is_empty(), f[3] == "1", "{l}: test accuracy only after the last epoch");
    }
    let loss = std::fs::read_to_string(out.join("loss.svg")).unwrap();
    assert_eq!(loss.matches("<polyline").count(), 4, "one line per cell");
    assert!(md.contains("| method | svhn | clevr_count |\n|---|---:|---:|\n| linear | — | — |"), "runs under 4 epochs have no plateau share: {md}");
    // finished cells are skipped on a re-run
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.matches("done, skipped").count() == 4, "{err}");
    // a second seed: the four first-seed cells are kept, four more run beside them
    let o = run_with(&["--seeds", "2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.matches("done, skipped").count() == 4 && err.contains("[8/8] clevr_count / mosa / seed 3408"), "{err}");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    for name in ["linear", "mosa"] {
        for t in ["svhn", "clevr_count"] {
            let acc = |dir: &str| read_json(&out.join("runs").join(t).join(dir).join("summary.json"))["last_test"].as_f64().unwrap();
            let (a, b) = (acc(name), acc(&format!("{name}@seed3408")));
            let row: Vec<&str> = csv.lines().find(|l| l.starts_with(&format!("{name},{t},"))).unwrap().split(',').collect();
            let (seeds, mean, sd, lo, hi): (usize, f64, f64, f64, f64) =
                (row[13].parse().unwrap(), row[15].parse().unwrap(), row[16].parse().unwrap(), row[17].parse().unwrap(), row[18].parse().unwrap());
            let m = (a + b) / 2.0;
            let s = ((a - m).powi(2) + (b - m).powi(2)).sqrt(); // n − 1 = 1
            let half = (std::f64::consts::PI * 0.475).tan() * s / 2f64.sqrt(); // t(0.975, 1 df): the Cauchy quantile tan(π(p − ½))
            assert_eq!(seeds, 2);
            assert!(
                (mean - m).abs() < 1e-12 && (sd - s).abs() < 1e-12 && (lo - (m - half)).abs() < 1e-9 && (hi - (m + half)).abs() < 1e-9,
                "{name} {t}: {row:?} vs {a}, {b}"
            );
        }
    }
    // the gather: `cargo xtask report` rebuilds the grid from its manifest and writes the same tables
    let md_before = std::fs::read_to_string(out.join("results.md")).unwrap();
    let report = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_xtask")).current_dir(tmp.path()).args(["report", "--results", "results/smoke"]).args(extra).output().unwrap()
    };
    let o = report(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.contains("8 of 8 cells finished"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md_before);
    // another grid in the same folder is refused by its manifest, naming the difference
    let o = run_with(&[]); // fewer cells than the grid grown by --seeds 2
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("the folder's grid has cell svhn/linear@seed3408"));
    let o = run_with(&["--seeds", "2", "--shard", "0/2"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("split into 1 shards, this process into 2"));
    // a changed setting is refused, not silently kept: each finished cell recorded its arguments,
    // checked before the manifest is touched
    std::fs::remove_file(out.join("manifest.json")).unwrap();
    let o = run_with(&["--lr", "0.02"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cell_args.txt: this cell was trained with other arguments (`--lr 0.005`, now `--lr 0.02`)"), "{err}");
    // that refusal came before the manifest was touched: none was written for the refused grid
    assert!(!out.join("manifest.json").exists());
    assert!(run_with(&["--seeds", "2"]).status.success());
    // a cell gone: the report lists it and fails unless --partial
    std::fs::remove_dir_all(out.join("runs/svhn/mosa@seed3408")).unwrap();
    let o = report(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("7 of 8 cells finished") && err.contains("svhn/mosa@seed3408: not started"), "{err}");
    assert!(report(&["--partial"]).status.success());
    // LoRA trains at its own lr (the CPU default's 0.001), every other method at the shared one
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(tmp.path())
        .args([
            "bench-vtab",
            "--root",
            root.to_str().unwrap(),
            "--tasks",
            "svhn",
            "--methods",
            "linear,lora",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "none",
        ])
        .args([
            "--resolution",
            "16",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-train-images",
            "8",
            "--max-eval-images",
            "8",
            "--name",
            "smoke-lora",
            "--mosa-bin",
        ])
        .arg(mosa_bin())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lr = |m: &str| read_json(&tmp.path().join("results/smoke-lora/runs/svhn").join(m).join("config.json"))["run"]["train"]["lr"].as_f64().unwrap();
    assert_eq!((lr("linear"), lr("lora")), (0.005, 0.001));
    assert!(String::from_utf8_lossy(&o.stdout).contains("lr 0.005 (lora 0.001)"));
}

/// `--protocol vpt` on two tiny tasks: per task and method every lr of the grid is trained on
/// train800 and scored on val200; the chosen lr is the one with the best last-epoch val200
/// accuracy (ties: the smaller), recomputed here from the search runs' own metrics; the reported
/// run trains on train800val200 at it; the table and CSVs carry it; a re-run skips every run.
#[test]
fn bench_vtab_vpt_protocol_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, model) = two_tasks_and_a_tiny_vit(tmp.path());
    let run = || {
        let a = ["bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,adapter", "--model", model.to_str().unwrap(), "--weights", "none"];
        xtask(
            tmp.path(),
            &[&a[..], &["--resolution", "16", "--epochs", "2", "--batch-size", "8", "--protocol", "vpt", "--lr-grid", "0.001,0.05,1x", "--name", "vpt"]]
                .concat(),
        )
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // 2 tasks x 2 methods x 3 lrs searched, then 4 reported runs
    assert!(err.contains("[12/16] clevr_count / adapter / search lr 0.05") && err.contains("[16/16] clevr_count / adapter (lr "), "{err}");
    let out = tmp.path().join("results/vpt");
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let sweep = std::fs::read_to_string(out.join("lr_sweep.csv")).unwrap();
    assert_eq!(sweep.lines().count(), 1 + 12, "{sweep}");
    let md = String::from_utf8_lossy(&o.stdout);
    for t in ["svhn", "clevr_count"] {
        for m in ["linear", "adapter"] {
            // each search run: train800 (16 images), its last epoch scored on val200 (8 images)
            let mut trials = Vec::new();
            for lr in [0.001, 0.005, 0.05] {
                let dir = out.join("sweep").join(t).join(m).join(format!("lr{lr}"));
                let cfg = read_json(&dir.join("config.json"));
                assert_eq!(cfg["run"]["train"]["train_split"], "train800", "{t} {m} {lr}");
                assert_eq!(cfg["run"]["train"]["lr"].as_f64().unwrap(), lr);
                assert_eq!((cfg["dataset"]["train"].as_u64(), cfg["dataset"]["val"].as_u64()), (Some(16), Some(8)));
                let last = std::fs::read_to_string(dir.join("metrics.jsonl"))
                    .unwrap()
                    .lines()
                    .last()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                    .unwrap();
                let val = last["val_acc"].as_f64().unwrap();
                assert!(sweep.contains(&format!("{t},{m},{lr},{val},")), "{sweep}");
                trials.push((lr, val));
            }
            // the best val; on a tie the first (smallest) lr keeps it
            let best = trials.iter().fold(trials[0], |b, x| if x.1 > b.1 { *x } else { b });
            let cfg = read_json(&out.join("runs").join(t).join(m).join("config.json"));
            assert_eq!(cfg["run"]["train"]["lr"].as_f64().unwrap(), best.0, "{t} {m}: {trials:?}");
            assert!(cfg["run"]["train"].get("train_split").is_none(), "the reported run trains on the dataset's training split");
            assert_eq!(cfg["dataset"]["train"].as_u64(), Some(24), "train800val200");
            let row: Vec<&str> = csv.lines().find(|l| l.starts_with(&format!("{m},{t},"))).unwrap().split(',').collect();
            assert_eq!(row[19].parse::<f64>().unwrap(), best.0, "the CSV's lr column");
            assert!(
                sweep.contains(&format!("{t},{m},{},{},", best.0, best.1))
                    && sweep.lines().filter(|l| l.starts_with(&format!("{t},{m},")) && l.ends_with(",true")).count() == 1,
                "{sweep}"
            );
            assert!(md.contains(&format!("**{}** (", best.0)), "{md}");
        }
    }
    assert!(out.join("lr_sweep.svg").exists());
    assert!(md.contains("protocol vpt (lr grid 0.001, 0.05, 1x"), "{md}");
    // a re-run skips every run, searched and reported
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.matches("done, skipped").count() == 16, "{err}");
    // the VPT search needs VTAB's train800: bench-fgvc refuses it
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .current_dir(tmp.path())
        .args(["bench-fgvc", "--root", root.to_str().unwrap(), "--protocol", "vpt", "--mosa-bin", "/nonexistent"])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--protocol vpt searches on VTAB-1k's train800"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// bench-vtab takes every family: a tiny random Swin and ConvNeXt (timm-style configs), linear
/// and MoSA on two tasks.
#[test]
fn bench_vtab_runs_swin_and_convnext() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tasks");
    task(&root, "svhn", ShapesTask::Position);
    task(&root, "clevr_count", ShapesTask::Count);
    let configs = [
        (
            "swin",
            r#"{"source": "timm SwinTransformer", "kwargs": {"img_size": 16, "patch_size": 2, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4], "window_size": 4}}"#,
        ),
        ("convnext", r#"{"source": "timm ConvNeXt", "kwargs": {"depths": [1, 1], "dims": [8, 16]}}"#),
    ];
    for (family, json) in configs {
        let model = tmp.path().join(format!("{family}.json"));
        std::fs::write(&model, json).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(tmp.path())
            .args(["bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,mosa", "--model", model.to_str().unwrap(), "--weights", "none"])
            .args(["--resolution", "16", "--epochs", "1", "--batch-size", "8", "--max-train-images", "16", "--max-eval-images", "8", "--name", family])
            .arg("--mosa-bin")
            .arg(mosa_bin())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{family}: {err}");
        let j = read_json(&tmp.path().join("results").join(family).join("results.json"));
        for m in j["methods"].as_array().unwrap() {
            for t in ["svhn", "clevr_count"] {
                let a = m["tasks"][t]["last_test"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&a), "{family} {}: {a}", m["method"]);
            }
        }
        let cfg = read_json(&tmp.path().join("results").join(family).join("runs/svhn/mosa/config.json"));
        assert_eq!(cfg["run"]["model"]["family"], family);
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

/// bench-experts on three tiny generated tasks and timm's tiny ViT fixture (a base weights file:
/// a full expert is W − W0 of it): three kinds, two merge methods, scaling over 2-task subsets,
/// held-out probes; every number in the tables is checked against the runs and results it comes
/// from, and a re-run skips every step.
#[test]
fn bench_experts_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tasks");
    let tasks = ["svhn", "clevr_count", "dsprites_loc"];
    for (t, k) in tasks.iter().zip([ShapesTask::Position, ShapesTask::Count, ShapesTask::Position]) {
        let imgs: Vec<_> = (0..96).map(|i| shapes_image(k, 32, 4, i)).collect();
        write_vtab_task(&root.join(t), &imgs, 40, 8, false).unwrap();
    }
    let f = fixtures();
    let run = || {
        let a = [
            "bench-experts",
            "--root",
            root.to_str().unwrap(),
            "--kinds",
            "sparse,lora,full",
            "--merges",
            "overlap-mean,ties",
            "--scaling-sizes",
            "2",
            "--scaling-seeds",
            "2",
        ];
        let (vit, weights) = (f.join("vit.json"), f.join("vit.safetensors"));
        let b = ["--model", vit.to_str().unwrap(), "--weights", weights.to_str().unwrap()];
        xtask(
            tmp.path(),
            &[
                &a[..],
                &b,
                &[
                    "--resolution",
                    "32",
                    "--epochs",
                    "3",
                    "--batch-size",
                    "8",
                    "--max-train-images",
                    "48",
                    "--max-eval-images",
                    "48",
                    "--sparse-lr",
                    "0.01",
                    "--lora-lr",
                    "0.02",
                    "--full-lr",
                    "0.001",
                    "--head-lr",
                    "0.05",
                    "--name",
                    "smoke",
                ],
            ]
            .concat(),
        )
    };
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = tmp.path().join("results/smoke");
    for f in ["results.md", "results.csv", "results.json", "experts.csv", "scaling.svg", "scaling-sparse.svg", "scaling-lora.svg", "scaling-full.svg"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let j = read_json(&out.join("results.json"));
    let summary = |dir: PathBuf| read_json(&dir.join("summary.json"));
    // the experts alone are their runs' last test accuracy
    let mut alone = std::collections::HashMap::new();
    for e in j["experts"].as_array().unwrap() {
        let (k, t) = (e["kind"].as_str().unwrap(), e["task"].as_str().unwrap());
        let dir = out.join("runs").join(t).join(k);
        assert_eq!(e["individual"], summary(dir.clone())["last_test"], "{k} {t}");
        assert_eq!(e["stored_bytes"].as_u64().unwrap(), std::fs::metadata(dir.join("expert.safetensors")).unwrap().len());
        assert_eq!(e["test_images"], 48);
        alone.insert((k.to_string(), t.to_string()), e["individual"].as_f64().unwrap());
    }
    assert_eq!(alone.len(), 9);
    // in distribution: 3 kinds x 2 methods; normalised = merged / alone, the means are the means
    let rows = j["in_distribution"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let md = String::from_utf8_lossy(&o.stdout);
    for r in rows {
        let (k, m) = (r["kind"].as_str().unwrap(), r["method"].as_str().unwrap());
        let per: Vec<(f64, f64)> = tasks
            .iter()
            .map(|t| {
                let c = &r["tasks"][t];
                let (merged, a) = (c["merged"].as_f64().unwrap(), alone[&(k.to_string(), t.to_string())]);
                assert!((0.0..=1.0).contains(&merged));
                // undefined where the expert alone scored 0
                let norm = if a > 0.0 {
                    c["normalised"].as_f64().unwrap()
                } else {
                    assert!(c["normalised"].is_null());
                    merged
                };
                if a > 0.0 {
                    assert!(close(norm, merged / a), "{k} {m} {t}");
                }
                assert_eq!(c["test_images"], 48);
                (merged, norm)
            })
            .collect();
        assert!(close(r["mean_accuracy"].as_f64().unwrap(), per.iter().map(|p| p.0).sum::<f64>() / 3.0), "{k} {m}");
        let defined: Vec<f64> = tasks.iter().zip(&per).filter(|(t, _)| alone[&(k.to_string(), t.to_string())] > 0.0).map(|(_, p)| p.1).collect();
        if !defined.is_empty() {
            assert!(close(r["mean_normalised"].as_f64().unwrap(), defined.iter().sum::<f64>() / defined.len() as f64), "{k} {m}");
        }
        let res = read_json(&out.join("merges").join(k).join(m).join("all/result.json"));
        for (t, p) in tasks.iter().zip(&per) {
            assert_eq!(res["accuracy"][t].as_f64().unwrap(), p.0);
        }
        assert!(md.contains(&format!("| {k} | {m} | {:.1} (", 100.0 * per[0].0)), "{md}");
    }
    // scaling: 2 seeded 2-task subsets and all 3; the 3-expert point is the overlap-mean row
    for k in ["sparse", "lora", "full"] {
        let pts: Vec<&serde_json::Value> = j["scaling"].as_array().unwrap().iter().filter(|p| p["kind"] == k).collect();
        assert_eq!(pts.iter().map(|p| p["experts"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
        let subsets = pts[0]["subsets"].as_array().unwrap();
        assert_eq!(subsets.len(), 2);
        let vals: Vec<f64> = subsets.iter().map(|s| s["mean_normalised"].as_f64().unwrap()).collect();
        assert!(close(pts[0]["mean"].as_f64().unwrap(), (vals[0] + vals[1]) / 2.0));
        let all = rows.iter().find(|r| r["kind"] == k && r["method"] == "overlap-mean").unwrap();
        assert!(close(pts[1]["mean"].as_f64().unwrap(), all["mean_normalised"].as_f64().unwrap()));
        assert_eq!(pts[1]["std"].as_f64().unwrap(), 0.0);
    }
    // held-out: the base probe is the `linear` run; each kind's probe trained on a merge of the others
    for h in j["held_out"].as_array().unwrap() {
        let t = h["task"].as_str().unwrap();
        assert_eq!(h["base"], summary(out.join("runs").join(t).join("linear"))["last_test"]);
        for k in ["sparse", "lora", "full"] {
            let dir = out.join("heldout").join(k).join(t);
            assert_eq!(h["merged"][k], summary(dir.clone())["last_test"]);
            let cfg = read_json(&dir.join("config.json"));
            assert!(cfg["run"]["weights"].as_str().unwrap().ends_with(&format!("overlap-mean/without-{t}/merged.safetensors")), "{cfg}");
        }
    }
    assert_eq!(j["held_out"].as_array().unwrap().len(), 3);
    // the merged models were deleted once used
    let leftover = walk(&out.join("merges")).into_iter().filter(|p| p.ends_with("merged.safetensors")).count();
    assert_eq!(leftover, 0);
    // a re-run skips everything: 12 training runs, the merges, 9 probes
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let total: usize = err.lines().find_map(|l| l.strip_prefix("[1/").and_then(|r| r.split(']').next()).and_then(|n| n.parse().ok())).unwrap();
    assert_eq!(err.matches("done, skipped").count(), total, "{err}");
    assert!(err.contains("for 0 steps run"), "{err}");
    // a merge records its experts' SHA-256: one that no longer matches is merged again, and a
    // held-out probe trained on a stale merge is trained again
    for sub in ["sparse/overlap-mean/all", "lora/overlap-mean/without-svhn"] {
        let p = out.join("merges").join(sub).join("result.json");
        let mut r = read_json(&p);
        r["experts"]["clevr_count"] = serde_json::json!("0".repeat(64));
        std::fs::write(&p, r.to_string()).unwrap();
    }
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let ran: Vec<&str> = err.lines().filter(|l| l.starts_with('[') && !l.contains("done, skipped")).collect();
    assert_eq!(ran.len(), 3, "{err}");
    assert!(
        ran[0].contains("merge sparse overlap-mean of all (evaluated)")
            && ran[1].contains("merge lora overlap-mean of without-svhn (for a probe)")
            && ran[2].contains("held-out svhn: probe on merged lora"),
        "{ran:?}"
    );
    assert!(err.contains("for 3 steps run"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() { v.extend(walk(&p)) } else { v.push(p) }
    }
    v
}

/// bench-experts under `--protocol vpt`: every expert kind and the base probe search their lr on
/// val200; each expert is trained at its chosen lr, and each held-out probe at the lr its task's
/// base probe chose (so base and merged probes differ only in the backbone).
#[test]
fn bench_experts_vpt_protocol_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = two_tasks_and_a_tiny_vit(tmp.path());
    let f = fixtures();
    let (vit, weights) = (f.join("vit.json"), f.join("vit.safetensors"));
    let a = [
        "bench-experts",
        "--root",
        root.to_str().unwrap(),
        "--kinds",
        "lora",
        "--merges",
        "overlap-mean",
        "--scaling-sizes",
        "2",
        "--scaling-seeds",
        "1",
        "--model",
        vit.to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
    ];
    let b = [
        "--resolution",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--lora-lr",
        "0.02",
        "--head-lr",
        "0.05",
        "--protocol",
        "vpt",
        "--lr-grid",
        "0.5x,1x",
        "--name",
        "evpt",
    ];
    let o = xtask(tmp.path(), &[&a[..], &b].concat());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let out = tmp.path().join("results/evpt");
    let sweep = std::fs::read_to_string(out.join("lr_sweep.csv")).unwrap();
    for t in ["svhn", "clevr_count"] {
        let chosen = |m: &str| -> f64 {
            let rows: Vec<Vec<String>> =
                sweep.lines().filter(|l| l.starts_with(&format!("{t},{m},"))).map(|l| l.split(',').map(String::from).collect()).collect();
            assert_eq!(rows.len(), 2, "{sweep}");
            // the best val200 accuracy, the smaller lr on a tie (rows are in ascending lr)
            let best = rows.iter().fold(&rows[0], |b, r| if r[3].parse::<f64>().unwrap() > b[3].parse::<f64>().unwrap() { r } else { b });
            assert_eq!(best[5], "true", "{sweep}");
            best[2].parse().unwrap()
        };
        let (lora, linear) = (chosen("lora"), chosen("linear"));
        assert!([0.01, 0.02].contains(&lora) && [0.025, 0.05].contains(&linear), "{lora} {linear}");
        let lr = |dir: PathBuf| read_json(&dir.join("config.json"))["run"]["train"]["lr"].as_f64().unwrap();
        assert_eq!(lr(out.join("runs").join(t).join("lora")), lora);
        assert_eq!(lr(out.join("runs").join(t).join("linear")), linear);
        assert_eq!(lr(out.join("heldout/lora").join(t)), linear, "the held-out probe trains at its base probe's lr");
    }
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("protocol vpt") && md.contains("| lora |") && md.contains("## Training"), "{md}");
}
