//! `cargo xtask study-mosa-adapter`: MoSA against the plain adapter at growing budgets (issue
//! #28 item 3), on the mini-VTAB tasks where MoSA trails most at the default's 10 epochs.
//!
//! Each budget is one `bench-vtab` grid (its own results folder, so every cell is skipped when
//! finished and resumed when interrupted, `--shard` splits it): the default's recipe with
//! `--epochs E --warmup-epochs E/10` (warm-up 10% of the epochs, as the default's 1 of 10 and the
//! paper's 10 of 100), plus VPT's lr search at 30 epochs on shapes_count. The study then reads
//! every finished run and writes `results/mosa-vs-adapter/`: `results.md` (test accuracy per
//! budget and task with 95% intervals, MoSA − adapter with the interval of the difference, final
//! training loss and accuracy, the plateau share), `results.csv`, `accuracy.svg` (test accuracy
//! against the budget) and each budget's `loss-<budget>.svg`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use mosa_train::RunDir;

use crate::bench_vtab::fmt_eta;
use crate::curves::late_share;
use crate::plot::{Panels, esc};
use crate::stats::{Scored, wilson95};
use crate::table::Markdown;

/// One budget of the study.
pub struct Budget {
    /// Its name and results folder suffix (`mosa-vs-adapter-<name>`).
    pub name: &'static str,
    pub epochs: usize,
    pub tasks: &'static [&'static str],
    pub eval_every: usize,
    /// VPT's lr search (`--protocol vpt` with the default 3-value grid 0.3×, 1×, 3×).
    pub vpt: bool,
    /// A recorded bench-vtab table run with this budget's exact arguments (`results.json` and
    /// `curves.csv`), read for a cell the budget has not run itself.
    pub recorded: Option<&'static str>,
}

pub const BUDGETS: &[Budget] = &[
    // the default's own arguments: `cargo xtask bench-vtab` is `--epochs 10 --warmup-epochs 1
    // --eval-every 5` with everything else as here, and its recorded table holds these cells
    Budget { name: "10ep", epochs: 10, tasks: &["shapes_count", "mnist", "digits8x8"], eval_every: 5, vpt: false, recorded: Some("docs/results/mini-vtab") },
    Budget { name: "30ep", epochs: 30, tasks: &["shapes_count", "mnist", "digits8x8"], eval_every: 5, vpt: false, recorded: None },
    Budget { name: "100ep", epochs: 100, tasks: &["shapes_count", "mnist"], eval_every: 10, vpt: false, recorded: None },
    Budget { name: "30ep-vpt", epochs: 30, tasks: &["shapes_count"], eval_every: 5, vpt: true, recorded: None },
];

const METHODS: [&str; 2] = ["adapter", "mosa"];

impl Budget {
    fn results(&self) -> PathBuf {
        PathBuf::from("results").join(format!("mosa-vs-adapter-{}", self.name))
    }

    fn args(&self) -> Vec<String> {
        let mut v: Vec<String> = vec!["bench-vtab".into(), "--tasks".into(), self.tasks.join(","), "--methods".into(), METHODS.join(",")];
        v.extend(
            ["--epochs", &self.epochs.to_string(), "--warmup-epochs", &(self.epochs / 10).to_string(), "--eval-every", &self.eval_every.to_string()]
                .map(String::from),
        );
        if self.vpt {
            v.extend(["--protocol", "vpt"].map(String::from));
        }
        v.extend(["--name".into(), format!("mosa-vs-adapter-{}", self.name)]);
        v
    }

    /// The `cargo xtask` command that runs this budget alone.
    pub fn command(&self) -> String {
        format!("cargo xtask {}", self.args().join(" "))
    }
}

/// One finished run of the study.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    budget: String,
    epochs: usize,
    task: String,
    method: String,
    test: f64,
    test_images: usize,
    ci95: (f64, f64),
    lr: f64,
    final_train_loss: f64,
    final_train_acc: f64,
    late_share: Option<f64>,
    train_seconds: f64,
    /// Where the cell was read: its own run directory, or a recorded table (`Budget::recorded`).
    source: String,
}

