//! CI-sized smoke test of `cargo xtask bench-vtab`: two tiny tasks, two methods, a tiny random
//! ViT, a few steps; the output files exist and agree with each other; a re-run skips the cells.

use std::path::{Path, PathBuf};
use std::process::Command;

use mosa_data::synth::{ShapesTask, shapes_image, write_vtab_task};

fn mosa_bin() -> PathBuf {
    // target/<profile>/deps/bench_smoke-… -> target/<profile>/mosa (built by the workspace's tests)
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("mosa");
    // up to date with the sources (a no-op when `cargo test --workspace` just built it)
    let st = Command::new(env!("CARGO")).args(["build", "--quiet", "-p", "mosa-cli"]).current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
    assert!(st.success());
    bin
}

fn task(root: &Path, name: &str, kind: ShapesTask) {
    let imgs: Vec<_> = (0..40).map(|i| shapes_image(kind, 16, 9, i)).collect();
    write_vtab_task(&root.join(name), &imgs, 16, 8, false).unwrap();
}

#[test]
fn bench_vtab_smoke() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("tasks");
    task(&root, "svhn", ShapesTask::Position);
    task(&root, "clevr_count", ShapesTask::Count);
    let model = tmp.path().join("tiny.json");
    std::fs::write(&model, r#"{"kwargs": {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}"#).unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(tmp.path())
            .args(["bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,mosa", "--model", model.to_str().unwrap(), "--weights", "none"])
            .args(["--resolution", "16", "--epochs", "2", "--batch-size", "8", "--max-train-images", "16", "--max-eval-images", "8", "--name", "smoke"])
            .arg("--mosa-bin")
            .arg(mosa_bin())
            .output()
            .unwrap()
    };
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
        for (t, a) in ["svhn", "clevr_count"].iter().zip(&per) {
            let row = csv.lines().find(|l| l.starts_with(&format!("{name},{t},"))).unwrap();
            let last: f64 = row.split(',').nth(6).unwrap().parse().unwrap();
            assert_eq!(last, *a);
        }
        assert!(md.contains(&format!("| {name} | {:.1} | {:.1} |", 100.0 * per[0], 100.0 * per[1])), "{md}");
    }
    let svg = std::fs::read_to_string(out.join("accuracy.svg")).unwrap();
    assert_eq!(svg.matches("<rect x=").count(), 4 + 2, "4 bars + 2 legend boxes");
    // finished cells are skipped on a re-run
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && err.matches("done, skipped").count() == 4, "{err}");
}
