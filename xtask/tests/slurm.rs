//! `cargo xtask bench-vtab` as a SLURM array job on a real scheduler (issue #31): a smoke grid as
//! a 3-task array plus a gather job (`--dependency=afterok`) gives the single-machine table; with
//! one array task cancelled mid-cell, a resubmission finishes the grid without retraining the
//! finished cells. The jobs are the repository's `examples/slurm/bench-vtab.sbatch` and
//! `gather.sbatch` (without a GPU). It needs a running cluster: `scripts/slurm-ci.sh` (run by `.ci/run`) starts a
//! single-node one, runs this test and stops it; a plain `cargo test` lists it as ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

mod common;
use common::{mosa_bin, two_tasks_and_a_tiny_vit};

/// Runs a command to success; its standard output.
fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(o.status.success(), "{cmd:?}: {}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Waits until none of the jobs is queued or running.
fn wait(jobs: &[&str], limit: Duration, logs: &Path) {
    let start = Instant::now();
    loop {
        let left = run(Command::new("squeue").args(["-h", "-o", "%i %T", "-j", &jobs.join(",")]));
        if left.is_empty() {
            return;
        }
        if start.elapsed() > limit {
            panic!("jobs still queued after {limit:?}: {left}\n{}", read_logs(logs));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_logs(dir: &Path) -> String {
    let mut s = String::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        s += &format!("== {}\n{}\n", e.path().display(), std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    s
}

/// `sbatch` of one of the repository's examples (`examples/slurm/`) in `dir` with the test
/// build's xtask (`XTASK`), without a GPU, `extra` options before the script and `args` after it.
fn submit(dir: &Path, example: &str, extra: &[String], args: &[String]) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/slurm").join(example);
    run(Command::new("sbatch")
        .env("XTASK", env!("CARGO_BIN_EXE_xtask"))
        .args(["--parsable", "--gres=none", "--cpus-per-task=1"])
        .arg(format!("--chdir={}", dir.display()))
        .args(extra)
        .arg(example)
        .args(args))
}

/// A job's state while Slurm remembers it (`MinJobAge`).
fn job_state(id: &str) -> String {
    let text = run(Command::new("scontrol").args(["show", "job", id]));
    text.split_whitespace().filter(|w| w.starts_with("JobState=") || w.starts_with("ExitCode=")).collect::<Vec<_>>().join(" ")
}

/// The accuracy columns of a results.csv, by (method, task).
fn accuracies(csv: &Path) -> BTreeMap<(String, String), Vec<String>> {
    let text = std::fs::read_to_string(csv).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep =
        ["test_at_best_val", "best_val_epoch", "best_test", "last_test", "trainable_params", "merged_trainable_params", "test_images", "ci95_low", "ci95_high"];
    let idx: Vec<usize> = keep.iter().map(|k| head.iter().position(|h| h == k).unwrap()).collect();
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            ((f[0].to_string(), f[1].to_string()), idx.iter().map(|&i| f[i].to_string()).collect())
        })
        .collect()
}

fn finished_models(out: &Path) -> BTreeMap<PathBuf, SystemTime> {
    let mut v = BTreeMap::new();
    for task in std::fs::read_dir(out.join("runs")).into_iter().flatten().flatten() {
        for cell in std::fs::read_dir(task.path()).into_iter().flatten().flatten() {
            if cell.path().join("summary.json").exists() {
                v.insert(cell.path(), std::fs::metadata(cell.path().join("summary.json")).unwrap().modified().unwrap());
            }
        }
    }
    v
}

#[test]
#[ignore = "needs a running Slurm cluster: scripts/slurm-ci.sh starts one and runs this test (.ci/run)"]
fn bench_vtab_as_a_slurm_array_gives_the_single_machine_table_and_survives_a_cancelled_task() {
    let tmp = tempfile::Builder::new().prefix("mosa-slurm-test").tempdir_in("/tmp").unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (root, model) = two_tasks_and_a_tiny_vit(dir);
    let xtask = env!("CARGO_BIN_EXE_xtask").to_string();
    let mosa = mosa_bin().display().to_string();
    let grid = |name: &str, epochs: &str| -> Vec<String> {
        [&xtask, "bench-vtab", "--root", root.to_str().unwrap(), "--methods", "linear,mosa", "--model", model.to_str().unwrap(), "--weights", "none"]
            .into_iter()
            .chain(["--resolution", "16", "--epochs", epochs, "--batch-size", "8", "--max-train-images", "16", "--max-eval-images", "8", "--name", name])
            .chain(["--mosa-bin", &mosa])
            .map(String::from)
            .collect()
    };

    // the grid on one machine
    run(Command::new(&xtask).current_dir(dir).args(&grid("single", "2")[1..]));

    // the same grid as a 3-task array, and the gather after it
    let log = |name: &str| format!("--output={}/{name}", logs.display());
    let array = submit(dir, "bench-vtab.sbatch", &["--array=0-2".into(), log("cluster_%A_%a.out")], &grid("cluster", "2")[2..]);
    let gather = submit(dir, "gather.sbatch", &[format!("--dependency=afterok:{array}"), log("gather_%j.out")], &["results/cluster".into()]);
    wait(&[&array, &gather], Duration::from_secs(600), &logs);
    assert_eq!(job_state(&gather), "JobState=COMPLETED ExitCode=0:0", "the gather job\n{}", read_logs(&logs));
    let (single, cluster) = (accuracies(&dir.join("results/single/results.csv")), accuracies(&dir.join("results/cluster/results.csv")));
    assert_eq!(single.len(), 4);
    assert_eq!(cluster, single, "the gathered table is the single-machine one");
    let shards: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cluster_"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .filter_map(|t| t.lines().find(|l| l.starts_with("shard ")).map(String::from))
        .collect();
    assert_eq!(shards.len(), 3, "{shards:?}");
    for i in 0..3 {
        assert!(shards.contains(&format!("shard {i}/3 (SLURM array)")), "{shards:?}");
    }

    // cancel array task 1 in the middle of one of its cells (longer cells: 200 epochs)
    let killed = |n: &str| submit(dir, "bench-vtab.sbatch", &["--array=0-2".into(), log(&format!("killed{n}_%A_%a.out"))], &grid("killed", "200")[2..]);
    let job = killed("");
    let out = dir.join("results/killed");
    let start = Instant::now();
    let victim = loop {
        let claimed = std::fs::read_dir(out.join("runs"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|t| std::fs::read_dir(t.path()).into_iter().flatten().flatten())
            .find_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok().filter(|_| e.path().extension().is_some_and(|x| x == "claim"))?;
                text.contains(&format!("\"{job}_1\"")).then(|| e.path())
            });
        if let Some(c) = claimed {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(300), "array task 1 never claimed a cell\n{}", read_logs(&logs));
        std::thread::sleep(Duration::from_millis(100));
    };
    // at once: task 1 holds the claim, so it is inside that cell (seconds long at 200 epochs)
    run(Command::new("scancel").arg(format!("{job}_1")));
    wait(&[&job], Duration::from_secs(600), &logs);
    let report = Command::new(&xtask).current_dir(dir).args(["report", "--results", "results/killed"]).output().unwrap();
    let err = String::from_utf8_lossy(&report.stderr);
    assert!(!report.status.success() && err.contains(" of 4 cells finished") && !err.contains("4 of 4"), "the cancelled task left cells open: {err}");
    // a claim is left behind when the task died holding it (its trainer may also have died first,
    // and the task released that cell's claim as a failed run before it was killed itself)
    let left: Vec<PathBuf> = std::fs::read_dir(out.join("runs"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|t| std::fs::read_dir(t.path()).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "claim"))
        .collect();
    eprintln!("cancelled in {} (claims left: {left:?})", victim.display());
    let before = finished_models(&out);
    assert!(!before.is_empty() && before.len() < 4, "{before:?}");

    // the resubmission finishes the grid, taking the dead task's claim over, retraining nothing finished
    let again = killed("-again");
    wait(&[&again], Duration::from_secs(600), &logs);
    let report = Command::new(&xtask).current_dir(dir).args(["report", "--results", "results/killed"]).output().unwrap();
    assert!(report.status.success(), "{}\n{}", String::from_utf8_lossy(&report.stderr), read_logs(&logs));
    let after = finished_models(&out);
    assert_eq!(after.len(), 4);
    for (cell, t) in &before {
        assert_eq!(after[cell], *t, "{} was retrained", cell.display());
    }
    let resumed = read_logs(&logs);
    assert_eq!(resumed.matches("taking over the claim of").count(), left.len(), "every claim the cancelled task left is taken over\n{resumed}");
    assert!(left.iter().all(|c| !c.exists()), "no claim is left at the end");
}
