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
    /// The grid's cells (task-major), all shards.
    pub fn cells(&self) -> Vec<Cell> {
        let mut v = Vec::new();
        for task in &self.tasks {
            for method in &self.methods {
                let mut args: Vec<String> = vec!["--method".into(), method.clone(), "--dataset".into(), format!("{}:{}", self.kind, self.root.join(task).display())];
                args.extend(self.train_args.iter().cloned());
                args.extend(self.method_args.get(method.as_str()).into_iter().flatten().cloned());
                args.extend(self.task_args.get(task.as_str()).into_iter().flatten().cloned());
                v.push(Cell { label: format!("{task} / {method}"), dir: self.out.join("runs").join(task).join(method), args });
            }
        }
        v
    }
}

/// This shard's share (`i, i+n, i+2n, …`) of a list of work items.
pub fn shard_of<T>(items: Vec<T>, shard: (usize, usize)) -> Vec<T> {
    items.into_iter().enumerate().filter(|(i, _)| i % shard.1 == shard.0).map(|(_, c)| c).collect()
}

/// Progress over a list of work items: `[k/n] label (elapsed, ETA)` lines, the ETA from the
/// items that did run (skipped ones cost nothing).
pub struct Progress {
    start: Instant,
    ran: usize,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { start: Instant::now(), ran: 0, total }
    }

    pub fn line(&self, k: usize, label: &str, skipped: bool) {
        let eta = if self.ran > 0 { fmt_eta(self.start.elapsed().as_secs_f64() / self.ran as f64 * (self.total - k) as f64) } else { "?".into() };
        eprintln!("[{}/{}] {label}{} (elapsed {}, ETA {eta})", k + 1, self.total, if skipped { ": done, skipped" } else { "" }, fmt_eta(self.start.elapsed().as_secs_f64()));
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

/// Runs the cells: finished ones are skipped, interrupted ones resumed, the rest started afresh;
/// the peak memory of each run is kept beside it. Returns the labels of the cells that failed.
pub fn run_cells(cells: &[Cell], mosa: &Path, progress: &mut Progress, offset: usize) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    for (k, cell) in cells.iter().enumerate() {
        let run = RunDir::new(&cell.dir);
        let done = run.finished();
        progress.line(offset + k, &cell.label, done);
        if done {
            continue;
        }
        let mut args: Vec<String> = vec!["train".into(), "--out".into(), cell.dir.display().to_string()];
        if run.resumable() {
            args.push("--resume".into());
        } else {
            if cell.dir.exists() {
                std::fs::remove_dir_all(&cell.dir)?; // a run that never finished an epoch
            }
            args.extend(cell.args.iter().cloned());
        }
        let (ok, rss) = run_mosa(mosa, &args)?;
        progress.ran();
        if ok {
            std::fs::write(cell.dir.join("peak_memory_mib.txt"), format!("{rss:.1}\n"))?;
        } else {
            eprintln!("[{}/{}] {} FAILED (its run directory is kept: {})", offset + k + 1, progress.total, cell.label, cell.dir.display());
            failed.push(cell.label.clone());
        }
    }
    Ok(failed)
}

pub fn run_grid(g: &Grid, mosa: &Path) -> anyhow::Result<()> {
    let cells = g.cells();
    let total = cells.len();
    let mine = shard_of(cells, g.shard);
    std::fs::create_dir_all(&g.out)?;
    eprintln!("bench: {} tasks x {} methods = {total} runs ({} in shard {}/{}) -> {}", g.tasks.len(), g.methods.len(), mine.len(), g.shard.0, g.shard.1, g.out.display());
    eprintln!("{}", g.settings);
    let mut progress = Progress::new(mine.len());
    let failed = run_cells(&mine, mosa, &mut progress, 0)?;
    let table = write_results(g)?;
    println!("{table}");
    eprintln!("bench: wall time {} for {} runs; results in {}", progress.elapsed(), progress.ran_count(), g.out.display());
    if !failed.is_empty() {
        bail!("{} run(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

pub fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) }
}

fn group_of(task: &str) -> Option<&'static str> {
    mosa_data::registry::lookup_task(task).ok().map(|t| t.group.name())
}

