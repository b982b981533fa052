//! How a benchmark grid chooses each cell's learning rate (`--protocol`, issue #28 item 2).
//!
//! - `single` (the default): one lr per method (the recipe's, or the method's own such as
//!   `--lora-lr`), trained on the dataset's training split (VTAB-1k: train800val200).
//! - `vpt`: the protocol the MoSA paper inherits from VPT (Jia et al., arXiv 2203.12119, §4.1 and
//!   appendix A): per task and method, every lr of a grid (`--lr-grid`) is trained on train800 and
//!   scored on val200 after its last epoch; the best (ties: the smaller lr) is retrained on
//!   train800val200, and that run's test accuracy is what the table reports.
//!
//! The search runs live in `sweep/<task>/<method>/lr<value>/` beside the grid's `runs/`, each a
//! normal cell (skipped when finished, resumed when interrupted, sharded with `--shard`); a final
//! run waits until every search run of its task and method has finished (another shard's, say),
//! and a later invocation runs it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use mosa_train::RunDir;

use crate::bench_vtab::{Cell, Grid};
use crate::plot::{Panels, esc};
use crate::table::Markdown;

/// The list VTAB-1k's search runs train on (`mosa train --train-split`); val200 is disjoint from it.
pub const SEARCH_SPLIT: &str = "train800";

/// The default `--lr-grid`: each method's own lr ×0.3, ×1 and ×3 (a 10× span centred on it).
pub const DEFAULT_LR_GRID: &str = "0.3x,1x,3x";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolKind {
    /// One lr per method, trained on train800val200.
    Single,
    /// Each lr of --lr-grid trained on train800 and scored on val200; the best retrained on train800val200.
    Vpt,
}

/// One value of `--lr-grid`: a multiple of each method's own lr (`0.3x`) or a learning rate (`0.001`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LrPoint {
    Times(f64),
    Value(f64),
}

impl std::str::FromStr for LrPoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, times) = match s.strip_suffix(['x', '×']) {
            Some(n) => (n, true),
            None => (s, false),
        };
        let v: f64 = num.parse().map_err(|_| format!("`{s}` is neither a learning rate (0.001) nor a multiple of the method's own (0.3x)"))?;
        if !(v.is_finite() && v > 0.0) {
            return Err(format!("`{s}`: a learning rate or multiple must be finite and > 0"));
        }
        Ok(if times { LrPoint::Times(v) } else { LrPoint::Value(v) })
    }
}

impl std::fmt::Display for LrPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LrPoint::Times(v) => write!(f, "{v}x"),
            LrPoint::Value(v) => write!(f, "{v}"),
        }
    }
}

/// A grid's protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Protocol {
    Single,
    Vpt { grid: Vec<LrPoint> },
}

impl Protocol {
    pub fn new(kind: ProtocolKind, grid: &[LrPoint]) -> anyhow::Result<Self> {
        Ok(match kind {
            ProtocolKind::Single if !grid.is_empty() => bail!("--lr-grid is the search grid of --protocol vpt"),
            ProtocolKind::Single => Protocol::Single,
            ProtocolKind::Vpt if grid.is_empty() => {
                Protocol::Vpt { grid: DEFAULT_LR_GRID.split(',').map(|p| p.parse().expect("the default grid parses")).collect() }
            }
            ProtocolKind::Vpt => Protocol::Vpt { grid: grid.to_vec() },
        })
    }

    /// The learning rates searched for a method whose own lr is `base`: ascending, each once,
    /// rounded to 5 significant digits (so `0.3x` of 0.005 is 0.0015, a clean folder name).
    pub fn lrs(&self, base: f64) -> Vec<f64> {
        let Protocol::Vpt { grid } = self else { return vec![base] };
        let mut v: Vec<f64> = grid
            .iter()
            .map(|p| match p {
                LrPoint::Times(t) => t * base,
                LrPoint::Value(x) => *x,
            })
            .map(round5)
            .collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    }

