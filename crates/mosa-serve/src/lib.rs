//! `mosa serve`: one base backbone in memory, many task experts, answered over HTTP.
//!
//! ```
//! use mosa_serve::{Options, serve};
//!
//! // a base that is not there is refused, naming it, before anything starts
//! let opts = Options::new("no-such-base.safetensors".into(), vec![]);
//! let err = serve::<burn::backend::Flex>(opts, Default::default(), |_| unreachable!()).unwrap_err();
//! assert!(err.to_string().contains("no-such-base.safetensors"));
//! ```
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
            batching: Batching { max_batch: 32, max_wait: Duration::from_millis(2) },
            limits: Limits { max_body: 64 << 20, max_pixels: 40_000_000, timeout: Duration::from_secs(30), max_queue: 512, top_k: 5 },
        }
    }
}

/// What the start reads before the model is built.
struct Start {
    /// The base's tensors (a merged base: its backbone).
    sd: StateDict,
    /// The backbone config, headless, at the serving resolution.
    cfg: BackboneConfig,
    resolution: usize,
    /// The task files under `--experts`.
    files: Vec<PathBuf>,
    /// Whether the base is a merged file (its heads are tasks too).
    merged_base: bool,
    /// Whether a merged file is among the task files (its tensors are compared with the base's).
    merged_files: bool,
}

/// The base's tensors, the task files, and the backbone config and resolution they record; each
/// file's metadata is read once.
fn start(opts: &Options) -> Result<Start> {
    let input = |e: String| Error::Input(e);
    let merged_base = mosa_models::load::safetensors::read_metadata(&opts.base).is_ok_and(|m| m.contains_key("mosa.merged"));
    let (sd, base_recorded) = if merged_base {
        let m = mosa_train::merged::read_merged(&opts.base).map_err(|e| input(e.to_string()))?;
        let cfg = m.backbone_config().ok();
        let res = m.meta.tasks.first().and_then(|t| t.resolution);
        (m.backbone, (cfg, res))
    } else {
        (mosa_models::read_checkpoint(&opts.base).map_err(|e| input(e.to_string()))?, (None, None))
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
    let mut recorded: Option<(Option<BackboneConfig>, Option<usize>)> = None;
    let mut merged_files = false;
    for f in &files {
        let Ok(meta) = mosa_models::load::safetensors::read_metadata(f) else { continue };
        let this = if let Some(t) = meta.get("mosa.expert") {
            serde_json::from_str::<mosa_core::expert::ExpertMeta>(t)
                .ok()
                .map(|m| (serde_json::from_value::<BackboneConfig>(m.backbone.config).ok(), m.resolution))
        } else if let Some(t) = meta.get("mosa.merged") {
            merged_files |= *f != opts.base;
            serde_json::from_str::<mosa_train::merged::MergedMeta>(t)
                .ok()
                .map(|m| (serde_json::from_value::<BackboneConfig>(m.backbone.config).ok(), m.tasks.first().and_then(|t| t.resolution)))
        } else {
            None
        };
        recorded = recorded.or(this);
    }
    let (recorded_cfg, recorded_res) = recorded.unwrap_or((None, None));
    let (base_cfg, base_res) = base_recorded;
    let cfg = opts.model.clone().or(recorded_cfg).or(base_cfg).ok_or_else(|| Error::Input("no task file records its backbone: give --model".into()))?;
    let resolution = opts.resolution.or(recorded_res).or(base_res).ok_or_else(|| Error::Input("no task records its resolution: give --resolution".into()))?;
    Ok(Start { sd, cfg: cfg.with_num_classes(0).with_img_size(resolution), resolution, files, merged_base, merged_files })
}

/// Starts the server and serves until SIGINT / SIGTERM (then finishes the requests in flight).
/// `on_ready` gets the bound address (an `addr` with port 0 binds a free port).
pub fn serve<B: Kernels>(opts: Options, device: B::Device, on_ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let sha256 = mosa_train::rundir::file_sha256(&opts.base).map_err(|e| Error::Input(e.to_string()))?;
    let Start { sd, cfg, resolution, files, merged_base, merged_files } = start(&opts)?;
    let metrics = Arc::new(metrics::Metrics::new());
    let shared = worker::Shared::new();

    // the worker builds the model on its own thread (a GPU context stays with one thread) and
    // reports the layout the task files are checked against
    let base_copy = merged_files.then(|| Arc::new(sd.clone()));
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
    let loaded = files.iter().chain(merged_base.then_some(&opts.base)).try_for_each(|f| {
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
        limits: opts.limits.clone(),
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
