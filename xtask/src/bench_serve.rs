//! `cargo xtask bench-serve`: `mosa serve` under open-loop load. DINOv2 ViT-S/14 at 224 px with
//! N ∈ {1, 10, 100} sparse task experts (5% of every qkv weight, random positions and values:
//! the arithmetic and memory of trained experts of that density, not their accuracy), tasks
//! drawn uniform or Zipf(1) over the N, beside the base model alone (one task, no weight
//! change: the ceiling) and, with `--compare-pytorch`, `scripts/serve_pytorch.py` (timm, one
//! fine-tuned state dict per task, an LRU cache of models that fits in our server's memory).
//!
//! Every configuration is its own server process. First its capacity: closed-loop clients
//! sending back to back. Then open-loop Poisson arrivals at fractions of the base model's
//! capacity; each request is one PNG image to `POST /predictions/<task>`, its latency counted
//! from its scheduled arrival (so a client held up does not hide queueing). Reported: the
//! capacity, the highest offered rate whose p99 stays under the bound and the throughput there,
//! p50 / p99 at each rate, the cold first request (server start to first answer), peak RSS.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mosa_core::Rng;
use mosa_core::expert::{BackboneIdentity, Delta, Expert, ExpertKind, ExpertMeta, ExpertTensor, Head};
use mosa_core::host::HostTensor;
use serde::Serialize;

use crate::table::Markdown;

/// How tasks are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Popularity {
    Uniform,
    /// P(task k) ∝ 1 / k.
    Zipf,
}

pub struct Settings {
    pub experts: Vec<usize>,
    pub density: f64,
    pub classes: usize,
    /// Fractions of the base model's capacity offered open-loop.
    pub rates: Vec<f64>,
    /// Seconds per open-loop rate, and of the closed-loop capacity run.
    pub seconds: f64,
    pub p99_bound_ms: f64,
    pub clients: usize,
    pub max_batch: usize,
    pub python: Option<PathBuf>,
    pub out: PathBuf,
    /// Seconds of the memory soak (0: none): the most experts, uniform, at 0.7 × the base's
    /// capacity, RSS sampled every 10 s.
    pub soak_seconds: f64,
}

/// One server configuration's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub server: String,
    pub experts: usize,
    pub popularity: Option<Popularity>,
    pub capacity_rps: f64,
    pub startup_s: f64,
    pub first_request_s: f64,
    pub peak_rss_mib: f64,
    /// Base weights + the experts' files, MiB (what the memory target is stated against).
    pub weights_mib: f64,
    pub points: Vec<Point>,
    /// The highest offered rate with p99 under the bound, and the throughput there.
    pub rate_at_bound: Option<f64>,
    pub throughput_at_bound: Option<f64>,
}

/// One open-loop rate.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub offered_rps: f64,
    pub sent: usize,
    pub ok: usize,
    pub errors: usize,
    pub throughput_rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

const SIDE: usize = 224;

/// Writes the base-only task and N sparse experts (5% of every qkv) for the DINOv2 ViT-S/14
/// base; returns (base-only file, expert files).
fn make_experts(dir: &Path, weights: &Path, n: usize, density: f64, classes: usize) -> anyhow::Result<(PathBuf, Vec<PathBuf>)> {
    std::fs::create_dir_all(dir)?;
    let sha = mosa_train::rundir::file_sha256(weights)?;
    let identity =
        BackboneIdentity { model: "dinov2-vits14".into(), config: serde_json::Value::Null, weights: Some(weights.display().to_string()), sha256: Some(sha) };
    let meta = |task: &str, kind: ExpertKind| ExpertMeta {
        format: mosa_core::expert::EXPERT_FORMAT,
        kind,
        backbone: identity.clone(),
        method: serde_json::json!({ "method": "sparse", "note": "synthetic (bench-serve)" }),
        task: task.into(),
        dataset: format!("vtab:/synthetic/{task}"),
        keep_ratio: Some(density),
        criterion: Some("random".into()),
        summary: serde_json::json!({}),
        classes: (0..classes).map(|c| format!("class-{c}")).collect(),
        values: Default::default(),
        resolution: Some(SIDE),
        tensors: Default::default(),
    };
    let head = |rng: &mut Rng| Head {
        weight: HostTensor::new(vec![classes, 384], (0..classes * 384).map(|_| (rng.uniform() as f32 - 0.5) * 0.1).collect()),
        bias: Some(HostTensor::new(vec![classes], vec![0.0; classes])),
    };
    let base_task = dir.join("base.safetensors");
    if !base_task.exists() {
        Expert { meta: meta("base", ExpertKind::Sparse), tensors: vec![], head: Some(head(&mut Rng::new(0))) }.write(&base_task)?;
    }
    let (rows, cols) = (1152usize, 384usize);
    let keep = (density * (rows * cols) as f64) as usize;
    let mut files = Vec::new();
    for t in 0..n {
        let p = dir.join(format!("task-{t:03}.safetensors"));
        if !p.exists() {
            let mut rng = Rng::derive(7, t as u64);
            let tensors = (0..12)
                .map(|b| {
                    let mut idx: Vec<u32> = rng.permutation(rows * cols).into_iter().take(keep).map(|i| i as u32).collect();
                    idx.sort_unstable();
                    let values = idx.iter().map(|_| (rng.uniform() as f32 - 0.5) * 0.02).collect();
                    ExpertTensor { name: format!("blocks.{b}.attn.qkv.weight"), shape: vec![rows, cols], delta: Delta::Sparse { indices: idx, values } }
                })
                .collect();
            Expert { meta: meta(&format!("task-{t:03}"), ExpertKind::Sparse), tensors, head: Some(head(&mut rng)) }.write(&p)?;
        }
        files.push(p);
    }
    Ok((base_task, files))
}