    /// For the settings line.
    pub fn describe(&self) -> String {
        match self {
            Protocol::Single => "protocol single (one lr per method, trained on train800val200)".into(),
            Protocol::Vpt { grid } => format!(
                "protocol vpt (lr grid {}: each trained on {SEARCH_SPLIT}, the best last-epoch val200 accuracy chosen, ties to the smaller lr, retrained on train800val200)",
                grid.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

fn round5(v: f64) -> f64 {
    format!("{v:.4e}").parse().unwrap_or(v)
}

/// The value of the last `--lr` in a cell's arguments (the method's own lr), else the recipe's.
pub fn lr_of(args: &[String]) -> f64 {
    args.iter().rposition(|a| a == "--lr").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or_else(|| mosa_train::TrainConfig::default().lr)
}

/// The arguments with every `--lr` set to `lr` (appended if there is none).
pub fn with_lr(args: &[String], lr: f64) -> Vec<String> {
    let mut v = args.to_vec();
    let mut found = false;
    for i in 0..v.len().saturating_sub(1) {
        if v[i] == "--lr" {
            v[i + 1] = lr.to_string();
            found = true;
        }
    }
    if !found {
        v.extend(["--lr".into(), lr.to_string()]);
    }
    v
}

/// One search run of a (task, method): its lr and, once finished, its last-epoch accuracies.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Trial {
    pub lr: f64,
    /// val200 accuracy after the last epoch.
    pub val: Option<f64>,
    /// Test accuracy of the same run (trained on train800): shown, never used to choose.
    pub test: Option<f64>,
    pub finished: bool,
}

/// A (task, method)'s search: its trials and, when all have finished, the chosen lr.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Search {
    pub task: String,
    pub method: String,
    pub trials: Vec<Trial>,
    pub chosen: Option<f64>,
}

/// The lr with the best validation accuracy; ties go to the smaller lr. `None` while any trial
/// is unfinished or has no validation accuracy.
pub fn choose(trials: &[Trial]) -> Option<f64> {
    let mut best: Option<(f64, f64)> = None;
    let mut sorted: Vec<&Trial> = trials.iter().collect();
    sorted.sort_by(|a, b| a.lr.total_cmp(&b.lr));
    for t in sorted {
        let v = t.val.filter(|_| t.finished)?;
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((t.lr, v));
        }
    }
    best.map(|(lr, _)| lr)
}

impl Grid {
    /// The search run of one (task, method) at one lr.
    pub fn sweep_dir(&self, task: &str, method: &str, lr: f64) -> PathBuf {
        self.out.join("sweep").join(task).join(method).join(format!("lr{lr}"))
    }

    /// Every search run of the grid (task-major, then method, then lr ascending); none for `single`.
    /// Searched with the recipe's seed only; every seed's final run takes the lr it chose.
    pub fn sweep_cells(&self) -> Vec<Cell> {
        if self.protocol == Protocol::Single {
            return Vec::new();
        }
        let mut v = Vec::new();
        for task in &self.tasks {
            for method in &self.methods {
                let base = self.cell_args(task, method, 0);
                for lr in self.protocol.lrs(lr_of(&base)) {
                    let mut args = with_lr(&base, lr);
                    args.extend(["--train-split".into(), SEARCH_SPLIT.into()]);
                    v.push(Cell { label: format!("{task} / {method} / search lr {lr}"), dir: self.sweep_dir(task, method, lr), args });
                }
            }
        }
        v
    }

    /// A (task, method)'s search as it stands on disk.
    pub fn search(&self, task: &str, method: &str) -> anyhow::Result<Search> {
        let base = self.cell_args(task, method, 0);
        let mut trials = Vec::new();
        for lr in self.protocol.lrs(lr_of(&base)) {
            let run = RunDir::new(self.sweep_dir(task, method, lr));
            let finished = run.finished();
            let last = if finished { run.metrics().with_context(|| format!("{}", run.path.display()))?.pop() } else { None };
            trials.push(Trial { lr, val: last.as_ref().and_then(|e| e.val_acc), test: last.as_ref().and_then(|e| e.test_acc), finished });
        }
        let chosen = choose(&trials);
        Ok(Search { task: task.into(), method: method.into(), trials, chosen })
    }