/// Reads every finished cell and writes results.{md,csv,json} and accuracy.svg; returns the Markdown.
pub fn write_results(g: &Grid) -> anyhow::Result<String> {
    let mut acc: BTreeMap<(String, String), Value> = BTreeMap::new();
    for t in &g.tasks {
        for m in &g.methods {
            let d = g.out.join("runs").join(t).join(m);
            let run = RunDir::new(&d);
            if run.finished() {
                // the typed summary, plus the peak memory this harness measured
                let mut s = serde_json::to_value(run.summary()?)?;
                let rss = std::fs::read_to_string(d.join("peak_memory_mib.txt")).ok().and_then(|x| x.trim().parse::<f64>().ok());
                s["peak_memory_mib"] = json!(rss);
                acc.insert((t.clone(), m.clone()), s);
            }
        }
    }
    let shown = "last_test";
    let pct = |v: Option<f64>| v.map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_default();
    let groups: Vec<&str> = if g.kind == "vtab" { vec!["Natural", "Specialized", "Structured"] } else { vec![] };
    let mut md = String::new();
    md += &format!("Test accuracy (%) after the last epoch (`{shown}`; test at best val and best test are in results.csv/json). Trainable parameters include the head; `after merge` is what inference carries beyond the frozen backbone (LoRA folds into the weights, MoSA experts merge into one adapter). {}\n\n", g.settings);
    md += &format!("| method | {} |{} mean | groups mean | trainable (M) | after merge (M) | train img/s | eval img/s | peak RSS (MiB) |{}\n", g.tasks.join(" | "), groups.iter().map(|x| format!(" {x} |")).collect::<String>(), if g.full { " published Natural | Specialized | Structured | mean of groups |" } else { "" });
    md += &format!("|---|{}{}---:|---:|---:|---:|---:|---:|---:|{}\n", "---:|".repeat(g.tasks.len()), "---:|".repeat(groups.len()), if g.full { "---:|---:|---:|---:|" } else { "" });
    let mut csv = String::from("method,task,group,test_at_best_val,best_val_epoch,best_test,last_test,trainable_params,merged_trainable_params,train_images_per_second,eval_images_per_second,peak_memory_mib,train_seconds\n");
    let mut rows_json = Vec::new();
    for m in &g.methods {
        let cells: Vec<Option<&Value>> = g.tasks.iter().map(|t| acc.get(&(t.clone(), m.clone()))).collect();
        let last: Vec<Option<f64>> = cells.iter().map(|c| c.and_then(|s| s[shown].as_f64())).collect();
        let per_group: Vec<Option<f64>> = groups
            .iter()
            .map(|gr| mean(&g.tasks.iter().zip(&last).filter(|(t, _)| group_of(t) == Some(gr)).filter_map(|(_, v)| *v).collect::<Vec<_>>()))
            .collect();
        let all = mean(&last.iter().flatten().copied().collect::<Vec<_>>());
        let gm = mean(&per_group.iter().flatten().copied().collect::<Vec<_>>());
        let present: Vec<&Value> = cells.iter().flatten().copied().collect();
        let avg = |k: &str| mean(&present.iter().filter_map(|s| s[k].as_f64()).collect::<Vec<_>>());
        let params = present.first().and_then(|s| s["trainable_params"].as_f64());
        let merged = present.first().and_then(|s| s["merged_trainable_params"].as_f64());
        md += &format!(
            "| {m} | {} |{} {} | {} | {} | {} | {} | {} | {} |",
            last.iter().map(|v| pct(*v)).collect::<Vec<_>>().join(" | "),
            per_group.iter().map(|v| format!(" {} |", pct(*v))).collect::<String>(),
            pct(all),
            pct(gm),
            params.map(|p| format!("{:.4}", p / 1e6)).unwrap_or_default(),
            merged.map(|p| format!("{:.4}", p / 1e6)).unwrap_or_default(),
            avg("train_images_per_second").map(|v| format!("{v:.1}")).unwrap_or_default(),
            avg("eval_images_per_second").map(|v| format!("{v:.1}")).unwrap_or_default(),
            present.iter().filter_map(|s| s["peak_memory_mib"].as_f64()).fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b)))).map(|v| format!("{v:.0}")).unwrap_or_default(),
        );
        if g.full {
            match PUBLISHED_VTAB.iter().find(|(n, _)| n == m) {
                Some((_, p)) => md += &format!(" {} | {} | {} | {} |", p[0], p[1], p[2], p[3]),
                None => md += " | | | |",
            }
        }
        md += "\n";
        for (t, c) in g.tasks.iter().zip(&cells) {
            if let Some(s) = c {
                let f = |k: &str| s[k].as_f64().map(|v| v.to_string()).unwrap_or_default();
                csv += &format!("{m},{t},{},{},{},{},{},{},{},{},{},{},{}\n", group_of(t).unwrap_or(""), f("test_at_best_val"), s["best_val_epoch"], f("best_test"), f("last_test"), f("trainable_params"), f("merged_trainable_params"), f("train_images_per_second"), f("eval_images_per_second"), f("peak_memory_mib"), f("train_seconds"));
            }
        }
        rows_json.push(json!({
            "method": m,
            "tasks": g.tasks.iter().zip(&cells).map(|(t, c)| (t.clone(), c.cloned().unwrap_or(Value::Null))).collect::<serde_json::Map<_, _>>(),
            "shown": shown,
            "group_means": groups.iter().zip(&per_group).map(|(gr, v)| (gr.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "mean": all,
            "mean_of_groups": gm,
            "published": if g.full { PUBLISHED_VTAB.iter().find(|(n, _)| n == m).map(|(_, p)| json!({"Natural": p[0], "Specialized": p[1], "Structured": p[2], "mean_of_groups": p[3], "source": "spec §8: MoSA as reprinted by SNELL (NeurIPS 2024); baselines VPT (arXiv 2203.12119) Table 1"})) } else { None },
        }));
    }
    let json = json!({ "settings": g.settings, "tasks": g.tasks, "methods": rows_json });
    let write = |name: &str, text: &str| -> anyhow::Result<()> { mosa_core::fsio::write_atomic(&g.out.join(name), text.as_bytes()).map_err(anyhow::Error::msg) };
    write("results.md", &md)?;
    write("results.csv", &csv)?;
    write("results.json", &(serde_json::to_string_pretty(&json)? + "\n"))?;
    write("accuracy.svg", &svg(&g.tasks, &g.methods, &acc, shown))?;
    Ok(md)
}

