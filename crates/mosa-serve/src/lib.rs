//! `mosa serve`: one base backbone in memory, many task experts, answered over HTTP.
//!
//! Every task is a model of KServe's Open Inference Protocol v2 ([`v2`], [`http`]): an expert
//! file (sparse, LoRA or full, `mosa expert export`) with its head and preprocessing, or a
//! head of a merged file (`mosa merge`). burn runs on one worker thread ([`worker`]), never on
//! the async runtime: requests queue per task, the worker forms a batch per task (size cap,
//! wait cap), puts that task's weights in place and answers every request of the batch from
//! that one state. Metrics in [`metrics`]; files to tasks in [`task`]; images to tensors in
//! [`preprocess`].
//!
//! ```no_run
//! # fn main() -> Result<(), mosa_serve::Error> {
//! use mosa_serve::{Options, serve};
//! let opts = Options::new("dinov2-vits14.safetensors".into(), vec!["experts/".into()]);
//! serve::<burn::backend::Flex>(opts, Default::default(), |addr| println!("listening on http://{addr}"))
//! # }
//! ```

pub mod error;
pub mod http;
pub mod metrics;
pub mod preprocess;
pub mod task;
pub mod v2;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mosa_kernels::Kernels;
use mosa_models::{BackboneConfig, HeadPolicy, StateDict};

pub use error::{Error, Result};
pub use http::Limits;
pub use worker::Batching;

use task::Base;

/// How the server starts.
#[derive(Debug, Clone)]
pub struct Options {
    /// The base weights (a checkpoint, or a merged file whose heads are then tasks).
    pub base: PathBuf,
    /// Expert files, merged files, or folders holding them.
    pub experts: Vec<PathBuf>,
    /// The backbone (default: the one the first task's file records).
    pub model: Option<BackboneConfig>,
    /// The input side (default: the first task's).
    pub resolution: Option<usize>,
    pub addr: SocketAddr,
    /// The repository API's bearer token (None: load / unload are refused).
    pub token: Option<String>,
    pub batching: Batching,
    pub limits: Limits,
}

impl Options {
    pub fn new(base: PathBuf, experts: Vec<PathBuf>) -> Self {
        Self {
            base,
            experts,
            model: None,
            resolution: None,
            addr: "127.0.0.1:8080".parse().expect("an address"),
            token: None,
            batching: Batching { max_batch: 32, max_wait: Duration::from_millis(2), max_queue: 512 },
            limits: Limits { max_body: 64 << 20, max_pixels: 40_000_000, timeout: Duration::from_secs(30), max_queue: 512, top_k: 5 },
        }
    }
}

/// The base's tensors, and the backbone config and resolution its files record.
fn base_and_config(opts: &Options) -> Result<(StateDict, BackboneConfig, usize, Vec<PathBuf>)> {
    let input = |e: String| Error::Input(e);
    let base_meta = mosa_models::load::safetensors::read_metadata(&opts.base).ok();
    let merged_base = base_meta.as_ref().is_some_and(|m| m.contains_key("mosa.merged"));
    let (sd, base_recorded) = if merged_base {
        let m = mosa_train::merged::read_merged(&opts.base).map_err(|e| input(e.to_string()))?;
        let cfg = m.backbone_config().ok();
        let res = m.meta.tasks.first().and_then(|t| t.resolution);
        (m.backbone, cfg.map(|c| (c, res)))
    } else {
        (mosa_models::read_checkpoint(&opts.base).map_err(|e| input(e.to_string()))?, None)
    };
    let mut files = Vec::new();
    for p in &opts.experts {
        let found = task::discover(p)?;
        if found.is_empty() {
            return Err(Error::Input(format!("{}: holds no expert or merged file", p.display())));
        }
        files.extend(found);
    }
    // what the first task file records: its backbone config and resolution (each may be absent)
    let recorded: Option<(Option<BackboneConfig>, Option<usize>)> = files.iter().find_map(|f| {
        let meta = mosa_models::load::safetensors::read_metadata(f).ok()?;
        if let Some(t) = meta.get("mosa.expert") {
            let m: mosa_core::expert::ExpertMeta = serde_json::from_str(t).ok()?;
            Some((serde_json::from_value::<BackboneConfig>(m.backbone.config).ok(), m.resolution))
        } else {
            let m: mosa_train::merged::MergedMeta = serde_json::from_str(meta.get("mosa.merged")?).ok()?;
            Some((serde_json::from_value::<BackboneConfig>(m.backbone.config).ok(), m.tasks.first().and_then(|t| t.resolution)))
        }
    });
    let (recorded_cfg, recorded_res) = recorded.unwrap_or((None, None));
    let (base_cfg, base_res) = base_recorded.map(|(c, r)| (Some(c), r)).unwrap_or((None, None));
    let cfg = opts.model.clone().or(recorded_cfg).or(base_cfg).ok_or_else(|| Error::Input("no task file records its backbone: give --model".into()))?;
    let resolution = opts.resolution.or(recorded_res).or(base_res).ok_or_else(|| Error::Input("no task records its resolution: give --resolution".into()))?;
    Ok((sd, cfg.with_num_classes(0).with_img_size(resolution), resolution, files))
}