    /// Every (task, method)'s search, grid order (empty for `single`).
    pub fn searches(&self) -> anyhow::Result<Vec<Search>> {
        if self.protocol == Protocol::Single {
            return Ok(Vec::new());
        }
        self.tasks.iter().flat_map(|t| self.methods.iter().map(move |m| self.search(t, m))).collect()
    }
}

/// `lr_sweep.csv`: one row per search run.
pub fn sweep_csv(searches: &[Search]) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Row<'a> {
        task: &'a str,
        method: &'a str,
        lr: f64,
        val_acc: Option<f64>,
        test_acc: Option<f64>,
        chosen: bool,
    }
    let rows: Vec<Row> = searches
        .iter()
        .flat_map(|x| {
            x.trials.iter().map(move |t| Row { task: &x.task, method: &x.method, lr: t.lr, val_acc: t.val, test_acc: t.test, chosen: x.chosen == Some(t.lr) })
        })
        .collect();
    crate::table::csv_text(&rows)
}

/// The Markdown of the search: the chosen lr per cell and every trial's val200 accuracy.
pub fn sweep_table(g: &Grid, searches: &[Search]) -> String {
    let by: BTreeMap<(&str, &str), &Search> = searches.iter().map(|s| ((s.task.as_str(), s.method.as_str()), s)).collect();
    let mut md = format!(
        "Learning rates ({}; `lr_sweep.csv`, `lr_sweep.svg`): each cell's chosen lr, then val200 accuracy (%) after the last epoch of each search run (* chosen).\n\n",
        g.protocol.describe()
    );
    let mut table = Markdown::new(&std::iter::once("method").chain(g.tasks.iter().map(String::as_str)).collect::<Vec<_>>(), 1);
    for m in &g.methods {
        let cells: Vec<String> = g
            .tasks
            .iter()
            .map(|t| match by.get(&(t.as_str(), m.as_str())) {
                Some(s) => {
                    let trials: Vec<String> = s
                        .trials
                        .iter()
                        .map(|x| {
                            format!(
                                "{}: {}{}",
                                x.lr,
                                x.val.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or_else(|| "…".into()),
                                if s.chosen == Some(x.lr) { "*" } else { "" }
                            )
                        })
                        .collect();
                    format!("**{}** ({})", s.chosen.map(|c| c.to_string()).unwrap_or_else(|| "waiting".into()), trials.join(", "))
                }
                None => String::new(),
            })
            .collect();
        table.row(&std::iter::once(m.clone()).chain(cells).collect::<Vec<_>>());
    }
    md += &table.finish();
    if g.tasks.len() > 1 {
        md += "\nOne lr per method for every task (how a single-lr default is chosen from this search): the mean val200 accuracy (%) over the tasks at each lr, the best marked (ties to the smaller lr).\n\n";
        let mut table = Markdown::new(&["method", "mean val200 per lr", "best"], 2);
        for m in &g.methods {
            let Some((means, best)) = pooled(searches, m) else { continue };
            let cells: Vec<String> = means
                .iter()
                .map(|t| {
                    format!(
                        "{}: {}{}",
                        t.lr,
                        t.val.map(|v| format!("{:.1}", 100.0 * v)).unwrap_or_else(|| "…".into()),
                        if best == Some(t.lr) { "*" } else { "" }
                    )
                })
                .collect();
            table.row(&[m.clone(), cells.join(", "), best.map(|b| b.to_string()).unwrap_or_else(|| "waiting".into())]);
        }
        md += &table.finish();
    }
    md
}

