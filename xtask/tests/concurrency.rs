//! Several processes on one results folder at once (the same shard started three times): every
//! cell is trained by exactly one of them, none fails, and the folder ends complete.

use std::process::Command;

mod common;
use common::{mosa_bin, two_tasks_and_a_tiny_vit};

#[test]
fn three_processes_on_one_grid_train_each_cell_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, model) = two_tasks_and_a_tiny_vit(tmp.path());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_xtask"))
            .current_dir(tmp.path())
            .args(["bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,mosa", "--model", model.to_str().unwrap(), "--weights", "none"])
            .args(["--resolution", "16", "--epochs", "3", "--batch-size", "8", "--max-train-images", "16", "--max-eval-images", "8", "--name", "race"])
            .arg("--mosa-bin")
            .arg(mosa_bin())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let children: Vec<_> = (0..3).map(|_| spawn()).collect();
    let outputs: Vec<_> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    let mut trained = 0;
    for o in &outputs {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{err}");
        // `mosa train` prints its last epoch once per run it trains
        trained += err.matches("epoch 3/3").count();
    }
    assert_eq!(trained, 4, "4 cells, each trained by one process");
    let out = tmp.path().join("results/race");
    for t in ["svhn", "clevr_count"] {
        for m in ["linear", "mosa"] {
            let cell = out.join("runs").join(t).join(m);
            let epochs = std::fs::read_to_string(cell.join("metrics.jsonl")).unwrap().lines().count();
            assert_eq!(epochs, 3, "{t}/{m}: one run's epochs, not interleaved");
            assert!(cell.join("summary.json").exists() && !out.join("runs").join(t).join(format!("{m}.claim")).exists());
        }
    }
    let report = Command::new(env!("CARGO_BIN_EXE_xtask")).current_dir(tmp.path()).args(["report", "--results", "results/race"]).output().unwrap();
    assert!(report.status.success() && String::from_utf8_lossy(&report.stderr).contains("4 of 4 cells finished"));
}