fn row(b: &Budget, task: &str, method: &str) -> anyhow::Result<Option<Row>> {
    let run = RunDir::new(b.results().join("runs").join(task).join(method));
    if !run.finished() {
        return match b.recorded {
            Some(dir) => recorded_row(b, Path::new(dir), task, method),
            None => Ok(None),
        };
    }
    let (s, c, m) = (run.summary()?, run.read_config()?, run.metrics()?);
    let (Some(test), Some(n), Some(last)) = (s.last_test, c.dataset.test, m.last()) else { return Ok(None) };
    let n = c.run.train.eval_images(n);
    let losses = m.iter().map(|e| e.train_loss).collect();
    let source = run.path.display().to_string();
    Ok(Some(Row::new(
        b,
        task,
        method,
        Measured { test, test_images: n, lr: c.run.train.lr, losses, final_train_acc: last.train_acc, train_seconds: s.train_seconds, source },
    )))
}

/// What a finished cell measured, wherever it was read.
struct Measured {
    test: f64,
    test_images: usize,
    lr: f64,
    /// The training loss of every epoch.
    losses: Vec<f64>,
    final_train_acc: f64,
    train_seconds: f64,
    source: String,
}

impl Row {
    fn new(b: &Budget, task: &str, method: &str, m: Measured) -> Self {
        Row {
            budget: b.name.into(),
            epochs: b.epochs,
            task: task.into(),
            method: method.into(),
            test: m.test,
            test_images: m.test_images,
            ci95: wilson95(m.test, m.test_images),
            lr: m.lr,
            final_train_loss: m.losses.last().copied().unwrap_or(f64::NAN),
            final_train_acc: m.final_train_acc,
            late_share: late_share(&m.losses),
            train_seconds: m.train_seconds,
            source: m.source,
        }
    }
}

/// A cell of a recorded bench-vtab table (`results.json` for the test accuracy, its images, lr
/// and time; `curves.csv` for the per-epoch training loss and accuracy); `None` when the table
/// lacks it or was recorded with another number of epochs.
fn recorded_row(b: &Budget, dir: &Path, task: &str, method: &str) -> anyhow::Result<Option<Row>> {
    let (json, csv) = (dir.join("results.json"), dir.join("curves.csv"));
    let (Ok(j), Ok(c)) = (std::fs::read_to_string(&json), std::fs::read_to_string(&csv)) else { return Ok(None) };
    let v: serde_json::Value = serde_json::from_str(&j).with_context(|| format!("{}", json.display()))?;
    let Some(cell) = v["methods"].as_array().and_then(|ms| ms.iter().find(|m| m["method"] == method)).map(|m| &m["tasks"][task]) else { return Ok(None) };
    let (Some(test), Some(n), Some(epochs)) = (cell["last_test"].as_f64(), cell["scored"]["test_images"].as_u64(), cell["epochs"].as_u64()) else {
        return Ok(None);
    };
    if epochs as usize != b.epochs {
        return Ok(None);
    }
    #[derive(serde::Deserialize)]
    struct Epoch {
        task: String,
        method: String,
        seed: String,
        epoch: usize,
        lr: f64,
        train_loss: f64,
        train_acc: f64,
    }
    let mut curve: Vec<(usize, f64, f64, f64)> = Vec::new();
    let mut seed = None;
    for e in csv::Reader::from_reader(c.as_bytes()).deserialize::<Epoch>() {
        let e = e.with_context(|| format!("{}", csv.display()))?;
        // the first seed's curve only
        if e.task != task || e.method != method || *seed.get_or_insert(e.seed.clone()) != e.seed {
            continue;
        }
        curve.push((e.epoch, e.train_loss, e.train_acc, e.lr));
    }
    curve.sort_by_key(|x| x.0);
    let Some(&(_, _, final_train_acc, _)) = curve.last() else { return Ok(None) };
    let lr = curve.iter().map(|x| x.3).fold(0.0, f64::max);
    let (losses, train_seconds) = (curve.iter().map(|x| x.1).collect(), cell["train_seconds"].as_f64().unwrap_or(0.0));
    Ok(Some(Row::new(
        b,
        task,
        method,
        Measured { test, test_images: n as usize, lr, losses, final_train_acc, train_seconds, source: dir.display().to_string() },
    )))
}