/// Grouped bars: one group per task, one bar per method.
fn svg(tasks: &[String], methods: &[String], acc: &BTreeMap<(String, String), Value>, key: &str) -> String {
    let colours = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];
    let (bw, gap, h, top, left) = (14.0, 18.0, 260.0, 30.0, 50.0);
    let gw = bw * methods.len() as f64 + gap;
    let w = left + gw * tasks.len() as f64 + 20.0;
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", h + top + 110.0);
    s += &format!("<text x=\"{left}\" y=\"18\" font-size=\"13\">Test accuracy (%, {key}) per task and method</text>\n");
    for p in [0, 25, 50, 75, 100] {
        let y = top + h - h * p as f64 / 100.0;
        s += &format!("<line x1=\"{left}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{p}</text>\n", w - 20.0, left - 5.0, y + 4.0);
    }
    for (i, t) in tasks.iter().enumerate() {
        let x0 = left + gw * i as f64 + gap / 2.0;
        for (j, m) in methods.iter().enumerate() {
            if let Some(v) = acc.get(&(t.clone(), m.clone())).and_then(|s| s[key].as_f64()) {
                let bh = h * v;
                s += &format!("<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw}\" height=\"{bh:.1}\" fill=\"{}\"><title>{t} {m}: {:.1}%</title></rect>\n", x0 + bw * j as f64, top + h - bh, colours[j % colours.len()], 100.0 * v);
            }
        }
        let cx = x0 + bw * methods.len() as f64 / 2.0;
        s += &format!("<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"end\" transform=\"rotate(-35 {cx:.1} {:.1})\">{t}</text>\n", top + h + 14.0, top + h + 14.0);
    }
    for (j, m) in methods.iter().enumerate() {
        let x = left + 110.0 * j as f64;
        s += &format!("<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{m}</text>\n", top + h + 90.0, colours[j % colours.len()], x + 14.0, top + h + 99.0);
    }
    s + "</svg>\n"
}