/// A PNG of 224×224 (a smooth pattern, as photos compress).
fn image() -> Vec<u8> {
    let mut data = Vec::with_capacity(SIDE * SIDE * 3);
    for y in 0..SIDE {
        for x in 0..SIDE {
            data.extend([(x * 255 / SIDE) as u8, (y * 255 / SIDE) as u8, ((x + y) * 127 / SIDE) as u8]);
        }
    }
    mosa_data::image::encode_png(&mosa_data::image::Rgb8::new(SIDE, SIDE, data), false)
}

/// A running server (ours or the PyTorch one), killed when dropped.
struct Server {
    child: Child,
    url: String,
    startup: f64,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(mut cmd: Command) -> anyhow::Result<Server> {
        let t0 = Instant::now();
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("starting the server")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let url = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("listening on ") {
                        break rest.split_whitespace().next().unwrap_or_default().to_string();
                    }
                }
                _ => bail!("the server exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, url, startup: t0.elapsed().as_secs_f64() })
    }

    /// Peak resident memory so far (VmHWM), MiB.
    fn peak_rss_mib(&self) -> f64 {
        self.status_mib("VmHWM:")
    }

    /// Resident memory now (VmRSS), MiB.
    fn rss_mib(&self) -> f64 {
        self.status_mib("VmRSS:")
    }

    fn status_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).build().into()
}

/// One request: status and seconds.
fn request(agent: &ureq::Agent, url: &str, body: &[u8]) -> (u16, f64) {
    let t0 = Instant::now();
    let status = match agent.post(url).header("Content-Type", "image/png").send(body) {
        Ok(mut r) => {
            let _ = r.body_mut().read_to_vec();
            r.status().as_u16()
        }
        Err(_) => 0,
    };
    (status, t0.elapsed().as_secs_f64())
}

/// Draws task indices.
struct Draw {
    cumulative: Vec<f64>,
    rng: Rng,
}

impl Draw {
    fn new(n: usize, p: Popularity, seed: u64) -> Self {
        let w: Vec<f64> = (1..=n).map(|k| if p == Popularity::Zipf { 1.0 / k as f64 } else { 1.0 }).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        Self { cumulative: w.iter().map(|x| (acc += x / total, acc).1).collect(), rng: Rng::new(seed) }
    }
    fn next(&mut self) -> usize {
        let u = self.rng.uniform();
        self.cumulative.iter().position(|&c| u < c).unwrap_or(self.cumulative.len() - 1)
    }
}

/// Closed loop: `clients` threads sending back to back for `seconds`; completed requests / s.
fn capacity(url: &str, tasks: &[String], p: Popularity, clients: usize, seconds: f64, body: &Arc<Vec<u8>>) -> f64 {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let done = Arc::new(Mutex::new(0usize));
    std::thread::scope(|s| {
        for c in 0..clients {
            let (done, body) = (done.clone(), body.clone());
            s.spawn(move || {
                let a = agent();
                let mut draw = Draw::new(tasks.len(), p, 100 + c as u64);
                while Instant::now() < end {
                    let t = &tasks[draw.next()];
                    if request(&a, &format!("{url}/predictions/{t}"), &body).0 == 200 {
                        *done.lock().unwrap() += 1;
                    }
                }
            });
        }
    });
    *done.lock().unwrap() as f64 / seconds
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k]
}