/// Runs the budgets (each a `bench-vtab` grid run by this same xtask binary), then writes the study.
pub fn run(only: &[String], mosa: &Path, shard: &str) -> anyhow::Result<()> {
    for n in only {
        if !BUDGETS.iter().any(|b| b.name == n) {
            bail!("unknown budget `{n}` (budgets: {})", BUDGETS.iter().map(|b| b.name).collect::<Vec<_>>().join(", "));
        }
    }
    let start = std::time::Instant::now();
    let me = std::env::current_exe().context("the xtask binary")?;
    for b in BUDGETS.iter().filter(|b| only.is_empty() || only.iter().any(|n| n == b.name)) {
        eprintln!("study: budget {} ({} epochs{}, {}): {}", b.name, b.epochs, if b.vpt { ", VPT lr search" } else { "" }, b.tasks.join(", "), b.command());
        let st = Command::new(&me).args(b.args()).args(["--shard", shard, "--mosa-bin"]).arg(mosa).status().context("running bench-vtab")?;
        if !st.success() {
            bail!("budget {} failed ({st}); its finished cells are kept, run the study again to resume", b.name);
        }
    }
    let md = write()?;
    println!("{md}");
    eprintln!("study: wall time {}; results in results/mosa-vs-adapter", fmt_eta(start.elapsed().as_secs_f64()));
    Ok(())
}

/// Reads every finished run of every budget and writes `results/mosa-vs-adapter/`.
pub fn write() -> anyhow::Result<String> {
    let out = PathBuf::from("results/mosa-vs-adapter");
    std::fs::create_dir_all(&out)?;
    let mut rows = Vec::new();
    for b in BUDGETS {
        for t in b.tasks {
            for m in METHODS {
                rows.extend(row(b, t, m)?);
            }
        }
    }
    let pct = |v: f64| format!("{:.1}", 100.0 * v);
    let find = |b: &str, t: &str, m: &str| rows.iter().find(|r| r.budget == b && r.task == t && r.method == m);
    let mut md = String::from(
        "MoSA against the adapter at growing budgets: DINOv2 ViT-S/14 at 56 px, the default's recipe (batch 32, lr 0.005, per-epoch cosine, warm-up 10% of the epochs, head init zero, MoSA r 16 / N 4 / share down, trained on train800val200), one seed (3407). `30ep-vpt`: each method's lr chosen by VPT's search (0.3×, 1×, 3× of 0.005 trained on train800, best val200) and retrained on train800val200.\n\n",
    );
    md += "Test accuracy (%) after the last epoch ± the half-width of its 95% Wilson interval; MoSA − adapter in points with the 95% interval of the difference of two independent binomials (conservative: both runs see the same images); final training loss and accuracy (MoSA's: the first pass, one random expert per block, plus the consistency KL); plateau = share of the loss decrease made in the last quarter of the epochs.\n\n";
    let mut table = Markdown::new(
        &[
            "budget",
            "task",
            "test images",
            "adapter",
            "MoSA",
            "MoSA − adapter",
            "lr adapter / MoSA",
            "train loss adapter / MoSA",
            "train acc adapter / MoSA",
            "plateau adapter / MoSA",
        ],
        2,
    );
    #[derive(serde::Serialize)]
    struct CsvRow<'a> {
        budget: &'a str,
        epochs: usize,
        task: &'a str,
        method: &'a str,
        test_acc: f64,
        test_images: usize,
        ci95_low: f64,
        ci95_high: f64,
        lr: f64,
        final_train_loss: f64,
        final_train_acc: f64,
        late_share: Option<f64>,
        train_seconds: f64,
        source: &'a str,
    }
    let csv_rows: Vec<CsvRow> = rows
        .iter()
        .map(|r| CsvRow {
            budget: &r.budget,
            epochs: r.epochs,
            task: &r.task,
            method: &r.method,
            test_acc: r.test,
            test_images: r.test_images,
            ci95_low: r.ci95.0,
            ci95_high: r.ci95.1,
            lr: r.lr,
            final_train_loss: r.final_train_loss,
            final_train_acc: r.final_train_acc,
            late_share: r.late_share,
            train_seconds: r.train_seconds,
            source: &r.source,
        })
        .collect();
    let csv = crate::table::csv_text(&csv_rows)?;
    for b in BUDGETS {
        for t in b.tasks {
            let (a, m) = (find(b.name, t, "adapter"), find(b.name, t, "mosa"));
            if a.is_none() && m.is_none() {
                continue;
            }
            let mark = |r: &Row| if b.recorded.is_some_and(|d| r.source == d) { " †" } else { "" };
            let cell = |r: Option<&Row>| r.and_then(|r| Scored::new(&[r.test], Some(r.test_images)).map(|s| s.cell() + mark(r))).unwrap_or_else(|| "…".into());
            let diff = match (a, m) {
                (Some(a), Some(m)) => {
                    let half = crate::stats::diff_half95(a.test, a.test_images, m.test, m.test_images);
                    let d = m.test - a.test;
                    format!("{:+.1} ±{:.1}{}", 100.0 * d, 100.0 * half, if d.abs() > half { " *" } else { "" })
                }
                _ => "…".into(),
            };
            let pair = |f: &dyn Fn(&Row) -> String| format!("{} / {}", a.map(f).unwrap_or_else(|| "…".into()), m.map(f).unwrap_or_else(|| "…".into()));
            table.row(&[
                b.name.to_string(),
                t.to_string(),
                a.or(m).map(|r| r.test_images).unwrap_or(0).to_string(),
                cell(a),
                cell(m),
                diff,
                pair(&|r| r.lr.to_string()),
                pair(&|r| format!("{:.3}", r.final_train_loss)),
                pair(&|r| pct(r.final_train_acc)),
                pair(&|r| r.late_share.map(|v| format!("{v:.3}")).unwrap_or_else(|| "—".into())),
            ]);
        }
    }
    md += &table.finish();
    for b in BUDGETS {
        if let Some(d) = b.recorded.filter(|d| rows.iter().any(|r| r.budget == b.name && r.source == *d)) {
            md += &format!(
                "\n`†`: read from the recorded table `{d}` (its `results.json` and `curves.csv`: the same arguments, cell for cell), as budget `{}` has not run this cell itself; a run of the budget replaces it.\n",
                b.name
            );
        }
    }
    md += "\n`*`: the difference is beyond its 95% interval. Commands, one per budget (each resumable; `cargo xtask study-mosa-adapter` runs them all and writes this table):\n\n";
    for b in BUDGETS {
        md += &format!("- `{}`: `{}`\n", b.name, b.command());
    }
    let write = |name: &str, text: &str| -> anyhow::Result<()> { mosa_core::fsio::write_atomic(&out.join(name), text.as_bytes()).map_err(anyhow::Error::msg) };
    write("results.md", &md)?;
    write("results.csv", &csv)?;
    write("accuracy.svg", &accuracy_svg(&rows))?;
    for b in BUDGETS {
        if let Ok(svg) = std::fs::read_to_string(b.results().join("loss.svg")) {
            write(&format!("loss-{}.svg", b.name), &svg)?;
        }
    }
    Ok(md)
}

