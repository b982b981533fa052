//! `cargo xtask bench-experts`: the experiment of Arnob et al. (arXiv 2507.07140; spec
//! `sparse-experts.md` §3) on real images. One task expert per task and kind (`sparse`, `lora`,
//! `full`) trained by `mosa train` in bench-vtab's cell directories (shared code: [`Cell`],
//! skip/resume, `--shard`), then:
//!
//! - **merges**: every task's experts of a kind merged with each merge method (`mosa merge`), each
//!   task evaluated with its own head on the merged backbone (`mosa eval --task`), against the
//!   expert alone: normalised accuracy = merged / individual;
//! - **scaling**: the paper's merge of 2, 4, … experts drawn as seeded random task subsets (the
//!   same subsets for every kind), mean ± std of the normalised accuracy;
//! - **held-out**: each task left out of a merge of the others; a new head (linear probe) trained
//!   on that merged backbone and on the base backbone.
//!
//! Every merge is a job directory under `merges/<kind>/<method>/<subset>/` whose `result.json`
//! records the SHA-256 of the experts it merged: a re-run skips it while those experts are the
//! same. Results: `results.{md,csv,json}`, `experts.csv` and `scaling-<kind>.svg` / `scaling.svg`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use mosa_train::RunDir;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::bench_vtab::{Cell, Grid, Progress, run_cells, run_training, shard_of};
use crate::stats::{Scored, mean, wilson95};
use crate::table::Markdown;

/// The experiment: its training grid (tasks × kinds, plus `linear` for the base-backbone probes)
/// and what is merged and measured.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub grid: Grid,
    pub kinds: Vec<String>,
    pub merges: Vec<String>,
    /// The merge of the scaling curve and of the held-out backbones (the paper's: overlap-mean).
    pub paper_merge: String,
    /// Numbers of merged experts on the scaling curve (below the number of tasks; all tasks is
    /// always a point).
    pub sizes: Vec<usize>,
    /// Random task subsets per size.
    pub seeds: usize,
    pub held_out: bool,
    /// `mosa eval --max-images`: the first N test images, the subset `--max-eval-images` scores.
    pub eval_images: Option<usize>,
    /// Arguments of the held-out linear probes (besides the grid's `train_args`).
    pub probe_args: Vec<String>,
    pub keep_merged: bool,
}

/// One merge: these tasks' experts of one kind, by one method; evaluated or only kept for a probe.
#[derive(Debug, Clone, PartialEq)]
struct Job {
    kind: String,
    method: String,
    tasks: Vec<String>,
    evaluate: bool,
    /// The held-out task whose probe trains on this merge.
    probe_for: Option<String>,
}

/// What a merge job leaves: `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct JobResult {
    kind: String,
    method: String,
    tasks: Vec<String>,
    /// SHA-256 of each merged expert file, by task.
    experts: BTreeMap<String, String>,
    /// Per task: test accuracy with its own head on the merged backbone, and images scored.
    accuracy: BTreeMap<String, f64>,
    images: BTreeMap<String, usize>,
    merge_seconds: f64,
    eval_seconds: f64,
}

impl Experiment {
    fn expert(&self, task: &str, kind: &str) -> PathBuf {
        RunDir::new(self.grid.out.join("runs").join(task).join(kind)).expert()
    }

    /// `all`, `without-<task>`, or the tasks joined with `+`.
    fn subset_name(&self, tasks: &[String]) -> String {
        let all = &self.grid.tasks;
        if tasks.len() == all.len() {
            "all".into()
        } else if tasks.len() + 1 == all.len() && all.len() > 2 {
            format!("without-{}", all.iter().find(|t| !tasks.contains(t)).expect("one task is left out"))
        } else {
            tasks.join("+")
        }
    }

    fn job_dir(&self, j: &Job) -> PathBuf {
        self.grid.out.join("merges").join(&j.kind).join(&j.method).join(self.subset_name(&j.tasks))
    }