/// Open loop: Poisson arrivals at `rate` for `seconds`; latencies from the scheduled arrival.
fn open_loop(url: &str, tasks: &[String], p: Popularity, rate: f64, seconds: f64, clients: usize, body: &Arc<Vec<u8>>) -> Point {
    let (tx, rx) = mpsc::channel::<(Instant, usize)>();
    let rx = Arc::new(Mutex::new(rx));
    let results = Arc::new(Mutex::new(Vec::<(u16, f64)>::new()));
    let start = Instant::now() + Duration::from_millis(50);
    let mut rng = Rng::new(rate.to_bits());
    let mut draw = Draw::new(tasks.len(), p, 1);
    let mut t = 0.0;
    let mut sent = 0;
    std::thread::scope(|s| {
        for _ in 0..clients {
            let (rx, results, body) = (rx.clone(), results.clone(), body.clone());
            s.spawn(move || {
                let a = agent();
                loop {
                    let next = rx.lock().unwrap().recv();
                    let Ok((at, task)) = next else { return };
                    if let Some(wait) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let (status, _) = request(&a, &format!("{url}/predictions/{}", tasks[task]), &body);
                    results.lock().unwrap().push((status, at.elapsed().as_secs_f64()));
                }
            });
        }
        loop {
            t += -(1.0 - rng.uniform()).ln() / rate;
            if t > seconds {
                break;
            }
            let _ = tx.send((start + Duration::from_secs_f64(t), draw.next()));
            sent += 1;
        }
        drop(tx);
    });
    let results = results.lock().unwrap();
    let mut ok: Vec<f64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    ok.sort_by(f64::total_cmp);
    let wall = start.elapsed().as_secs_f64().max(seconds);
    Point {
        offered_rps: rate,
        sent,
        ok: ok.len(),
        errors: results.len() - ok.len(),
        throughput_rps: ok.len() as f64 / wall,
        p50_ms: 1000.0 * percentile(&ok, 0.5),
        p99_ms: 1000.0 * percentile(&ok, 0.99),
    }
}

fn file_mib(paths: &[PathBuf]) -> f64 {
    paths.iter().filter_map(|p| std::fs::metadata(p).ok()).map(|m| m.len() as f64).sum::<f64>() / (1 << 20) as f64
}

/// Measures one server: first request, capacity, then each open-loop rate.
#[allow(clippy::too_many_arguments)]
fn measure(
    name: &str,
    server: Server,
    tasks: &[String],
    p: Option<Popularity>,
    base_capacity: Option<f64>,
    weights_mib: f64,
    s: &Settings,
    body: &Arc<Vec<u8>>,
) -> anyhow::Result<Row> {
    let a = agent();
    let t0 = Instant::now();
    let (st, _) = request(&a, &format!("{}/predictions/{}", server.url, tasks[0]), body);
    if st != 200 {
        bail!("{name}: the first request answered {st}");
    }
    let first = server.startup + t0.elapsed().as_secs_f64();
    let pop = p.unwrap_or(Popularity::Uniform);
    // warm-up (not counted), then the capacity
    capacity(&server.url, tasks, pop, s.clients.min(8), 3.0, body);
    let cap = capacity(&server.url, tasks, pop, s.clients.min(8), s.seconds, body);
    let reference = base_capacity.unwrap_or(cap);
    let mut points = Vec::new();
    for f in &s.rates {
        let rate = f * reference;
        let pt = open_loop(&server.url, tasks, pop, rate, s.seconds, s.clients, body);
        eprintln!(
            "  {name}: offered {:.2}/s → {:.2}/s answered, p50 {:.0} ms, p99 {:.0} ms, {} errors",
            pt.offered_rps, pt.throughput_rps, pt.p50_ms, pt.p99_ms, pt.errors
        );
        let saturated = pt.p99_ms > 3.0 * s.p99_bound_ms || pt.errors > 0;
        points.push(pt);
        if saturated {
            // higher rates would only queue longer
            break;
        }
    }
    let at_bound = points.iter().rfind(|p| p.p99_ms <= s.p99_bound_ms && p.errors == 0 && p.ok as f64 >= 0.99 * p.sent as f64);
    Ok(Row {
        server: name.into(),
        experts: tasks.len(),
        popularity: p,
        capacity_rps: cap,
        startup_s: server.startup,
        first_request_s: first,
        peak_rss_mib: server.peak_rss_mib(),
        weights_mib,
        rate_at_bound: at_bound.map(|p| p.offered_rps),
        throughput_at_bound: at_bound.map(|p| p.throughput_rps),
        points,
    })
}