/// One panel per task: test accuracy against the epochs (log scale), adapter and MoSA, the
/// single-lr budgets as lines with their 95% intervals as whiskers, the VPT budget as open marks.
fn accuracy_svg(rows: &[Row]) -> String {
    let tasks: Vec<&str> = BUDGETS.iter().flat_map(|b| b.tasks.iter().copied()).fold(Vec::new(), |mut v, t| {
        if !v.contains(&t) {
            v.push(t);
        }
        v
    });
    let colours = [crate::plot::PALETTE[0], crate::plot::PALETTE[2]];
    let p = Panels::new(tasks.len(), tasks.len(), (230.0, 180.0), 46.0);
    let (pw, ph) = (p.pw, p.ph);
    let mut s = p.open("Test accuracy (%) against training epochs (log scale), 95% Wilson intervals; open marks: VPT lr search at 30 epochs");
    let lo_ep = 10f64.log10();
    let hi_ep = 100f64.log10();
    for (i, t) in tasks.iter().enumerate() {
        let (x0, y0) = p.origin(i);
        let mine: Vec<&Row> = rows.iter().filter(|r| r.task == *t).collect();
        let floor = mine.iter().map(|r| r.ci95.0).fold(1.0f64, f64::min);
        let ymin = ((floor * 10.0).floor() / 10.0).clamp(0.0, 0.9);
        let sx = |e: usize| x0 + 10.0 + (pw - 20.0) * ((e as f64).log10() - lo_ep) / (hi_ep - lo_ep);
        let sy = |a: f64| y0 + ph - ph * ((a - ymin) / (1.0 - ymin)).clamp(0.0, 1.0);
        s += &p.frame(i, t);
        for f in [ymin, (ymin + 1.0) / 2.0, 1.0] {
            s += &format!("<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}</text>\n", x0 - 3.0, sy(f) + 3.0, 100.0 * f);
        }
        for e in [10, 30, 100] {
            s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{e}</text>\n", sx(e), y0 + ph + 12.0);
        }
        for (j, m) in METHODS.iter().enumerate() {
            let c = colours[j];
            let line: Vec<&&Row> = mine.iter().filter(|r| r.method == *m && !r.budget.ends_with("vpt")).collect();
            let pts: Vec<String> = line.iter().map(|r| format!("{:.1},{:.1}", sx(r.epochs), sy(r.test))).collect();
            s += &format!("<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{}\"/>\n", pts.join(" "));
            for r in &mine {
                if r.method != *m {
                    continue;
                }
                let (x, dx) = (sx(r.epochs), if j == 0 { -2.0 } else { 2.0 });
                let vpt = r.budget.ends_with("vpt");
                s += &format!("<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\"/>\n", x + dx, x + dx, sy(r.ci95.0), sy(r.ci95.1));
                s += &format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{}\" stroke=\"{c}\"><title>{} {m} {}: {:.1}%</title></circle>\n",
                    x + dx + if vpt { 6.0 * dx } else { 0.0 },
                    sy(r.test),
                    if vpt { "white" } else { c },
                    esc(t),
                    r.budget,
                    100.0 * r.test
                );
            }
        }
    }
    s + &p.legend_and_close(&[(METHODS[0], colours[0]), (METHODS[1], colours[1])])
}