/// A method's trials pooled over its tasks: per lr, the mean val200 accuracy (finished only when
/// every task's run at that lr has), and the lr [`choose`] picks from those means.
pub fn pooled(searches: &[Search], method: &str) -> Option<(Vec<Trial>, Option<f64>)> {
    let mine: Vec<&Search> = searches.iter().filter(|s| s.method == method).collect();
    let first = mine.first()?;
    let means: Vec<Trial> = first
        .trials
        .iter()
        .map(|t| {
            let same: Vec<&Trial> = mine.iter().filter_map(|s| s.trials.iter().find(|x| x.lr == t.lr)).collect();
            let finished = same.len() == mine.len() && same.iter().all(|x| x.finished && x.val.is_some());
            let val = finished.then(|| same.iter().filter_map(|x| x.val).sum::<f64>() / same.len() as f64);
            Trial { lr: t.lr, val, test: None, finished }
        })
        .collect();
    let best = choose(&means);
    Some((means, best))
}

/// Small multiples: one panel per task, val200 accuracy against lr (log axis), one line per
/// method, the chosen lr circled.
pub fn sweep_svg(g: &Grid, searches: &[Search]) -> String {
    // the tasks' panels, then (with several tasks) one of the means over them
    let mut panels: Vec<String> = g.tasks.clone();
    let mut searches = searches.to_vec();
    if g.tasks.len() > 1 {
        let mean = format!("mean of {} tasks", g.tasks.len());
        for m in &g.methods {
            if let Some((trials, chosen)) = pooled(&searches, m) {
                searches.push(Search { task: mean.clone(), method: m.clone(), trials, chosen });
            }
        }
        panels.push(mean);
    }
    let p = Panels::new(panels.len(), 4, (230.0, 160.0), 42.0);
    let (pw, ph) = (p.pw, p.ph);
    let mut s = p.open(&format!("val200 accuracy (%) after training on {SEARCH_SPLIT}, against the learning rate (log scale); circled: chosen"));
    let lrs: Vec<f64> = searches.iter().flat_map(|x| x.trials.iter().map(|t| t.lr)).collect();
    let (lo, hi) = (lrs.iter().copied().fold(f64::INFINITY, f64::min), lrs.iter().copied().fold(0.0f64, f64::max));
    let (llo, lhi) = (lo.log10(), hi.log10().max(lo.log10() + 1e-9));
    for (i, t) in panels.iter().enumerate() {
        let (x0, y0) = p.origin(i);
        let sx = |lr: f64| x0 + pw * (lr.log10() - llo) / (lhi - llo);
        let sy = |a: f64| y0 + ph - ph * a.clamp(0.0, 1.0);
        s += &p.frame(i, t);
        let te = esc(t);
        for f in [0.0, 0.5, 1.0] {
            s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n", x0 - 3.0, sy(f) + 3.0, 100.0 * f);
        }
        if lo.is_finite() {
            s += &format!(
                "<text x=\"{x0}\" y=\"{}\">{lo}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">lr {hi}</text>\n",
                y0 + ph + 12.0,
                x0 + pw,
                y0 + ph + 12.0
            );
        }
        for (j, m) in g.methods.iter().enumerate() {
            let Some(x) = searches.iter().find(|x| &x.task == t && &x.method == m) else { continue };
            let pts: Vec<(f64, f64)> = x.trials.iter().filter_map(|tr| tr.val.map(|v| (sx(tr.lr), sy(v)))).collect();
            let c = crate::plot::colour(j);
            let me = esc(m);
            s += &format!(
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{}\"><title>{te} {me}</title></polyline>\n",
                pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect::<Vec<_>>().join(" ")
            );
            for tr in &x.trials {
                if let (Some(v), true) = (tr.val, x.chosen == Some(tr.lr)) {
                    s += &format!(
                        "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\"><title>{te} {me}: lr {} chosen, val {:.1}%</title></circle>\n",
                        sx(tr.lr),
                        sy(v),
                        tr.lr,
                        100.0 * v
                    );
                }
            }
        }
    }
    let series: Vec<(&str, &str)> = g.methods.iter().enumerate().map(|(j, m)| (m.as_str(), crate::plot::colour(j))).collect();
    s + &p.legend_and_close(&series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(lr: f64, val: Option<f64>) -> Trial {
        Trial { lr, val, test: None, finished: val.is_some() }
    }

    #[test]
    fn pooled_means_over_tasks_and_waits_for_every_task() {
        let search = |task: &str, vals: [Option<f64>; 3]| Search {
            task: task.into(),
            method: "m".into(),
            trials: [0.1, 0.3, 1.0].iter().zip(vals).map(|(&lr, v)| trial(lr, v)).collect(),
            chosen: None,
        };
        // task a prefers 0.1, task b 1.0; the means are 0.6, 0.65, 0.65: the tie goes to 0.3
        let s = [search("a", [Some(0.9), Some(0.8), Some(0.5)]), search("b", [Some(0.3), Some(0.5), Some(0.8)])];
        let (means, best) = pooled(&s, "m").unwrap();
        let v: Vec<f64> = means.iter().map(|t| t.val.unwrap()).collect();
        assert!((v[0] - 0.6).abs() < 1e-12 && (v[1] - 0.65).abs() < 1e-12 && (v[2] - 0.65).abs() < 1e-12, "{v:?}");
        assert_eq!(best, Some(0.3));
        let s = [search("a", [Some(0.9), Some(0.8), Some(0.5)]), search("b", [Some(0.3), None, Some(0.8)])];
        assert_eq!(pooled(&s, "m").unwrap().1, None, "an unfinished task's run leaves the choice waiting");
        assert!(pooled(&s, "other").is_none());
    }

    #[test]
    fn choose_best_val_ties_to_the_smaller_lr() {
        assert_eq!(choose(&[trial(0.01, Some(0.5)), trial(0.001, Some(0.7)), trial(0.003, Some(0.6))]), Some(0.001));
        // a tie: the smaller lr, whatever the order
        assert_eq!(choose(&[trial(0.015, Some(0.9)), trial(0.005, Some(0.9)), trial(0.0015, Some(0.8))]), Some(0.005));
        // one unfinished trial: nothing is chosen yet
        assert_eq!(choose(&[trial(0.005, Some(0.9)), trial(0.015, None)]), None);
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn grid_points_and_lrs() {
        let p = Protocol::new(ProtocolKind::Vpt, &[]).unwrap();
        assert_eq!(p.lrs(0.005), vec![0.0015, 0.005, 0.015]);
        assert_eq!(p.lrs(0.001), vec![0.0003, 0.001, 0.003]);
        let g: Vec<LrPoint> = ["0.01", "2x", "0.001", "0.01"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(Protocol::new(ProtocolKind::Vpt, &g).unwrap().lrs(0.005), vec![0.001, 0.01]);
        assert!("x".parse::<LrPoint>().is_err() && "-1".parse::<LrPoint>().is_err() && "0x".parse::<LrPoint>().is_err());
        assert!(Protocol::new(ProtocolKind::Single, &g).is_err());
        assert_eq!(Protocol::Single.lrs(0.005), vec![0.005]);
    }

    #[test]
    fn lr_in_arguments() {
        let a: Vec<String> = ["--epochs", "3", "--lr", "0.005", "--head-lr", "0.01"].map(String::from).to_vec();
        assert_eq!(lr_of(&a), 0.005);
        assert_eq!(with_lr(&a, 0.0015), ["--epochs", "3", "--lr", "0.0015", "--head-lr", "0.01"].map(String::from).to_vec());
        assert_eq!(with_lr(&a[..2], 0.1), ["--epochs", "3", "--lr", "0.1"].map(String::from).to_vec());
        assert_eq!(lr_of(&a[..2]), mosa_train::TrainConfig::default().lr);
    }
}