fn ours(mosa: &Path, weights: &Path, files: &[PathBuf], max_batch: usize) -> anyhow::Result<Server> {
    let mut cmd = Command::new(mosa);
    cmd.args(["serve", "--base"]).arg(weights).arg("--experts").args(files);
    cmd.args(["--model", "dinov2-vits14", "--resolution", "224", "--addr", "127.0.0.1:0", "--max-batch", &max_batch.to_string(), "--max-queue", "4096"]);
    Server::start(cmd)
}

fn pytorch(python: &Path, weights: &Path, files: &[PathBuf], cache_bytes: u64, state_dicts: &Path) -> anyhow::Result<Server> {
    let script = crate::workspace_root().join("scripts/serve_pytorch.py");
    // the per-task checkpoints are written first, apart: the server's memory is the serving's
    let mut prep = Command::new(python);
    prep.arg(&script).arg("--base").arg(weights).arg("--state-dicts").arg(state_dicts).arg("--experts").args(files);
    prep.args(["--cache-bytes", "0", "--prepare-only"]);
    if !prep.status().context("running scripts/serve_pytorch.py --prepare-only")?.success() {
        bail!("scripts/serve_pytorch.py --prepare-only failed");
    }
    let mut cmd = Command::new(python);
    cmd.arg(script).arg("--base").arg(weights).arg("--state-dicts").arg(state_dicts).arg("--experts").args(files);
    cmd.args(["--cache-bytes", &cache_bytes.to_string(), "--port", "0"]);
    Server::start(cmd)
}

pub fn run(mosa: &Path, weights: &Path, s: &Settings) -> anyhow::Result<Vec<Row>> {
    std::fs::create_dir_all(&s.out)?;
    let n_max = s.experts.iter().copied().max().unwrap_or(1);
    eprintln!("bench-serve: writing {n_max} synthetic sparse experts ({}% of each qkv) …", 100.0 * s.density);
    let (base_task, files) = make_experts(&s.out.join("experts"), weights, n_max, s.density, s.classes)?;
    let body = Arc::new(image());
    let base_mib = file_mib(&[weights.to_path_buf()]);
    let mut rows = Vec::new();
    eprintln!("bench-serve: the base model alone");
    let base =
        measure("mosa: base alone", ours(mosa, weights, std::slice::from_ref(&base_task), s.max_batch)?, &["base".into()], None, None, base_mib, s, &body)?;
    let base_cap = base.capacity_rps;
    rows.push(base);
    for &n in &s.experts {
        let tasks: Vec<String> = (0..n).map(|t| format!("task-{t:03}")).collect();
        for p in [Popularity::Uniform, Popularity::Zipf] {
            if n == 1 && p == Popularity::Zipf {
                continue;
            }
            eprintln!("bench-serve: mosa, {n} experts, {p:?}");
            let server = ours(mosa, weights, &files[..n], s.max_batch)?;
            let row = measure("mosa", server, &tasks, Some(p), Some(base_cap), base_mib + file_mib(&files[..n]), s, &body)?;
            let rss = row.peak_rss_mib;
            rows.push(row);
            if let Some(py) = &s.python {
                eprintln!("bench-serve: PyTorch per-task models, {n} experts, {p:?}");
                // the cache holds as many per-task models as fit in our server's peak memory
                let cache = (rss * (1 << 20) as f64) as u64;
                let sd_dir = s.out.join("state-dicts");
                let server = pytorch(py, weights, &files[..n], cache, &sd_dir)?;
                rows.push(measure("pytorch", server, &tasks, Some(p), Some(base_cap), base_mib * n as f64, s, &body)?);
            }
            write(s, &rows)?;
        }
    }
    write(s, &rows)?;
    if s.soak_seconds > 0.0 {
        soak(mosa, weights, &files, base_cap, s, &body)?;
    }
    Ok(rows)
}