/// The files of a finished run that the record keeps: enough for the tables, the curves and for a
/// later `bench-vtab` to skip the cell (no weights).
const RECORDED: [&str; 5] = ["config.json", "summary.json", "metrics.jsonl", "cell_args.txt", "peak_memory_mib.txt"];

/// Copies the study's report (`results/mosa-vs-adapter/`) and every finished run's small files
/// (`cells/<budget>/{runs,sweep}/…`) into `dir`, e.g. `docs/results/mosa-vs-adapter`. Copying a
/// budget's `cells/<budget>/` back into `results/mosa-vs-adapter-<budget>/` lets a new checkout
/// skip those cells (`cp -rn`).
pub fn record(dir: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    std::fs::create_dir_all(dir)?;
    for e in std::fs::read_dir("results/mosa-vs-adapter")? {
        let e = e?;
        if e.file_type()?.is_file() {
            std::fs::copy(e.path(), dir.join(e.file_name()))?;
        }
    }
    for b in BUDGETS {
        for sub in ["runs", "sweep"] {
            let from = b.results().join(sub);
            for run in walk_runs(&from)? {
                if !RunDir::new(&run).finished() {
                    continue;
                }
                let rel = run.strip_prefix(b.results())?;
                let to = dir.join("cells").join(b.name).join(rel);
                std::fs::create_dir_all(&to)?;
                for f in RECORDED {
                    if run.join(f).exists() {
                        std::fs::copy(run.join(f), to.join(f))?;
                    }
                }
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Every folder under `root` holding a `config.json` (a run directory).
fn walk_runs(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(root) else { return Ok(out) };
    for e in rd {
        let p = e?.path();
        if p.is_dir() {
            if p.join("config.json").exists() {
                out.push(p);
            } else {
                out.extend(walk_runs(&p)?);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_cell_is_read_from_its_table_and_curves() {
        let d = tempfile::tempdir().unwrap();
        let json =
            r#"{"methods": [{"method": "mosa", "tasks": {"t": {"last_test": 0.7, "epochs": 4, "train_seconds": 12.5, "scored": {"test_images": 200}}}}]}"#;
        std::fs::write(d.path().join("results.json"), json).unwrap();
        // another method's rows, a second seed and the epochs out of order must not leak in
        let csv = "task,method,seed,epoch,lr,train_loss,train_acc,val_acc,test_acc\nt,mosa,1,2,0.005,1.5,0.5,,\nt,mosa,1,1,0,2.0,0.1,,\nt,adapter,1,3,0.004,0.1,1.0,,\nt,mosa,1,3,0.004,1.2,0.8,,\nt,mosa,1,4,0.001,1.0,0.9,0.6,0.7\nt,mosa,2,4,0.001,9.0,0.0,,\n";
        std::fs::write(d.path().join("curves.csv"), csv).unwrap();
        let b = Budget { name: "4ep", epochs: 4, tasks: &["t"], eval_every: 2, vpt: false, recorded: None };
        let r = recorded_row(&b, d.path(), "t", "mosa").unwrap().expect("the recorded cell");
        assert_eq!((r.test, r.test_images, r.lr, r.final_train_loss, r.final_train_acc, r.train_seconds), (0.7, 200, 0.005, 1.0, 0.9, 12.5));
        // the last quarter (epoch 3 -> 4) made 0.2 of the 1.0 decrease
        assert!((r.late_share.unwrap() - 0.2).abs() < 1e-12, "{:?}", r.late_share);
        assert!(recorded_row(&b, d.path(), "t", "lora").unwrap().is_none(), "a method the table lacks");
        let other = Budget { epochs: 10, ..b };
        assert!(recorded_row(&other, d.path(), "t", "mosa").unwrap().is_none(), "a table of another length is not this budget's");
    }
}
