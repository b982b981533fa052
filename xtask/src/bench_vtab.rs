//! `cargo xtask bench-vtab` / `bench-fgvc`: a grid of `mosa train` runs (task × method), each
//! in its own run directory (kept; finished cells are skipped, interrupted ones resumed), then
//! the paper-style table (Markdown/CSV/JSON) and a plot (SVG) under `results/<name>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use mosa_train::RunDir;
use serde_json::{Value, json};

use crate::protocol::Protocol;
use crate::stats::{Scored, mean, mean_interval};
use crate::table::Markdown;

/// The published group means (ViT-B/16 IN-21k), spec §8: MoSA from SNELL/DA-VPT reprints,
/// baselines from the VPT paper (arXiv 2203.12119, Table 1). Per-task numbers are not known.
pub const PUBLISHED_VTAB: &[(&str, [f64; 4])] = &[
    ("mosa", [79.9, 84.0, 50.3, 71.4]),
    ("full", [75.9, 83.4, 47.6, 69.0]),
    ("linear", [68.9, 77.2, 26.8, 57.6]),
    ("bitfit", [73.3, 78.3, 44.1, 65.2]),
    ("vpt-shallow", [76.8, 79.7, 47.0, 67.8]),
    ("vpt-deep", [78.5, 82.4, 55.0, 72.0]),
];

#[derive(Debug, Clone)]
pub struct Grid {
    pub root: PathBuf,
    pub kind: &'static str, // "vtab" or "fgvc"
    pub tasks: Vec<String>,
    pub methods: Vec<String>,
    pub out: PathBuf,
    pub shard: (usize, usize),
    /// Arguments passed to every `mosa train` (model, weights, recipe).
    pub train_args: Vec<String>,
    /// Further arguments per method (bench-experts: each expert kind's learning rates).
    pub method_args: BTreeMap<String, Vec<String>>,
    /// Further arguments per task (the published per-dataset FGVC settings).
    pub task_args: BTreeMap<String, Vec<String>>,
    pub settings: String,
    pub full: bool,
    /// Training seeds per cell: the recipe's seed, then seed + 1, … (`--seeds N`).
    pub seeds: usize,
    /// How each cell's learning rate is chosen (`--protocol`).
    pub protocol: Protocol,
}

/// The reference's FGVC settings per dataset (spec §5): r 64, N 4, share down, and
/// CUB lr 0.001, NABirds 0.0005, Flowers 0.005, Dogs 0.0005; Cars N 2, share up, DEEPREG, lr 0.005.
pub fn fgvc_task_args(task: &str) -> Vec<String> {
    let info = mosa_data::registry::lookup_fgvc(task);
    let lr = match info.map(|i| i.name) {
        Some("CUB_200_2011") => "0.001",
        Some("nabirds") | Some("Stanford-dogs") => "0.0005",
        _ => "0.005",
    };
    let mut v: Vec<String> = ["--r", "64", "--lr", lr].map(String::from).to_vec();
    if info.map(|i| i.name) == Some("Stanford-cars") {
        v.extend(["--experts", "2", "--share", "up", "--deepreg"].map(String::from));
    }
    v
}