/// The memory soak: RSS every 10 s under steady load, to `soak.csv` and `soak.md`.
fn soak(mosa: &Path, weights: &Path, files: &[PathBuf], base_cap: f64, s: &Settings, body: &Arc<Vec<u8>>) -> anyhow::Result<()> {
    let n = files.len();
    eprintln!("bench-serve: memory soak, {n} experts, uniform, {:.0} s at {:.2} requests/s", s.soak_seconds, 0.7 * base_cap);
    let server = ours(mosa, weights, files, s.max_batch)?;
    let tasks: Vec<String> = (0..n).map(|t| format!("task-{t:03}")).collect();
    let t0 = Instant::now();
    let mut samples = vec![(0.0, server.rss_mib())];
    let point = std::thread::scope(|sc| {
        let h = sc.spawn(|| open_loop(&server.url, &tasks, Popularity::Uniform, 0.7 * base_cap, s.soak_seconds, s.clients, body));
        while !h.is_finished() {
            std::thread::sleep(Duration::from_secs(10));
            samples.push((t0.elapsed().as_secs_f64(), server.rss_mib()));
        }
        h.join().expect("the load thread")
    });
    let mut csv = String::from("seconds,rss_mib\n");
    for (t, r) in &samples {
        csv.push_str(&format!("{t:.1},{r:.1}\n"));
    }
    mosa_core::fsio::write_atomic(&s.out.join("soak.csv"), csv.as_bytes())?;
    let after_warmup: Vec<f64> = samples.iter().filter(|(t, _)| *t >= 60.0).map(|(_, r)| *r).collect();
    let (first, last) = (after_warmup.first().copied().unwrap_or(f64::NAN), after_warmup.last().copied().unwrap_or(f64::NAN));
    let max = after_warmup.iter().copied().fold(f64::NAN, f64::max);
    let md = format!(
        "# Memory soak\n\n`mosa serve` with {n} experts, tasks uniform, {:.0} s of open-loop load at {:.2} requests/s: {} answered, {} errors, p50 {:.0} ms, p99 {:.0} ms. RSS at start {:.0} MiB; from the first minute on: {first:.0} MiB at 60 s, {last:.0} MiB at the end, at most {max:.0} MiB; peak (VmHWM) {:.0} MiB. Samples every 10 s in `soak.csv`.\n",
        s.soak_seconds,
        point.offered_rps,
        point.ok,
        point.errors,
        point.p50_ms,
        point.p99_ms,
        samples[0].1,
        server.peak_rss_mib()
    );
    mosa_core::fsio::write_atomic(&s.out.join("soak.md"), md.as_bytes())?;
    eprintln!("{md}");
    Ok(())
}

pub fn table(rows: &[Row], bound_ms: f64) -> String {
    let mut t = Markdown::new(
        &[
            "server",
            "experts",
            "tasks drawn",
            "capacity img/s",
            "of base",
            &format!("img/s at p99 ≤ {bound_ms:.0} ms"),
            "p50 / p99 ms there",
            "start + first answer s",
            "peak RSS MiB",
            "weights + experts MiB",
        ],
        0,
    );
    let base = rows.first().map(|r| r.capacity_rps).unwrap_or(f64::NAN);
    for r in rows {
        let at = r.points.iter().find(|p| Some(p.offered_rps) == r.rate_at_bound);
        t.row(&[
            r.server.clone(),
            r.experts.to_string(),
            r.popularity.map(|p| format!("{p:?}").to_lowercase()).unwrap_or("-".into()),
            format!("{:.2}", r.capacity_rps),
            format!("{:.0}%", 100.0 * r.capacity_rps / base),
            r.throughput_at_bound.map(|x| format!("{x:.2}")).unwrap_or("none".into()),
            at.map(|p| format!("{:.0} / {:.0}", p.p50_ms, p.p99_ms)).unwrap_or_default(),
            format!("{:.1}", r.first_request_s),
            format!("{:.0}", r.peak_rss_mib),
            format!("{:.0}", r.weights_mib),
        ]);
    }
    t.finish()
}

/// The rate sweep: one row per server and rate.
pub fn points_table(rows: &[Row]) -> String {
    let mut t = Markdown::new(&["server", "experts", "tasks drawn", "offered /s", "answered /s", "p50 ms", "p99 ms", "errors"], 0);
    for r in rows {
        for p in &r.points {
            t.row(&[
                r.server.clone(),
                r.experts.to_string(),
                r.popularity.map(|p| format!("{p:?}").to_lowercase()).unwrap_or("-".into()),
                format!("{:.2}", p.offered_rps),
                format!("{:.2}", p.throughput_rps),
                format!("{:.0}", p.p50_ms),
                format!("{:.0}", p.p99_ms),
                p.errors.to_string(),
            ]);
        }
    }
    t.finish()
}

fn write(s: &Settings, rows: &[Row]) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(rows)?;
    mosa_core::fsio::write_atomic(&s.out.join("results.json"), json.as_bytes())?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())))
        .unwrap_or_default();
    let md = format!(
        "# bench-serve\n\nDINOv2 ViT-S/14 at {SIDE} px, synthetic sparse experts ({}% of every qkv), {} s per rate, {} open-loop clients, max batch {}; CPU: {cpu}, {} threads.\n\n{}\n## Rate sweep\n\n{}",
        100.0 * s.density,
        s.seconds,
        s.clients,
        s.max_batch,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        table(rows, s.p99_bound_ms),
        points_table(rows)
    );
    mosa_core::fsio::write_atomic(&s.out.join("results.md"), md.as_bytes())?;
    Ok(())
}