    /// Every setting that defines the experiment besides its cells, as text (the manifest's hash).
    pub fn settings_key(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{}|{:?}|{}|{}|{:?}|{:?}",
            self.grid.settings_key(),
            self.kinds,
            self.merges,
            self.paper_merge,
            self.sizes,
            self.seeds,
            self.held_out,
            self.eval_images,
            self.probe_args
        )
    }

    fn probe_dir(&self, kind: &str, task: &str) -> PathBuf {
        self.grid.out.join("heldout").join(kind).join(task)
    }

    /// The seeded task subsets of the scaling curve: `(size, seed, tasks in grid order)`.
    fn subsets(&self) -> Vec<(usize, usize, Vec<String>)> {
        let n = self.grid.tasks.len();
        let mut v = Vec::new();
        for &size in self.sizes.iter().filter(|&&s| s >= 2 && s < n) {
            for seed in 0..self.seeds {
                let mut pick = mosa_core::rng::Rng::derive(3407 + seed as u64, size as u64).permutation(n);
                pick.truncate(size);
                pick.sort_unstable();
                v.push((size, seed, pick.into_iter().map(|i| self.grid.tasks[i].clone()).collect()));
            }
        }
        v
    }

    /// Every merge, each once (a scaling subset or a held-out merge may equal another job).
    fn jobs(&self) -> Vec<Job> {
        let mut v: Vec<Job> = Vec::new();
        let mut add = |j: Job| match v.iter_mut().find(|o| o.kind == j.kind && o.method == j.method && o.tasks == j.tasks) {
            Some(o) => {
                o.evaluate |= j.evaluate;
                o.probe_for = o.probe_for.take().or(j.probe_for);
            }
            None => v.push(j),
        };
        let all = self.grid.tasks.clone();
        for k in &self.kinds {
            for m in &self.merges {
                add(Job { kind: k.clone(), method: m.clone(), tasks: all.clone(), evaluate: true, probe_for: None });
            }
            add(Job { kind: k.clone(), method: self.paper_merge.clone(), tasks: all.clone(), evaluate: true, probe_for: None });
            for (_, _, tasks) in self.subsets() {
                add(Job { kind: k.clone(), method: self.paper_merge.clone(), tasks, evaluate: true, probe_for: None });
            }
            if self.held_out && all.len() >= 2 {
                for t in &all {
                    let others: Vec<String> = all.iter().filter(|o| *o != t).cloned().collect();
                    add(Job { kind: k.clone(), method: self.paper_merge.clone(), tasks: others, evaluate: false, probe_for: Some(t.clone()) });
                }
            }
        }
        v
    }

    fn probe_cell(&self, kind: &str, task: &str, merged: &Path) -> Cell {
        let mut args: Vec<String> =
            vec!["--method".into(), "linear".into(), "--dataset".into(), format!("{}:{}", self.grid.kind, self.grid.root.join(task).display())];
        // the recipe's arguments, with the merged backbone in place of the base weights
        let mut it = self.grid.train_args.iter();
        while let Some(a) = it.next() {
            if a == "--weights" {
                it.next();
            } else {
                args.push(a.clone());
            }
        }
        args.extend(self.probe_args.iter().cloned());
        args.extend(["--weights".into(), merged.display().to_string()]);
        Cell { label: format!("held-out {task}: probe on merged {kind}"), dir: self.probe_dir(kind, task), args }
    }
}

/// SHA-256 of files, each hashed once per run of the harness.
#[derive(Default)]
struct Hashes(HashMap<PathBuf, String>);

impl Hashes {
    fn of(&mut self, p: &Path) -> anyhow::Result<String> {
        if let Some(h) = self.0.get(p) {
            return Ok(h.clone());
        }
        let h = mosa_train::rundir::file_sha256(p)?;
        self.0.insert(p.to_path_buf(), h.clone());
        Ok(h)
    }
}

fn read_result(dir: &Path) -> Option<JobResult> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("result.json")).ok()?).ok()
}