/// Tasks under `root`: the MANIFEST's order if there is one, else sorted sub-folders with lists.
pub fn discover_tasks(root: &Path, kind: &str) -> anyhow::Result<Vec<String>> {
    if let Ok(m) = mosa_data::manifest::Manifest::read(&root.join("MANIFEST")) {
        return Ok(m.tasks.into_iter().map(|t| t.name).collect());
    }
    let marker = if kind == "vtab" { "test.txt" } else { "test.json" };
    let mut v: Vec<String> = std::fs::read_dir(root)
        .with_context(|| format!("reading {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(marker).exists())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    if kind == "vtab" {
        // the published order
        let order: Vec<&str> = mosa_data::registry::VTAB_TASKS.iter().chain(mosa_data::registry::MINI_VTAB_TASKS.iter()).map(|t| t.name).collect();
        v.sort_by_key(|t| (mosa_data::registry::lookup_task(t).ok().and_then(|i| order.iter().position(|n| *n == i.name)).unwrap_or(usize::MAX), t.clone()));
    } else {
        v.sort();
    }
    if v.is_empty() {
        bail!("no tasks under {} (expected <task>/{marker})", root.display());
    }
    Ok(v)
}

pub fn fmt_eta(s: f64) -> String {
    let s = s.max(0.0) as u64;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Runs `mosa <args>` and returns (success, peak RSS in MiB).
pub fn run_mosa(mosa: &Path, args: &[String]) -> anyhow::Result<(bool, f64)> {
    let child = Command::new(mosa).args(args).spawn().with_context(|| format!("cannot start {}", mosa.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // wait4 gives this child's own peak resident memory (ru_maxrss, KiB on Linux)
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("waiting for mosa: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child);
    Ok((libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, usage.ru_maxrss as f64 / 1024.0))
}

/// One `mosa train` run of a benchmark: its run directory and the arguments of a fresh run
/// (an interrupted one is resumed with its saved settings, a finished one skipped).
#[derive(Debug, Clone)]
pub struct Cell {
    pub label: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
}

impl Grid {
    /// The run directory of a task × method × seed index: `runs/<task>/<method>` for the
    /// recipe's seed, `runs/<task>/<method>@seed<s>` for the others.
    pub fn run_dir(&self, task: &str, method: &str, k: usize) -> PathBuf {
        let name = if k == 0 { method.to_string() } else { format!("{method}@seed{}", seed_of(k)) };
        self.out.join("runs").join(task).join(name)
    }

    /// The `mosa train` arguments of a task × method × seed index under the `single` protocol
    /// (the `vpt` protocol changes only their `--lr`, and its search runs' training split).
    pub fn cell_args(&self, task: &str, method: &str, k: usize) -> Vec<String> {
        let mut args: Vec<String> = vec!["--method".into(), method.into(), "--dataset".into(), format!("{}:{}", self.kind, self.root.join(task).display())];
        args.extend(self.train_args.iter().cloned());
        args.extend(self.method_args.get(method).into_iter().flatten().cloned());
        args.extend(self.task_args.get(task).into_iter().flatten().cloned());
        if k > 0 {
            args.extend(["--seed".into(), seed_of(k).to_string()]);
        }
        args
    }

    /// Every setting that defines the grid's runs besides which cells it has, as text (hashed
    /// into the manifest): the seeds count only through the cells, so that `--seeds` may grow a
    /// grid.
    pub fn settings_key(&self) -> String {
        format!("{:?}|{}|{:?}|{:?}|{:?}|{:?}|{}", self.root, self.kind, self.train_args, self.method_args, self.task_args, self.protocol, self.full)
    }

    /// Where every cell of the grid (all shards) stands: finished, claimed by a process (named),
    /// started and left unfinished, or not started.
    pub fn status(&self) -> Vec<(String, CellState)> {
        self.sweep_cells()
            .into_iter()
            .chain(self.cells())
            .map(|c| {
                let state = if RunDir::new(&c.dir).finished() {
                    CellState::Finished
                } else if let Ok(t) = std::fs::read_to_string(crate::claim::claim_path(&c.dir)) {
                    CellState::Claimed(serde_json::from_str::<crate::claim::Holder>(&t).map(|h| h.to_string()).unwrap_or_else(|_| "an unreadable claim".into()))
                } else if c.dir.exists() {
                    CellState::Unfinished
                } else {
                    CellState::Missing
                };
                (cell_id(self, &c), state)
            })
            .collect()
    }

    /// The grid's cells (task-major, then method, then seed), all shards, as the `single`
    /// protocol trains them.
    pub fn cells(&self) -> Vec<Cell> {
        let mut v = Vec::new();
        for task in &self.tasks {
            for method in &self.methods {
                for k in 0..self.seeds.max(1) {
                    let mut label = format!("{task} / {method}");
                    if k > 0 {
                        label += &format!(" / seed {}", seed_of(k));
                    }
                    v.push(Cell { label, dir: self.run_dir(task, method, k), args: self.cell_args(task, method, k) });
                }
            }
        }
        v
    }

    /// The reported runs as the protocol has them now (all shards, [`Grid::cells`]' order): a
    /// cell to run, or (`vpt`) the label of one still waiting for its search to finish.
    /// Refuses the grid if a finished cell was trained with other arguments than this grid
    /// gives it now ([`check_cell_args`]; the reported runs as the protocol has them now).
    pub fn check_recorded_args(&self) -> anyhow::Result<()> {
        self.sweep_cells().iter().try_for_each(check_cell_args)?;
        self.final_cells()?.iter().flatten().try_for_each(check_cell_args)
    }

    pub fn final_cells(&self) -> anyhow::Result<Vec<Result<Cell, String>>> {
        let cells = self.cells();
        if self.protocol == Protocol::Single {
            return Ok(cells.into_iter().map(Ok).collect());
        }
        let mut chosen = BTreeMap::new();
        for s in self.searches()? {
            chosen.insert((s.task.clone(), s.method.clone()), s.chosen);
        }
        let mut v = Vec::new();
        for task in &self.tasks {
            for method in &self.methods {
                for k in 0..self.seeds.max(1) {
                    let cell = &cells[v.len()];
                    v.push(match chosen.get(&(task.clone(), method.clone())).copied().flatten() {
                        Some(lr) => Ok(Cell {
                            label: format!("{} (lr {lr}, chosen on val200)", cell.label),
                            dir: cell.dir.clone(),
                            args: crate::protocol::with_lr(&self.cell_args(task, method, k), lr),
                        }),
                        None => Err(format!("{}: waiting for its lr search", cell.label)),
                    });
                }
            }
        }
        Ok(v)
    }

    /// The training runs this shard has to go through: the search runs, then the reported ones.
    pub fn training_steps(&self) -> usize {
        shard_of(self.sweep_cells(), self.shard).len() + shard_of(self.cells(), self.shard).len()
    }
}

/// Trains this shard's share of the grid under its protocol: the search runs (`vpt`), then the
/// reported runs whose lr is known. Returns the labels of the runs that failed and of those
/// that wait for another shard's search runs.
pub fn run_training(g: &Grid, mosa: &Path, progress: &mut Progress, offset: usize) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let sweep = shard_of(g.sweep_cells(), g.shard);
    let mut failed = run_cells(&sweep, mosa, progress, offset)?;
    let (ready, waiting): (Vec<_>, Vec<_>) = shard_of(g.final_cells()?, g.shard).into_iter().partition(Result::is_ok);
    let ready: Vec<Cell> = ready.into_iter().flatten().collect();
    let waiting: Vec<String> = waiting.into_iter().filter_map(Result::err).collect();
    failed.extend(run_cells(&ready, mosa, progress, offset + sweep.len())?);
    for (k, w) in waiting.iter().enumerate() {
        progress.line(offset + sweep.len() + ready.len() + k, w, false);
    }
    Ok((failed, waiting))
}

/// The training seed of seed index `k`: the recipe's default seed + k.
pub fn seed_of(k: usize) -> u64 {
    mosa_train::TrainConfig::default().seed + k as u64
}

/// The test images a finished run was scored on: its test split, capped by `--max-eval-images`.
pub fn test_images(run: &RunDir) -> Option<usize> {
    let c = run.read_config().ok()?;
    let n = c.dataset.test?;
    Some(c.run.train.eval_images(n))
}

/// Where a cell stands ([`Grid::status`]).
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    Finished,
    /// A process holds its claim (who, since when).
    Claimed(String),
    /// Started, not finished, no claim: failed or killed (a later run resumes it).
    Unfinished,
    /// Not started.
    Missing,
}

/// The cells this shard owns, as [`cell_id`]s: what a run announces and `--list-cells` prints.
pub fn owned_cells(g: &Grid) -> Vec<String> {
    shard_of(g.sweep_cells(), g.shard).into_iter().chain(shard_of(g.cells(), g.shard)).map(|c| cell_id(g, &c)).collect()
}

/// Prints the cells this shard owns, one per line: `task/method[@seed]` for the reported runs,
/// `sweep/…` for the learning-rate search runs (`--list-cells`).
pub fn list_cells(g: &Grid) -> anyhow::Result<()> {
    for c in owned_cells(g) {
        println!("{c}");
    }
    Ok(())
}

/// A cell's name in listings: its run directory under the results folder, `runs/` left out.
pub fn cell_id(g: &Grid, c: &Cell) -> String {
    let rel = c.dir.strip_prefix(&g.out).unwrap_or(&c.dir);
    let rel = rel.strip_prefix("runs").unwrap_or(rel);
    rel.components().map(|p| p.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

/// This shard's share (`i, i+n, i+2n, …`) of a list of work items.
pub fn shard_of<T>(items: Vec<T>, shard: (usize, usize)) -> Vec<T> {
    items.into_iter().enumerate().filter(|(i, _)| i % shard.1 == shard.0).map(|(_, c)| c).collect()
}

/// Progress over a list of work items: `[k/n] label (elapsed, ETA)` lines, the ETA from the
/// items that did run, over the items still to run (skipped ones cost nothing).
pub struct Progress {
    start: Instant,
    ran: usize,
    total: usize,
    /// Items from the current one on that are already done (set by whoever knows it).
    done_ahead: usize,
    /// Rows of the growing table so far.
    rows: Vec<String>,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { start: Instant::now(), ran: 0, total, done_ahead: 0, rows: Vec::new() }
    }

    /// One finished cell as a new row of the table that grows while the grid runs, printed
    /// whole after each cell: its accuracies, speed and time, from its `summary.json`.
    pub fn row(&mut self, k: usize, label: &str, dir: &Path) {
        let Ok(s) = RunDir::new(dir).summary() else { return };
        let pct = |v: Option<f64>| v.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or("-".into());
        self.rows.push(format!(
            "| {} | {label} | {} | {} | {:.0} | {:.0} |",
            k + 1,
            pct(s.test_at_best_val),
            pct(s.last_test),
            s.train_images_per_second,
            s.train_seconds + s.eval_seconds
        ));
        eprintln!(
            "\ncells finished in this process ({} of {}):\n\n| # | cell | test @ best val % | last test % | train img/s | train + eval s |\n|---:|---|---:|---:|---:|---:|\n{}\n",
            self.rows.len(),
            self.total,
            self.rows.join("\n")
        );
    }

    pub fn line(&self, k: usize, label: &str, skipped: bool) {
        let eta = if self.ran > 0 {
            fmt_eta(self.start.elapsed().as_secs_f64() / self.ran as f64 * (self.total - k).saturating_sub(self.done_ahead) as f64)
        } else {
            "?".into()
        };
        eprintln!(
            "[{}/{}] {label}{} (elapsed {}, ETA {eta})",
            k + 1,
            self.total,
            if skipped { ": done, skipped" } else { "" },
            fmt_eta(self.start.elapsed().as_secs_f64())
        );
    }

    pub fn ran(&mut self) {
        self.ran += 1;
    }

    pub fn ran_count(&self) -> usize {
        self.ran
    }

    pub fn elapsed(&self) -> String {
        fmt_eta(self.start.elapsed().as_secs_f64())
    }
}

/// The `mosa train` arguments a finished cell was trained with, one per line, beside its run.
const CELL_ARGS: &str = "cell_args.txt";

/// Refuses a kept cell whose recorded arguments are not this grid's (a finished cell is skipped,
/// so a changed setting would otherwise keep the old result silently). Cells from before the
/// record was kept pass.
pub fn check_cell_args(cell: &Cell) -> anyhow::Result<()> {
    let path = cell.dir.join(CELL_ARGS);
    let Ok(text) = std::fs::read_to_string(&path) else { return Ok(()) };
    let old: Vec<&str> = text.lines().collect();
    if old == cell.args.iter().map(String::as_str).collect::<Vec<_>>() {
        return Ok(());
    }
    let k = old.iter().zip(&cell.args).position(|(a, b)| *a != b.as_str()).unwrap_or(old.len().min(cell.args.len()));
    let (was, now) = (old[k.saturating_sub(1)..old.len().min(k + 1)].join(" "), cell.args[k.saturating_sub(1)..cell.args.len().min(k + 1)].join(" "));
    bail!(
        "{}: this cell was trained with other arguments (`{was}`, now `{now}`); delete the folder to retrain it, or write the results under another --name",
        path.display()
    )
}

/// Empties a run directory to start it afresh, under its run lock: `false` (nothing touched) when
/// another process holds the lock, i.e. is training in it. The lock file itself stays, so a run
/// that starts meanwhile locks the same file (deleting it would let two runs lock two files).
pub fn clear_run_dir(dir: &Path) -> anyhow::Result<bool> {
    if !dir.exists() {
        return Ok(true);
    }
    let run = RunDir::new(dir);
    let _guard = match run.lock() {
        Ok(g) => g,
        Err(mosa_train::Error::Config(_)) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p == run.lock_file() {
            continue;
        }
        if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
    }
    Ok(true)
}

/// How long a cell's claim may show no progress before another process takes it over
/// (`--claim-lease`, minutes; set once by the benchmark's arguments).
pub static CLAIM_LEASE: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();

fn claim_lease() -> std::time::Duration {
    *CLAIM_LEASE.get_or_init(|| std::time::Duration::from_secs(60 * 60))
}

/// Runs the cells: finished ones are skipped, interrupted ones resumed, the rest started afresh,
/// each under a claim ([`crate::claim`]) so that no two processes train one cell;
/// the peak memory of each run is kept beside it. Returns the labels of the cells that failed.
pub fn run_cells(cells: &[Cell], mosa: &Path, progress: &mut Progress, offset: usize) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    let mut done_left = cells.iter().filter(|c| RunDir::new(&c.dir).finished()).count();
    for (k, cell) in cells.iter().enumerate() {
        let run = RunDir::new(&cell.dir);
        check_cell_args(cell)?;
        let done = run.finished();
        progress.done_ahead = done_left;
        progress.line(offset + k, &cell.label, done);
        if done {
            // (a cell another process finished meanwhile was not counted at the start)
            done_left = done_left.saturating_sub(1);
            continue;
        }
        // one process per cell, across machines sharing the folder (claim.rs)
        let _claim = match crate::claim::claim(&cell.dir, &crate::claim::Holder::me(), claim_lease())? {
            crate::claim::Outcome::Claimed(c) => c,
            crate::claim::Outcome::TookOver(c, was) => {
                let was = was.map(|h| h.to_string()).unwrap_or_else(|| "an unreadable claim".into());
                eprintln!(
                    "[{}/{}] {}: warning: taking over the claim of {was} (no progress for {} min)",
                    offset + k + 1,
                    progress.total,
                    cell.label,
                    claim_lease().as_secs() / 60
                );
                c
            }
            crate::claim::Outcome::Held(by) => {
                // another process trains it: not a failure of this one (`cargo xtask report` tells when the grid is complete)
                let by = by.map(|h| h.to_string()).unwrap_or_else(|| "another process".into());
                eprintln!("[{}/{}] {}: claimed by {by}, left to it", offset + k + 1, progress.total, cell.label);
                continue;
            }
        };
        if run.finished() {
            // finished by another process between the check above and the claim
            continue;
        }
        let mut args: Vec<String> = vec!["train".into(), "--out".into(), cell.dir.display().to_string()];
        if run.resumable() {
            args.push("--resume".into());
        } else {
            // a run that never finished an epoch, unless another process is training it now
            if !clear_run_dir(&cell.dir)? {
                eprintln!("[{}/{}] {}: in use by another run, left to it", offset + k + 1, progress.total, cell.label);
                failed.push(format!("{} (in use by another run)", cell.label));
                continue;
            }
            args.extend(cell.args.iter().cloned());
        }
        let (ok, rss) = run_mosa(mosa, &args)?;
        progress.ran();
        if ok {
            // whole files only: other processes read them while this one writes (temp file, rename)
            let write = |name: &str, text: String| mosa_core::fsio::write_atomic(&cell.dir.join(name), text.as_bytes()).map_err(anyhow::Error::msg);
            write("peak_memory_mib.txt", format!("{rss:.1}\n"))?;
            write(CELL_ARGS, cell.args.join("\n") + "\n")?;
            progress.row(offset + k, &cell.label, &cell.dir);
        } else {
            eprintln!("[{}/{}] {} FAILED (its run directory is kept: {})", offset + k + 1, progress.total, cell.label, cell.dir.display());
            failed.push(cell.label.clone());
        }
    }
    Ok(failed)
}

pub fn run_grid(g: &Grid, mosa: &Path) -> anyhow::Result<()> {
    let total = g.cells().len() + g.sweep_cells().len();
    let mine = g.training_steps();
    std::fs::create_dir_all(&g.out)?;
    eprintln!(
        "bench: {} tasks x {} methods = {total} runs ({mine} in shard {}/{}) -> {}",
        g.tasks.len(),
        g.methods.len(),
        g.shard.0,
        g.shard.1,
        g.out.display()
    );
    eprintln!("{}", g.settings);
    eprintln!("cells of this shard: {}", owned_cells(g).join(", "));
    let mut progress = Progress::new(mine);
    let (failed, waiting) = run_training(g, mosa, &mut progress, 0)?;
    let table = write_results(g)?;
    println!("{table}");
    eprintln!("bench: wall time {} for {} runs; results in {}", progress.elapsed(), progress.ran_count(), g.out.display());
    // the rate the runs did their model arithmetic at (over the wall time only when this
    // invocation ran every cell)
    let dirs: Vec<PathBuf> = g.cells().into_iter().map(|c| c.dir).collect();
    let wall = (progress.ran_count() == dirs.len()).then(|| progress.start.elapsed().as_secs_f64());
    let peak = std::process::Command::new(mosa)
        .args(["bench", "peak", "--json"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["gflops"].as_f64());
    if let Some(line) = crate::arithmetic::summary(&dirs, wall, peak) {
        eprintln!("bench: {line}");
    }
    if !waiting.is_empty() {
        eprintln!("bench: {} run(s) wait for lr searches of other shards; run again when they have finished", waiting.len());
    }
    if !failed.is_empty() {
        bail!("{} run(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn group_of(task: &str) -> Option<&'static str> {
    mosa_data::registry::lookup_task(task).ok().map(|t| t.group.name())
}

/// A row of bench-vtab's `results.csv`: one (method, task) cell, over its seeds.
#[derive(serde::Serialize)]
struct CellCsv {
    method: String,
    task: String,
    group: String,
    test_at_best_val: Option<f64>,
    best_val_epoch: Option<u64>,
    best_test: Option<f64>,
    last_test: Option<f64>,
    trainable_params: Option<u64>,
    merged_trainable_params: Option<u64>,
    train_images_per_second: Option<f64>,
    eval_images_per_second: Option<f64>,
    peak_memory_mib: Option<f64>,
    train_seconds: Option<f64>,
    seeds: usize,
    test_images: Option<usize>,
    accuracy_mean_over_seeds: f64,
    std_over_seeds: Option<f64>,
    ci95_low: Option<f64>,
    ci95_high: Option<f64>,
    lr: Option<f64>,
}

/// Reads every finished cell and writes results.{md,csv,json}, accuracy.svg and the learning
/// curves (loss.svg, curves.csv; [`crate::curves`]); returns the Markdown.
pub fn write_results(g: &Grid) -> anyhow::Result<String> {
    let shown = "last_test";
    // every finished seed's typed summary (plus the peak memory this harness measured); the first
    // seed's stands for the cell's parameters and speeds
    let mut acc: BTreeMap<(String, String), Value> = BTreeMap::new();
    let mut per_seed: BTreeMap<(String, String), Vec<Option<f64>>> = BTreeMap::new();
    let mut scored: BTreeMap<(String, String), Scored> = BTreeMap::new();
    for t in &g.tasks {
        for m in &g.methods {
            let mut values = Vec::new();
            for k in 0..g.seeds.max(1) {
                let d = g.run_dir(t, m, k);
                let run = RunDir::new(&d);
                let mut v = None;
                if run.finished() {
                    let mut s = serde_json::to_value(run.summary()?)?;
                    let rss = std::fs::read_to_string(d.join("peak_memory_mib.txt")).ok().and_then(|x| x.trim().parse::<f64>().ok());
                    s["peak_memory_mib"] = json!(rss);
                    // the lr the reported run trained at (under `vpt`, the one its search chose)
                    s["lr"] = json!(run.read_config().ok().map(|c| c.run.train.lr));
                    v = s[shown].as_f64();
                    acc.entry((t.clone(), m.clone())).or_insert(s);
                }
                values.push(v);
            }
            let present: Vec<f64> = values.iter().flatten().copied().collect();
            if let Some(sc) = Scored::new(&present, test_images(&RunDir::new(g.run_dir(t, m, 0)))) {
                scored.insert((t.clone(), m.clone()), sc);
            }
            per_seed.insert((t.clone(), m.clone()), values);
        }
    }
    let pct = |v: Option<f64>| v.map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_default();
    let images: Vec<String> = g
        .tasks
        .iter()
        .map(|t| format!("{t} {}", scored.iter().find(|((tt, _), _)| tt == t).and_then(|(_, s)| s.test_images).map(|n| n.to_string()).unwrap_or("?".into())))
        .collect();
    let interval = if g.seeds > 1 {
        format!(
            "Each accuracy is the mean over {} training seeds ({}…); ± is the half-width of its 95% interval over seeds (Student's t; the standard deviations are in results.csv/json).",
            g.seeds,
            seed_of(0)
        )
    } else {
        "One training seed; ± is the half-width of each accuracy's 95% interval over its test images (Wilson; for the mean, the normal interval of the mean of the tasks' binomials).".to_string()
    };
    let groups: Vec<&str> = if g.kind == "vtab" { vec!["Natural", "Specialized", "Structured"] } else { vec![] };
    let mut md = String::new();
    md += &format!(
        "Test accuracy (%) after the last epoch (`{shown}`; test at best val and best test are in results.csv/json). Trainable parameters include the head; `after merge` is what inference carries beyond the frozen backbone (LoRA folds into the weights, MoSA experts merge into one adapter). {}\n\n{interval} Test images per task: {}.\n\n",
        g.settings,
        images.join(", ")
    );
    let published_columns: &[&str] = if g.full { &["published Natural", "Specialized", "Structured", "mean of groups"] } else { &[] };
    let columns: Vec<&str> = std::iter::once("method")
        .chain(g.tasks.iter().map(String::as_str))
        .chain(groups.iter().copied())
        .chain(["mean", "groups mean", "trainable (M)", "after merge (M)", "train img/s", "eval img/s", "peak RSS (MiB)"])
        .chain(published_columns.iter().copied())
        .collect();
    let mut table = Markdown::new(&columns, 1);
    let mut csv: Vec<CellCsv> = Vec::new();
    let mut rows_json = Vec::new();
    for m in &g.methods {
        let cells: Vec<Option<&Value>> = g.tasks.iter().map(|t| acc.get(&(t.clone(), m.clone()))).collect();
        let sc: Vec<Option<&Scored>> = g.tasks.iter().map(|t| scored.get(&(t.clone(), m.clone()))).collect();
        let last: Vec<Option<f64>> = sc.iter().map(|c| c.map(|s| s.accuracy)).collect();
        let per_group: Vec<Option<f64>> = groups
            .iter()
            .map(|gr| mean(&g.tasks.iter().zip(&last).filter(|(t, _)| group_of(t) == Some(gr)).filter_map(|(_, v)| *v).collect::<Vec<_>>()))
            .collect();
        let all = mean(&last.iter().flatten().copied().collect::<Vec<_>>());
        let all_ci = mean_interval(&sc, &per_seed_of(&per_seed, &g.tasks, m), g.seeds);
        let gm = mean(&per_group.iter().flatten().copied().collect::<Vec<_>>());
        let present: Vec<&Value> = cells.iter().flatten().copied().collect();
        let avg = |k: &str| mean(&present.iter().filter_map(|s| s[k].as_f64()).collect::<Vec<_>>());
        let params = present.first().and_then(|s| s["trainable_params"].as_f64());
        let merged = present.first().and_then(|s| s["merged_trainable_params"].as_f64());
        let mut row = vec![m.clone()];
        row.extend(sc.iter().map(|v| v.map(Scored::cell).unwrap_or_default()));
        row.extend(per_group.iter().map(|v| pct(*v)));
        row.extend([
            match (all, all_ci) {
                (Some(a), Some((lo, hi))) => format!("{:.1} ±{:.1}", 100.0 * a, 50.0 * (hi - lo)),
                (a, _) => pct(a),
            },
            pct(gm),
            params.map(|p| format!("{:.4}", p / 1e6)).unwrap_or_default(),
            merged.map(|p| format!("{:.4}", p / 1e6)).unwrap_or_default(),
            avg("train_images_per_second").map(|v| format!("{v:.1}")).unwrap_or_default(),
            avg("eval_images_per_second").map(|v| format!("{v:.1}")).unwrap_or_default(),
            present
                .iter()
                .filter_map(|s| s["peak_memory_mib"].as_f64())
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))))
                .map(|v| format!("{v:.0}"))
                .unwrap_or_default(),
        ]);
        if g.full {
            match PUBLISHED_VTAB.iter().find(|(n, _)| n == m) {
                Some((_, p)) => row.extend(p.iter().map(|v| v.to_string())),
                None => row.extend(std::iter::repeat_n(String::new(), published_columns.len())),
            }
        }
        table.row(&row);
        for ((t, c), s2) in g.tasks.iter().zip(&cells).zip(&sc) {
            if let (Some(s), Some(s2)) = (c, s2) {
                let f = |k: &str| s[k].as_f64();
                csv.push(CellCsv {
                    method: m.clone(),
                    task: t.clone(),
                    group: group_of(t).unwrap_or("").to_string(),
                    test_at_best_val: f("test_at_best_val"),
                    best_val_epoch: s["best_val_epoch"].as_u64(),
                    best_test: f("best_test"),
                    last_test: f("last_test"),
                    trainable_params: s["trainable_params"].as_u64(),
                    merged_trainable_params: s["merged_trainable_params"].as_u64(),
                    train_images_per_second: f("train_images_per_second"),
                    eval_images_per_second: f("eval_images_per_second"),
                    peak_memory_mib: f("peak_memory_mib"),
                    train_seconds: f("train_seconds"),
                    seeds: s2.seeds,
                    test_images: s2.test_images,
                    accuracy_mean_over_seeds: s2.accuracy,
                    std_over_seeds: s2.std_over_seeds,
                    ci95_low: s2.ci95.map(|c| c.0),
                    ci95_high: s2.ci95.map(|c| c.1),
                    lr: f("lr"),
                });
            }
        }
        rows_json.push(json!({
            "method": m,
            "tasks": g.tasks.iter().zip(&cells).zip(&sc).map(|((t, c), s2)| {
                let mut v = c.cloned().unwrap_or(Value::Null);
                if let (Some(o), Some(s2)) = (v.as_object_mut(), s2) {
                    o.insert("scored".into(), json!(s2));
                    o.insert("per_seed".into(), json!(per_seed[&(t.clone(), m.clone())]));
                }
                (t.clone(), v)
            }).collect::<serde_json::Map<_, _>>(),
            "shown": shown,
            "group_means": groups.iter().zip(&per_group).map(|(gr, v)| (gr.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "mean": all,
            "mean_ci95": all_ci,
            "mean_of_groups": gm,
            "published": if g.full { PUBLISHED_VTAB.iter().find(|(n, _)| n == m).map(|(_, p)| json!({"Natural": p[0], "Specialized": p[1], "Structured": p[2], "mean_of_groups": p[3], "source": "spec §8: MoSA as reprinted by SNELL (NeurIPS 2024); baselines VPT (arXiv 2203.12119) Table 1"})) } else { None },
        }));
    }
    md += &table.finish();
    let runs = crate::curves::read(g)?;
    let curves = crate::curves::curves(g, &runs);
    let searches = g.searches()?;
    if !searches.is_empty() {
        md += &format!("\n{}", crate::protocol::sweep_table(g, &searches));
    }
    md += &format!("\n{}", crate::curves::plateau_table(g, &curves));
    let json = json!({ "settings": g.settings, "tasks": g.tasks, "methods": rows_json, "lr_search": searches });
    let write =
        |name: &str, text: &str| -> anyhow::Result<()> { mosa_core::fsio::write_atomic(&g.out.join(name), text.as_bytes()).map_err(anyhow::Error::msg) };
    write("results.md", &md)?;
    write("results.csv", &crate::table::csv_text(&csv)?)?;
    write("results.json", &(serde_json::to_string_pretty(&json)? + "\n"))?;
    let means: BTreeMap<(String, String), Value> = scored.iter().map(|(k, s)| (k.clone(), json!({ shown: s.accuracy }))).collect();
    write("accuracy.svg", &svg(&g.tasks, &g.methods, &means, shown))?;
    write("loss.svg", &crate::curves::svg(&g.tasks, &g.methods, &curves))?;
    write("curves.csv", &crate::curves::csv(g, &runs)?)?;
    if !searches.is_empty() {
        write("lr_sweep.csv", &crate::protocol::sweep_csv(&searches)?)?;
        write("lr_sweep.svg", &crate::protocol::sweep_svg(g, &searches))?;
    }
    Ok(md)
}

/// Each seed's accuracies of `method`, task by task (`None` where a run is missing).
fn per_seed_of(per_seed: &BTreeMap<(String, String), Vec<Option<f64>>>, tasks: &[String], method: &str) -> Vec<Vec<Option<f64>>> {
    tasks.iter().map(|t| per_seed.get(&(t.clone(), method.to_string())).cloned().unwrap_or_default()).collect()
}

/// Grouped bars: one group per task, one bar per method.
fn svg(tasks: &[String], methods: &[String], acc: &BTreeMap<(String, String), Value>, key: &str) -> String {
    use crate::plot::{colour, esc, open, swatch};
    let (bw, gap, h, top, left) = (14.0, 18.0, 260.0, 30.0, 50.0);
    let gw = bw * methods.len() as f64 + gap;
    let w = left + gw * tasks.len() as f64 + 20.0;
    let mut s = open(w, h + top + 110.0, 11, (left, 18.0), &format!("Test accuracy (%, {key}) per task and method"));
    for p in [0, 25, 50, 75, 100] {
        let y = top + h - h * p as f64 / 100.0;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{p}</text>\n",
            w - 20.0,
            left - 5.0,
            y + 4.0
        );
    }
    for (i, task) in tasks.iter().enumerate() {
        let x0 = left + gw * i as f64 + gap / 2.0;
        let t = esc(task);
        for (j, m) in methods.iter().enumerate() {
            if let Some(v) = acc.get(&(task.clone(), m.clone())).and_then(|s| s[key].as_f64()) {
                let bh = h * v;
                s += &format!(
                    "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw}\" height=\"{bh:.1}\" fill=\"{}\"><title>{t} {}: {:.1}%</title></rect>\n",
                    x0 + bw * j as f64,
                    top + h - bh,
                    colour(j),
                    esc(m),
                    100.0 * v
                );
            }
        }
        let cx = x0 + bw * methods.len() as f64 / 2.0;
        s += &format!(
            "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {cx:.1} {:.1})\">{t}</text>\n",
            top + h + 14.0,
            top + h + 14.0
        );
    }
    for (j, m) in methods.iter().enumerate() {
        s += &swatch((left + 110.0 * j as f64, top + h + 90.0), colour(j), m);
    }
    s + "</svg>\n"
}

#[cfg(test)]
mod run_dir_tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn a_run_in_progress_is_never_cleared_and_its_lock_file_survives() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cell");
        assert!(clear_run_dir(&dir).unwrap(), "a missing directory is free");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        std::fs::write(dir.join("sub/x"), "x").unwrap();
        let run = RunDir::new(&dir);
        let held = run.lock().unwrap(); // a training process in the directory
        let inode = std::fs::metadata(run.lock_file()).unwrap().ino();
        assert!(!clear_run_dir(&dir).unwrap(), "a locked run must be left alone");
        assert!(dir.join("config.json").exists() && dir.join("sub/x").exists());
        drop(held);
        assert!(clear_run_dir(&dir).unwrap());
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [".lock"], "everything but the lock file goes");
        // the same lock file, so a run that locked it meanwhile still excludes the next one
        assert_eq!(std::fs::metadata(run.lock_file()).unwrap().ino(), inode);
        let _again = run.lock().unwrap();
        assert!(!clear_run_dir(&dir).unwrap());
    }
}