/// Starts the server and serves until SIGINT / SIGTERM (then finishes the requests in flight).
/// `on_ready` gets the bound address (an `addr` with port 0 binds a free port).
pub fn serve<B: Kernels>(opts: Options, device: B::Device, on_ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let sha256 = mosa_train::rundir::file_sha256(&opts.base).map_err(|e| Error::Input(e.to_string()))?;
    let (sd, cfg, resolution, files) = base_and_config(&opts)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let shared = worker::Shared::new();

    // the worker builds the model on its own thread (a GPU context stays with one thread) and
    // reports the layout the task files are checked against
    let keep_base = files.iter().any(|f| mosa_models::load::safetensors::read_metadata(f).is_ok_and(|m| m.contains_key("mosa.merged")) && *f != opts.base);
    let base_copy = keep_base.then(|| Arc::new(sd.clone()));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let worker = {
        let (shared, metrics, batching) = (shared.clone(), metrics.clone(), opts.batching);
        std::thread::Builder::new()
            .name("mosa-worker".into())
            .spawn(move || {
                let model = match cfg.load_state::<B>(sd, HeadPolicy::Skip, &device) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let w = worker::Worker::new(model, device, metrics);
                let layout = w.layout();
                let features = w.features(resolution);
                let _ = ready_tx.send(Ok((layout, features)));
                w.serve(shared, batching);
            })
            .map_err(|e| Error::Unavailable(format!("cannot start the worker thread: {e}")))?
    };
    let (layout, features) = ready_rx
        .recv()
        .map_err(|_| Error::Unavailable("the worker thread stopped".into()))?
        .map_err(|e| Error::Input(format!("{}: {e}", opts.base.display())))?;
    let base = Arc::new(Base { path: opts.base.clone(), sha256, layout, tensors: base_copy, resolution, features });
    // one file at a time to the worker, which turns it into device tensors: the host copy of a
    // file's tasks is freed before the next file is read (100 experts never sit in memory twice)
    let mut tasks = std::collections::BTreeMap::new();
    let mut seen = std::collections::HashMap::new();
    let base_file = [opts.base.clone()];
    let base_tasks = mosa_models::load::safetensors::read_metadata(&opts.base).is_ok_and(|m| m.contains_key("mosa.merged"));
    let loaded = files.iter().chain(base_tasks.then_some(&base_file[0])).try_for_each(|f| {
        let specs = task::read(f, &base)?;
        for s in &specs {
            if let Some(prev) = seen.insert(s.meta.name.clone(), f.clone()) {
                return Err(Error::Input(format!("task `{}` is served twice: by {} and by {}", s.meta.name, prev.display(), f.display())));
            }
            tasks.insert(s.meta.name.clone(), Arc::new(s.meta.clone()));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        shared.admin(worker::Admin::Load(specs, tx));
        rx.blocking_recv().map_err(|_| Error::Unavailable("the worker stopped while loading the tasks".into()))?.map_err(Error::Input)
    });
    let loaded = loaded.and_then(|()| if tasks.is_empty() { Err(Error::Input("no tasks to serve".into())) } else { Ok(()) });
    if let Err(e) = loaded {
        shared.close();
        let _ = worker.join();
        return Err(e);
    }
    let app = Arc::new(http::App {
        tasks: std::sync::RwLock::new(tasks),
        shared: shared.clone(),
        metrics,
        limits: http::Limits { max_queue: opts.batching.max_queue, ..opts.limits.clone() },
        token: opts.token.clone(),
        base,
        expert_paths: opts.experts.clone(),
        ready: AtomicBool::new(false),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("mosa-http")
        .enable_all()
        .build()
        .map_err(|e| Error::Unavailable(format!("cannot start the HTTP runtime: {e}")))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(opts.addr).await.map_err(|e| Error::Input(format!("cannot listen on {}: {e}", opts.addr)))?;
        let addr = listener.local_addr().map_err(|e| Error::Input(e.to_string()))?;
        app.ready.store(true, Ordering::SeqCst);
        on_ready(addr);
        let router = http::router(app.clone());
        axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await.map_err(|e| Error::Unavailable(format!("the HTTP server failed: {e}")))
    });
    app.ready.store(false, Ordering::SeqCst);
    // in-flight requests have been answered (graceful shutdown waits for them); the worker
    // finishes what is queued and stops
    shared.close();
    let _ = worker.join();
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