/// Runs `mosa <args>`, returning its stdout; a failure carries its stderr.
fn mosa_stdout(mosa: &Path, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(mosa).args(args).output().with_context(|| format!("cannot start {}", mosa.display()))?;
    if !out.status.success() {
        bail!("`mosa {}` failed: {}", args.first().map(String::as_str).unwrap_or(""), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

enum JobOutcome {
    Skipped,
    Ran,
    Waiting(String),
}

/// Merges and evaluates one job (unless its result is current).
fn run_job(e: &Experiment, j: &Job, mosa: &Path, hashes: &mut Hashes) -> anyhow::Result<JobOutcome> {
    let dir = e.job_dir(j);
    let merged = dir.join("merged.safetensors");
    let files: Vec<PathBuf> = j.tasks.iter().map(|t| e.expert(t, &j.kind)).collect();
    if let Some(missing) = j.tasks.iter().zip(&files).find(|(_, f)| !f.exists()).map(|(t, _)| t) {
        return Ok(JobOutcome::Waiting(format!("no {} expert for {missing} yet", j.kind)));
    }
    let experts: BTreeMap<String, String> = j.tasks.iter().zip(&files).map(|(t, f)| Ok((t.clone(), hashes.of(f)?))).collect::<anyhow::Result<_>>()?;
    let old = read_result(&dir);
    if let Some(t) = &j.probe_for {
        // a probe trained on a merge of other experts than these is stale
        let probe = e.probe_dir(&j.kind, t);
        if probe.exists() && old.as_ref().is_none_or(|r| r.experts != experts) && !crate::bench_vtab::clear_run_dir(&probe)? {
            return Ok(JobOutcome::Waiting(format!("its stale probe {} is in use by another run", probe.display())));
        }
    }
    let probe_needs_file = j.probe_for.as_ref().is_some_and(|t| !RunDir::new(e.probe_dir(&j.kind, t)).finished());
    if let Some(r) = old {
        let current = r.experts == experts && (!j.evaluate || r.accuracy.len() == j.tasks.len());
        if current && (!probe_needs_file || merged.exists()) {
            return Ok(JobOutcome::Skipped);
        }
    }
    std::fs::create_dir_all(&dir)?;
    let mut args: Vec<String> = vec!["merge".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--method".into(), j.method.clone(), "--out".into(), merged.display().to_string()]);
    let t0 = Instant::now();
    mosa_stdout(mosa, &args)?;
    let merge_seconds = t0.elapsed().as_secs_f64();
    let (mut accuracy, mut images) = (BTreeMap::new(), BTreeMap::new());
    let t1 = Instant::now();
    if j.evaluate {
        let mut args: Vec<String> = vec!["eval".into(), "--weights".into(), merged.display().to_string(), "--task".into(), j.tasks.join(","), "--json".into()];
        if let Some(n) = e.eval_images {
            args.extend(["--max-images".into(), n.to_string()]);
        }
        for line in mosa_stdout(mosa, &args)?.lines().filter(|l| l.starts_with('{')) {
            let v: Value = serde_json::from_str(line).context("a line of `mosa eval --json`")?;
            let task = v["task"].as_str().context("`mosa eval --json` without a task")?.to_string();
            accuracy.insert(task.clone(), v["accuracy"].as_f64().context("no accuracy")?);
            images.insert(task, v["images"].as_u64().context("no image count")? as usize);
        }
        if accuracy.len() != j.tasks.len() {
            bail!("`mosa eval` scored {} of the {} tasks of {}", accuracy.len(), j.tasks.len(), merged.display());
        }
    }
    let r = JobResult {
        kind: j.kind.clone(),
        method: j.method.clone(),
        tasks: j.tasks.clone(),
        experts,
        accuracy,
        images,
        merge_seconds,
        eval_seconds: t1.elapsed().as_secs_f64(),
    };
    mosa_core::fsio::write_atomic(&dir.join("result.json"), (serde_json::to_string_pretty(&r)? + "\n").as_bytes()).map_err(anyhow::Error::msg)?;
    if !e.keep_merged && !probe_needs_file {
        std::fs::remove_file(&merged)?;
    }
    Ok(JobOutcome::Ran)
}

pub fn run(e: &Experiment, mosa: &Path) -> anyhow::Result<()> {
    let g = &e.grid;
    let steps = g.training_steps();
    let jobs = shard_of(e.jobs(), g.shard);
    let probes: Vec<(String, String)> =
        if e.held_out { shard_of(e.kinds.iter().flat_map(|k| g.tasks.iter().map(move |t| (k.clone(), t.clone()))).collect(), g.shard) } else { vec![] };
    std::fs::create_dir_all(&g.out)?;
    eprintln!(
        "bench-experts: {} tasks x {} kinds; {} training runs, {} merges, {} held-out probes in shard {}/{} -> {}",
        g.tasks.len(),
        e.kinds.len(),
        steps,
        jobs.len(),
        probes.len(),
        g.shard.0,
        g.shard.1,
        g.out.display()
    );
    eprintln!("{}", settings_line(e));
    eprintln!("training cells of this shard: {}", crate::bench_vtab::owned_cells(g).join(", "));
    let mut progress = Progress::new(steps + jobs.len() + probes.len());
    let (mut failed, mut waiting) = run_training(g, mosa, &mut progress, 0)?;
    let mut hashes = Hashes::default();
    for (k, j) in jobs.iter().enumerate() {
        let label = format!("merge {} {} of {} ({})", j.kind, j.method, e.subset_name(&j.tasks), if j.evaluate { "evaluated" } else { "for a probe" });
        let r = run_job(e, j, mosa, &mut hashes);
        match r {
            Ok(JobOutcome::Skipped) => progress.line(steps + k, &label, true),
            Ok(JobOutcome::Ran) => {
                progress.ran();
                progress.line(steps + k, &label, false);
            }
            Ok(JobOutcome::Waiting(why)) => {
                progress.line(steps + k, &format!("{label}: waiting ({why})"), false);
                waiting.push(label);
            }
            Err(err) => {
                eprintln!("{label} FAILED: {err:#}");
                failed.push(label);
            }
        }
    }
    let offset = steps + jobs.len();
    for (k, (kind, task)) in probes.iter().enumerate() {
        let others: Vec<String> = g.tasks.iter().filter(|o| *o != task).cloned().collect();
        let job = Job { kind: kind.clone(), method: e.paper_merge.clone(), tasks: others, evaluate: false, probe_for: Some(task.clone()) };
        let merged = e.job_dir(&job).join("merged.safetensors");
        let mut cell = e.probe_cell(kind, task, &merged);
        // under `vpt`, the held-out probe trains at the lr the base probe of its task chose, so
        // the two probes compared differ only in their backbone
        if g.protocol != crate::protocol::Protocol::Single {
            match g.search(task, "linear")?.chosen {
                Some(lr) => cell.args = crate::protocol::with_lr(&cell.args, lr),
                None => {
                    progress.line(offset + k, &format!("{}: waiting (the base probe's lr search)", cell.label), false);
                    waiting.push(cell.label);
                    continue;
                }
            }
        }
        if !RunDir::new(&cell.dir).finished() && !merged.exists() {
            progress.line(offset + k, &format!("{}: waiting (no merged backbone yet)", cell.label), false);
            waiting.push(cell.label);
            continue;
        }
        let f = run_cells(std::slice::from_ref(&cell), mosa, &mut progress, offset + k)?;
        if f.is_empty() && !e.keep_merged && merged.exists() && RunDir::new(&cell.dir).finished() {
            std::fs::remove_file(&merged)?;
        }
        failed.extend(f);
    }
    let md = write_results(e)?;
    println!("{md}");
    eprintln!("bench-experts: wall time {} for {} steps run; results in {}", progress.elapsed(), progress.ran_count(), g.out.display());
    if !waiting.is_empty() {
        eprintln!("bench-experts: {} step(s) wait for runs of other shards; run again when they have finished", waiting.len());
    }
    if !failed.is_empty() {
        bail!("{} step(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn settings_line(e: &Experiment) -> String {
    format!(
        "{} Merges: {}; scaling and held-out with {} over {} seeded subsets per size {:?}; test images per task {}.",
        e.grid.settings,
        e.merges.join(", "),
        e.paper_merge,
        e.seeds,
        e.sizes,
        e.eval_images.map(|n| format!("≤ {n} (the first)")).unwrap_or("all".into())
    )
}

/// One finished expert: its run's numbers.
#[derive(Debug, Clone, Serialize)]
struct ExpertRow {
    kind: String,
    task: String,
    /// Test accuracy after the last epoch, on `test_images` images.
    individual: Option<f64>,
    test_images: usize,
    trainable_params: usize,
    stored_bytes: u64,
    train_seconds: f64,
    /// The lr its deltas trained at (under `--protocol vpt`, the one its search chose).
    lr: f64,
    /// 95% Wilson interval of `individual` over its test images.
    ci95_low: Option<f64>,
    ci95_high: Option<f64>,
}

fn expert_row(e: &Experiment, kind: &str, task: &str) -> Option<ExpertRow> {
    let run = RunDir::new(e.grid.out.join("runs").join(task).join(kind));
    if !run.finished() {
        return None;
    }
    let s = run.summary().ok()?;
    let c = run.read_config().ok()?;
    let test = c.dataset.test.unwrap_or(0);
    let bytes = std::fs::metadata(run.expert()).map(|m| m.len()).unwrap_or(0);
    let test_images = c.run.train.eval_images(test);
    let ci95 = s.last_test.filter(|_| test_images > 0).map(|p| wilson95(p, test_images));
    Some(ExpertRow {
        kind: kind.into(),
        task: task.into(),
        individual: s.last_test,
        test_images,
        trainable_params: s.trainable_params,
        stored_bytes: bytes,
        train_seconds: s.train_seconds,
        lr: c.run.train.lr,
        ci95_low: ci95.map(|c| c.0),
        ci95_high: ci95.map(|c| c.1),
    })
}

/// The sentence naming every expert that does not beat the base probe on its own task, and
/// whether the shortfall is beyond the 95% interval of the difference of two binomials.
fn below_base(kinds: &[String], tasks: &[String], experts: &BTreeMap<(String, String), ExpertRow>, base: &BTreeMap<String, ExpertRow>) -> String {
    let mut below = Vec::new();
    let mut compared = 0;
    for k in kinds {
        for t in tasks {
            let (Some(x), Some(b)) = (experts.get(&(k.clone(), t.clone())), base.get(t)) else { continue };
            let (Some(p), Some(q)) = (x.individual, b.individual) else { continue };
            compared += 1;
            if p <= q {
                let half = crate::stats::diff_half95(p, x.test_images, q, b.test_images);
                below.push(format!(
                    "{k} on {t} ({:.1} vs {:.1}, {:+.1} ±{:.1}{})",
                    100.0 * p,
                    100.0 * q,
                    100.0 * (p - q),
                    100.0 * half,
                    if q - p > half { ", beyond its interval" } else { ", within its interval" }
                ));
            }
        }
    }
    match (compared, below.is_empty()) {
        (0, _) => "No expert could be compared with the base probe yet.".into(),
        (n, true) => format!("Every expert beats the base probe on its own task ({n} of {n})."),
        (n, false) => format!("{} of {n} experts do not beat the base probe on their own task: {}.", below.len(), below.join("; ")),
    }
}

fn std_dev(v: &[f64]) -> Option<f64> {
    let m = mean(v)?;
    if v.len() < 2 {
        return Some(0.0);
    }
    Some((v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64).sqrt())
}

/// A row of `results.csv`: one task of one evaluated merge.
#[derive(Serialize)]
struct MergeCsv {
    kind: String,
    method: String,
    experts_merged: usize,
    subset: String,
    task: String,
    individual: Option<f64>,
    merged: f64,
    normalised: Option<f64>,
    test_images: usize,
}

/// Per task: merged accuracy and merged / individual, from a job's result.
fn per_task(r: &JobResult, experts: &BTreeMap<(String, String), ExpertRow>) -> Vec<(String, f64, Option<f64>, usize)> {
    r.tasks
        .iter()
        .filter_map(|t| {
            let acc = *r.accuracy.get(t)?;
            let ind = experts.get(&(r.kind.clone(), t.clone())).and_then(|x| x.individual);
            Some((t.clone(), acc, ind.filter(|i| *i > 0.0).map(|i| acc / i), r.images.get(t).copied().unwrap_or(0)))
        })
        .collect()
}

/// Prints what this shard owns (`--list-cells`): its training cells (`task/kind`), its merges
/// (`merge kind method of subset`) and its held-out probes (`heldout/kind/task`).
pub fn list_cells(e: &Experiment) -> anyhow::Result<()> {
    let g = &e.grid;
    for c in crate::bench_vtab::owned_cells(g) {
        println!("{c}");
    }
    for j in shard_of(e.jobs(), g.shard) {
        println!("merge {} {} of {}", j.kind, j.method, e.subset_name(&j.tasks));
    }
    if e.held_out {
        for (kind, task) in shard_of(e.kinds.iter().flat_map(|k| g.tasks.iter().map(move |t| (k.clone(), t.clone()))).collect(), g.shard) {
            println!("heldout/{kind}/{task}");
        }
    }
    Ok(())
}

/// Reads every finished expert, merge and probe; writes the tables and plots; returns the Markdown.
pub fn write_results(e: &Experiment) -> anyhow::Result<String> {
    let g = &e.grid;
    let pct = |v: Option<f64>| v.map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_default();
    let ratio = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_default();
    let mut experts: BTreeMap<(String, String), ExpertRow> = BTreeMap::new();
    for k in &e.kinds {
        for t in &g.tasks {
            if let Some(r) = expert_row(e, k, t) {
                experts.insert((k.clone(), t.clone()), r);
            }
        }
    }
    let all = g.tasks.clone();
    let result = |kind: &str, method: &str, tasks: &[String]| -> Option<JobResult> {
        let j = Job { kind: kind.into(), method: method.into(), tasks: tasks.to_vec(), evaluate: true, probe_for: None };
        read_result(&e.job_dir(&j)).filter(|r| r.accuracy.len() == tasks.len())
    };
    let mut md = format!("{}\n\n", settings_line(e));

    // the experts alone
    md += "## The experts alone\n\nTest accuracy (%) of each task's expert with its own head, ± the half-width of its 95% Wilson interval over the test images; `linear (base)` is a new head on the base backbone, the bar every expert should clear; trainable parameters include the head; stored = the expert file.\n\n";
    let columns: Vec<String> = ["kind"]
        .iter()
        .map(|c| c.to_string())
        .chain(all.iter().cloned())
        .chain(["mean", "trainable (M)", "stored (MB)", "train s"].map(String::from))
        .collect();
    let mut table = Markdown::new(&columns, 1);
    let mut experts_json = Vec::new();
    let mut experts_csv: Vec<&ExpertRow> = Vec::new();
    let base_rows: BTreeMap<String, ExpertRow> =
        if e.held_out { all.iter().filter_map(|t| expert_row(e, "linear", t).map(|r| (t.clone(), r))).collect() } else { BTreeMap::new() };
    let shown_kinds: Vec<String> = e.kinds.iter().cloned().chain(e.held_out.then(|| "linear".to_string())).collect();
    for k in &shown_kinds {
        let rows: Vec<Option<&ExpertRow>> = all.iter().map(|t| if k == "linear" { base_rows.get(t) } else { experts.get(&(k.clone(), t.clone())) }).collect();
        let present: Vec<&ExpertRow> = rows.iter().flatten().copied().collect();
        let avg = |f: fn(&ExpertRow) -> f64| mean(&present.iter().map(|r| f(r)).collect::<Vec<_>>());
        let mut cells = vec![if k == "linear" { "linear (base)".to_string() } else { k.clone() }];
        cells
            .extend(rows.iter().map(|r| {
                r.and_then(|r| Scored::new(&r.individual.into_iter().collect::<Vec<_>>(), Some(r.test_images))).map(|s| s.cell()).unwrap_or_default()
            }));
        cells.extend([
            pct(mean(&present.iter().filter_map(|r| r.individual).collect::<Vec<_>>())),
            avg(|r| r.trainable_params as f64).map(|v| format!("{:.3}", v / 1e6)).unwrap_or_default(),
            avg(|r| r.stored_bytes as f64).map(|v| format!("{:.2}", v / 1e6)).unwrap_or_default(),
            avg(|r| r.train_seconds).map(|v| format!("{v:.0}")).unwrap_or_default(),
        ]);
        table.row(&cells);
        for r in present {
            experts_csv.push(r);
            if k != "linear" {
                experts_json.push(serde_json::to_value(r)?);
            }
        }
    }

    let counts: Vec<String> = all
        .iter()
        .map(|t| {
            e.kinds
                .iter()
                .chain(std::iter::once(&"linear".to_string()))
                .find_map(|k| if k == "linear" { base_rows.get(t) } else { experts.get(&(k.clone(), t.clone())) })
                .map(|r| r.test_images.to_string())
                .unwrap_or_default()
        })
        .collect();
    table.row(&["test images".to_string()].into_iter().chain(counts).chain(std::iter::repeat_n(String::new(), 4)).collect::<Vec<_>>());
    md += &table.finish();
    if e.held_out {
        md += &format!("\n{}\n", below_base(&e.kinds, &all, &experts, &base_rows));
    }

    // in distribution: all tasks merged
    md += &format!(
        "\n## In distribution: all {} experts of a kind merged\n\nEach task with its own head on the merged backbone: test accuracy (%) and, in brackets, normalised = merged / the expert alone. Means over tasks.\n\n",
        all.len()
    );
    let columns: Vec<String> =
        ["kind", "merge"].map(String::from).into_iter().chain(all.iter().cloned()).chain(["mean accuracy", "mean normalised"].map(String::from)).collect();
    let mut table = Markdown::new(&columns, 2);
    let mut csv: Vec<MergeCsv> = Vec::new();
    let mut in_dist = Vec::new();
    for k in &e.kinds {
        for m in &e.merges {
            let Some(r) = result(k, m, &all) else { continue };
            let rows = per_task(&r, &experts);
            let macc = mean(&rows.iter().map(|x| x.1).collect::<Vec<_>>());
            let mnorm = mean(&rows.iter().filter_map(|x| x.2).collect::<Vec<_>>());
            let mut cells = vec![k.clone(), m.clone()];
            cells.extend(all.iter().map(|t| rows.iter().find(|x| &x.0 == t).map(|x| format!("{} ({})", pct(Some(x.1)), ratio(x.2))).unwrap_or_default()));
            cells.extend([pct(macc), ratio(mnorm)]);
            table.row(&cells);
            in_dist.push(json!({
                "kind": k, "method": m,
                "tasks": rows.iter().map(|x| (x.0.clone(), json!({"individual": experts.get(&(k.clone(), x.0.clone())).and_then(|r| r.individual), "merged": x.1, "normalised": x.2, "test_images": x.3}))).collect::<serde_json::Map<_, _>>(),
                "mean_accuracy": macc, "mean_normalised": mnorm,
            }));
        }
    }

    md += &table.finish();

    // every evaluated merge, for the CSV
    for j in e.jobs().into_iter().filter(|j| j.evaluate) {
        if let Some(r) = result(&j.kind, &j.method, &j.tasks) {
            for (t, acc, norm, n) in per_task(&r, &experts) {
                let ind = experts.get(&(j.kind.clone(), t.clone())).and_then(|x| x.individual);
                csv.push(MergeCsv {
                    kind: j.kind.clone(),
                    method: j.method.clone(),
                    experts_merged: j.tasks.len(),
                    subset: e.subset_name(&j.tasks),
                    task: t,
                    individual: ind,
                    merged: acc,
                    normalised: norm,
                    test_images: n,
                });
            }
        }
    }

    // scaling
    let mut sizes: Vec<usize> = e.sizes.iter().copied().filter(|&s| s >= 2 && s < all.len()).collect();
    sizes.push(all.len());
    sizes.dedup();
    let subsets = e.subsets();
    md += &format!(
        "\n## Scaling: normalised accuracy against the number of merged experts ({})\n\nMean ± std over the seeded random task subsets (the same subsets for every kind); a subset's value is the mean normalised accuracy of its tasks.\n\n",
        e.paper_merge
    );
    let mut table = Markdown::new(&std::iter::once("kind".to_string()).chain(sizes.iter().map(|s| format!("{s} experts"))).collect::<Vec<_>>(), 1);
    let mut scaling_json = Vec::new();
    let mut curves: Vec<(String, Vec<ScalingPoint>)> = Vec::new();
    for k in &e.kinds {
        let mut points = Vec::new();
        let mut cells = Vec::new();
        for &s in &sizes {
            let draws: Vec<Vec<String>> = if s == all.len() { vec![all.clone()] } else { subsets.iter().filter(|x| x.0 == s).map(|x| x.2.clone()).collect() };
            let values: Vec<(Vec<String>, f64)> = draws
                .iter()
                .filter_map(|tasks| {
                    let r = result(k, &e.paper_merge, tasks)?;
                    let v = mean(&per_task(&r, &experts).iter().filter_map(|x| x.2).collect::<Vec<_>>())?;
                    Some((tasks.clone(), v))
                })
                .collect();
            let vs: Vec<f64> = values.iter().map(|x| x.1).collect();
            let (m, sd) = (mean(&vs), std_dev(&vs));
            cells.push(match (m, sd) {
                (Some(m), Some(sd)) => format!("{m:.2} ± {sd:.2} (n={})", vs.len()),
                _ => String::new(),
            });
            if let (Some(m), Some(sd)) = (m, sd) {
                points.push((s, m, sd, vs.len()));
            }
            scaling_json.push(json!({"kind": k, "experts": s, "subsets": values.iter().map(|(t, v)| json!({"tasks": t, "mean_normalised": v})).collect::<Vec<_>>(), "mean": m, "std": sd}));
        }
        table.row(&std::iter::once(k.clone()).chain(cells).collect::<Vec<_>>());
        curves.push((k.clone(), points));
    }
    md += &table.finish();

    // held-out
    let mut held_json = Vec::new();
    if e.held_out {
        md += &format!(
            "\n## Held-out: a new head (linear probe) on the merge of the other tasks ({})\n\nTest accuracy (%) of the probe; `base` is the same probe on the base backbone.\n\n",
            e.paper_merge
        );
        let mut table =
            Markdown::new(&["task".to_string(), "base".to_string()].into_iter().chain(e.kinds.iter().map(|k| format!("merged {k}"))).collect::<Vec<_>>(), 1);
        let probe = |d: PathBuf| RunDir::new(d).summary().ok().and_then(|s| s.last_test);
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); e.kinds.len() + 1];
        for t in &all {
            let base = if RunDir::new(g.out.join("runs").join(t).join("linear")).finished() { probe(g.out.join("runs").join(t).join("linear")) } else { None };
            let merged: Vec<Option<f64>> =
                e.kinds.iter().map(|k| if RunDir::new(e.probe_dir(k, t)).finished() { probe(e.probe_dir(k, t)) } else { None }).collect();
            for (c, v) in std::iter::once(base).chain(merged.iter().copied()).enumerate() {
                if let Some(v) = v {
                    cols[c].push(v);
                }
            }
            table.row(&[t.clone(), pct(base)].into_iter().chain(merged.iter().map(|v| pct(*v))).collect::<Vec<_>>());
            held_json.push(
                json!({"task": t, "base": base, "merged": e.kinds.iter().zip(&merged).map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()}),
            );
        }
        table.row(&std::iter::once("mean".to_string()).chain(cols.iter().map(|c| pct(mean(c)))).collect::<Vec<_>>());
        md += &table.finish();
    }

    // the experts' learning curves (and the base probes'), and the lr search under `vpt`
    let runs = crate::curves::read(g)?;
    let loss_curves = crate::curves::curves(g, &runs);
    md += &format!("\n## Training\n\n{}", crate::curves::plateau_table(g, &loss_curves));
    let searches = g.searches()?;
    if !searches.is_empty() {
        md += &format!("\n{}", crate::protocol::sweep_table(g, &searches));
    }
    let json = json!({
        "settings": settings_line(e),
        "base_probe": base_rows.values().collect::<Vec<_>>(),
        "lr_search": searches,
        "tasks": all,
        "kinds": e.kinds,
        "merges": e.merges,
        "paper_merge": e.paper_merge,
        "experts": experts_json,
        "in_distribution": in_dist,
        "scaling": scaling_json,
        "held_out": held_json,
    });
    let write =
        |name: &str, text: &str| -> anyhow::Result<()> { mosa_core::fsio::write_atomic(&g.out.join(name), text.as_bytes()).map_err(anyhow::Error::msg) };
    write("results.md", &md)?;
    write("results.csv", &crate::table::csv_text(&csv)?)?;
    write("experts.csv", &crate::table::csv_text(&experts_csv)?)?;
    write("results.json", &(serde_json::to_string_pretty(&json)? + "\n"))?;
    for (k, pts) in &curves {
        write(&format!("scaling-{k}.svg"), &scaling_svg(std::slice::from_ref(&(k.clone(), pts.clone())), all.len(), &e.paper_merge))?;
    }
    write("scaling.svg", &scaling_svg(&curves, all.len(), &e.paper_merge))?;
    write("loss.svg", &crate::curves::svg(&g.tasks, &g.methods, &loss_curves))?;
    write("curves.csv", &crate::curves::csv(g, &runs)?)?;
    if !searches.is_empty() {
        write("lr_sweep.csv", &crate::protocol::sweep_csv(&searches)?)?;
        write("lr_sweep.svg", &crate::protocol::sweep_svg(g, &searches))?;
    }
    Ok(md)
}

/// One point of a scaling curve: (experts merged, mean, std, subsets).
type ScalingPoint = (usize, f64, f64, usize);

/// Normalised accuracy (y) against merged experts (x): one line per kind with a ±std band, from
/// the expert alone (1 expert, 1.0 by definition) to all.
fn scaling_svg(curves: &[(String, Vec<ScalingPoint>)], n: usize, merge: &str) -> String {
    use crate::plot::{colour, esc, open, swatch};
    let (w, h, left, top, right, bottom) = (560.0, 320.0, 55.0, 35.0, 130.0, 45.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    // the y range in quarters, at least to 1.25 (normalised accuracy 1 = the expert alone)
    let ymax = (curves.iter().flat_map(|(_, p)| p.iter().map(|x| x.1 + x.2)).fold(1.1f64, f64::max) * 4.0).ceil() / 4.0;
    let x = |k: usize| left + pw * (k as f64 - 1.0) / ((n.max(2) - 1) as f64);
    let y = |v: f64| top + ph - ph * (v / ymax).clamp(0.0, 1.0);
    let mut s = open(w, h, 11, (left, 20.0), &format!("Normalised accuracy (merged / alone) vs merged experts ({merge})"));
    for i in 0..=((ymax * 4.0).round() as usize) {
        let v = i as f64 * 0.25;
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n",
            left + pw,
            y(v),
            y(v),
            left - 5.0,
            y(v) + 4.0
        );
    }
    for k in 1..=n {
        s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{k}</text>\n", x(k), top + ph + 16.0);
    }
    s += &format!("<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">experts merged</text>\n", left + pw / 2.0, h - 8.0);
    for (c, (kind, pts)) in curves.iter().enumerate() {
        let col = colour(c);
        let mut all: Vec<(usize, f64, f64)> = vec![(1, 1.0, 0.0)];
        all.extend(pts.iter().map(|p| (p.0, p.1, p.2)));
        let upper: Vec<String> = all.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1 + p.2))).collect();
        let lower: Vec<String> = all.iter().rev().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1 - p.2))).collect();
        s += &format!("<polygon points=\"{} {}\" fill=\"{col}\" fill-opacity=\"0.15\" stroke=\"none\"/>\n", upper.join(" "), lower.join(" "));
        let line: Vec<String> = all.iter().map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
        s += &format!("<polyline points=\"{}\" fill=\"none\" stroke=\"{col}\" stroke-width=\"2\"/>\n", line.join(" "));
        for p in &all {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{col}\"><title>{}, {} experts: {:.3} ± {:.3}</title></circle>\n",
                x(p.0),
                y(p.1),
                esc(kind),
                p.0,
                p.1,
                p.2
            );
        }
        s += &swatch((left + pw + 15.0, top + 16.0 * c as f64), col, kind);
    }
    s + "</svg>\n"
}
