//! The HTTP API (axum on tokio; burn never runs here). Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | a page to try a task: pick it, drop an image, see the top 5 |
//! | `GET /v2`, `/v2/health/live`, `/v2/health/ready` | server metadata and health (KServe v2) |
//! | `GET /v2/models` | the tasks |
//! | `GET /v2/models/{task}`, `/v2/models/{task}/ready` | a task's metadata (input size, classes) |
//! | `POST /v2/models/{task}/infer` | KServe v2 inference ([`crate::v2`]) |
//! | `POST /predictions/{task}` | one JPEG/PNG body, or a multipart of several: top-k JSON |
//! | `POST /v2/repository/index` | the tasks and their state |
//! | `POST /v2/repository/models/{task}/load`, `/unload` | add or drop a task (bearer token) |
//! | `GET /metrics` | Prometheus |

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::{Metrics, RequestLabels, TaskLabel};
use crate::task::{Base, TaskMeta};
use crate::v2;
use crate::worker::{Admin, Job, Refused, Shared};

/// Limits on requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body (bytes).
    pub max_body: usize,
    /// Largest decoded image (pixels).
    pub max_pixels: u64,
    /// Longest a request may take from arrival to answer.
    pub timeout: Duration,
    /// Most images waiting; more: 429.
    pub max_queue: usize,
    /// Top classes `/predictions` answers.
    pub top_k: usize,
}

pub struct App {
    pub tasks: RwLock<BTreeMap<String, Arc<TaskMeta>>>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// The repository API's bearer token (None: that API is off).
    pub token: Option<String>,
    pub base: Arc<Base>,
    /// Where `load` looks for a task's file when the request names none.
    pub expert_paths: Vec<PathBuf>,
    pub ready: AtomicBool,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(json!({ "error": self.to_string() }))).into_response()
    }
}

pub fn router(app: Arc<App>) -> Router {
    let max_body = app.limits.max_body;
    Router::new()
        .route("/", get(page))
        .route("/v2", get(server_meta))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models", get(models))
        .route("/v2/models/{task}", get(model_meta))
        .route("/v2/models/{task}/ready", get(model_ready))
        .route("/v2/models/{task}/infer", post(infer))
        .route("/predictions/{task}", post(predictions))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{task}/load", post(load))
        .route("/v2/repository/models/{task}/unload", post(unload))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(app.clone(), declared_length))
        .with_state(app)
}

/// A body declared larger than the limit (Content-Length) is refused before it is read; one
/// that turns out larger while read (chunked) is cut by the body limit.
async fn declared_length(State(app): State<Arc<App>>, req: Request, next: axum::middleware::Next) -> Response {
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > app.limits.max_body as u64 => {
            Error::TooLarge(format!("the body of {n} bytes is over the limit of {} bytes", app.limits.max_body)).into_response()
        }
        _ => next.run(req).await,
    }
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn server_meta() -> axum::Json<Value> {
    axum::Json(json!({
        "name": "mosa",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["classification", "binary_tensor_data", "model_repository"],
    }))
}

async fn live() -> axum::Json<Value> {
    axum::Json(json!({ "live": true }))
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::SeqCst) {
        axum::Json(json!({ "ready": true })).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "ready": false }))).into_response()
    }
}

fn describe(t: &TaskMeta) -> Value {
    json!({
        "name": t.name,
        "kind": t.kind,
        "classes": t.classes,
        "resolution": t.resolution,
        "source": t.source.display().to_string(),
        "bytes": t.bytes,
        "entries": t.entries,
    })
}

async fn models(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let tasks = app.tasks.read().expect("tasks lock");
    axum::Json(json!({ "models": tasks.values().map(|t| describe(t)).collect::<Vec<_>>() }))
}

fn task(app: &App, name: &str) -> Result<Arc<TaskMeta>> {
    let tasks = app.tasks.read().expect("tasks lock");
    tasks.get(name).cloned().ok_or_else(|| {
        let names: Vec<&str> = tasks.keys().take(20).map(String::as_str).collect();
        Error::NotFound(format!("no task `{name}` (tasks: {})", names.join(", ")))
    })
}

async fn model_meta(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<axum::Json<Value>> {
    let t = task(&app, &name)?;
    let r = t.resolution as i64;
    Ok(axum::Json(json!({
        "name": t.name,
        "versions": ["1"],
        "platform": "mosa",
        "inputs": [{ "name": "input", "datatype": "FP32", "shape": [-1, 3, r, r] }],
        "outputs": [{ "name": "logits", "datatype": "FP32", "shape": [-1, t.classes.len()] }],
        "parameters": describe(&t),
    })))
}

async fn model_ready(State(app): State<Arc<App>>, Path(name): Path<String>) -> Result<axum::Json<Value>> {
    task(&app, &name)?;
    Ok(axum::Json(json!({ "name": name, "ready": true })))
}

/// Queues a preprocessed batch for `t` and waits for its logits, within the request's timeout.
async fn run(app: &App, t: &TaskMeta, n: usize, input: Vec<f32>, arrived: Instant) -> Result<Vec<f32>> {
    let (tx, rx) = oneshot::channel();
    let job = Job { task: t.name.clone(), n, side: t.resolution, input, enqueued: Instant::now(), reply: tx };
    match app.shared.push(job, app.limits.max_queue) {
        Ok(()) => {}
        Err(Refused::Closing) => return Err(Error::Unavailable("the server is shutting down".into())),
        Err(Refused::Full) => return Err(Error::Busy(format!("the queue is full ({} images waiting); retry later", app.limits.max_queue))),
    }
    let left = app.limits.timeout.saturating_sub(arrived.elapsed());
    match tokio::time::timeout(left, rx).await {
        Ok(Ok(Ok(logits))) => Ok(logits),
        Ok(Ok(Err(msg))) => Err(Error::NotFound(msg)),
        Ok(Err(_)) => Err(Error::Unavailable("the worker stopped before answering".into())),
        Err(_) => Err(Error::Timeout(format!("no answer within {:.1} s", app.limits.timeout.as_secs_f64()))),
    }
}

/// Counts and times a request's answer.
fn record<T>(app: &App, task: &str, arrived: Instant, r: &Result<T>) {
    let known = app.tasks.read().expect("tasks lock").contains_key(task);
    let label = if known { task.to_string() } else { "(unknown)".to_string() };
    let code = match r {
        Ok(_) => 200,
        Err(e) => e.status(),
    };
    app.metrics.requests.get_or_create(&RequestLabels { task: label.clone(), code }).inc();
    if known && r.is_ok() {
        app.metrics.latency.get_or_create(&TaskLabel { task: label }).observe(arrived.elapsed().as_secs_f64());
    }
}

/// Decodes and preprocesses images off the async runtime.
async fn decode(app: &App, t: Arc<TaskMeta>, images: Vec<(String, Vec<u8>)>) -> Result<Vec<f32>> {
    let max = app.limits.max_pixels;
    tokio::task::spawn_blocking(move || crate::preprocess::images(&t, &images, max))
        .await
        .map_err(|e| Error::Unavailable(format!("image decoding failed: {e}")))?
}

async fn infer(State(app): State<Arc<App>>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<axum::Json<v2::InferResponse>> {
    let arrived = Instant::now();
    let r = infer_inner(&app, &name, &headers, &body, arrived).await;
    record(&app, &name, arrived, &r);
    r.map(axum::Json)
}

async fn infer_inner(app: &App, name: &str, headers: &HeaderMap, body: &[u8], arrived: Instant) -> Result<v2::InferResponse> {
    let t = task(app, name)?;
    let header_len = match headers.get("inference-header-content-length") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::BadRequest("Inference-Header-Content-Length is not a byte count".into()))?,
        ),
    };
    let parsed = v2::parse(body, header_len)?;
    let side = t.resolution;
    let (n, input) = match parsed.input {
        v2::Input::Tensor { shape, data } => {
            if shape.len() != 4 || shape[1] != 3 || shape[2] != side || shape[3] != side || shape[0] == 0 {
                return Err(Error::BadRequest(format!("input `input` has shape {shape:?}; task `{name}` takes [N, 3, {side}, {side}] with N ≥ 1")));
            }
            (shape[0], data)
        }
        v2::Input::Images(items) => {
            if items.is_empty() {
                return Err(Error::BadRequest("input `input` holds no image".into()));
            }
            let n = items.len();
            let named = items.into_iter().enumerate().map(|(i, b)| (format!("image {i}"), b)).collect();
            (n, decode(app, t.clone(), named).await?)
        }
    };
    let logits = run(app, &t, n, input, arrived).await?;
    Ok(v2::InferResponse {
        model_name: t.name.clone(),
        model_version: "1".into(),
        id: parsed.id,
        outputs: vec![v2::logits_output(&logits, n, &t.classes, parsed.classification)],
    })
}

/// `/predictions/{task}`: the top k per image, with softmax probabilities.
async fn predictions(State(app): State<Arc<App>>, Path(name): Path<String>, req: Request) -> Result<axum::Json<Value>> {
    let arrived = Instant::now();
    let r = predictions_inner(&app, &name, req, arrived).await;
    record(&app, &name, arrived, &r);
    r.map(axum::Json)
}

async fn predictions_inner(app: &Arc<App>, name: &str, req: Request, arrived: Instant) -> Result<Value> {
    let t = task(app, name)?;
    let multipart = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("multipart/form-data"));
    let (images, many) = if multipart {
        let mut m = Multipart::from_request(req, &()).await.map_err(|e| Error::BadRequest(format!("multipart body: {e}")))?;
        let mut images = Vec::new();
        while let Some(field) = m.next_field().await.map_err(|e| Error::BadRequest(format!("multipart body: {e}")))? {
            let label = field.file_name().or(field.name()).map(|s| format!("file \"{s}\"")).unwrap_or_else(|| format!("part {}", images.len()));
            let bytes = field.bytes().await.map_err(|e| Error::BadRequest(format!("{label}: {e}")))?;
            images.push((label, bytes.to_vec()));
        }
        if images.is_empty() {
            return Err(Error::BadRequest("the multipart body holds no file".into()));
        }
        (images, true)
    } else {
        let body = Bytes::from_request(req, &())
            .await
            .map_err(|e| if e.status() == StatusCode::PAYLOAD_TOO_LARGE { Error::TooLarge(e.body_text()) } else { Error::BadRequest(e.body_text()) })?;
        if body.is_empty() {
            return Err(Error::BadRequest("the body is empty; send a JPEG or PNG image".into()));
        }
        (vec![("the body".to_string(), body.to_vec())], false)
    };
    let n = images.len();
    let labels: Vec<String> = images.iter().map(|(l, _)| l.clone()).collect();
    let input = decode(app, t.clone(), images).await?;
    let logits = run(app, &t, n, input, arrived).await?;
    let c = t.classes.len();
    let answers: Vec<Value> = logits
        .chunks(c)
        .zip(&labels)
        .map(|(row, what)| {
            let p = v2::softmax(row);
            let top: Vec<Value> = v2::top_k(row, app.limits.top_k.min(c))
                .into_iter()
                .map(|(i, logit)| json!({ "index": i, "label": t.classes[i], "probability": p[i], "logit": logit }))
                .collect();
            json!({ "image": what, "top": top })
        })
        .collect();
    Ok(if many { json!({ "task": t.name, "predictions": answers }) } else { json!({ "task": t.name, "top": answers[0]["top"] }) })
}

async fn repository_index(State(app): State<Arc<App>>) -> axum::Json<Value> {
    let tasks = app.tasks.read().expect("tasks lock");
    axum::Json(Value::from(tasks.keys().map(|k| json!({ "name": k, "version": "1", "state": "READY" })).collect::<Vec<_>>()))
}

/// The repository API requires `Authorization: Bearer <token>`.
fn authorise(app: &App, headers: &HeaderMap) -> Result<()> {
    let Some(token) = &app.token else {
        return Err(Error::Unauthorized("the repository API is off: start the server with --token-file to use it".into()));
    };
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    // compared in full, whatever the first difference
    let same = given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same { Ok(()) } else { Err(Error::Unauthorized("missing or wrong bearer token".into())) }
}

async fn load(State(app): State<Arc<App>>, Path(name): Path<String>, headers: HeaderMap, body: Bytes) -> Result<axum::Json<Value>> {
    authorise(&app, &headers)?;
    // the file: `{"parameters": {"path": "..."}}`, or the one under the --experts paths that
    // provides the task
    let path: Option<PathBuf> = if body.is_empty() {
        None
    } else {
        let v: Value = serde_json::from_slice(&body).map_err(|e| Error::BadRequest(format!("request JSON: {e}")))?;
        v.pointer("/parameters/path").and_then(Value::as_str).map(PathBuf::from)
    };
    let (base, paths) = (app.base.clone(), app.expert_paths.clone());
    let wanted = name.clone();
    let specs = tokio::task::spawn_blocking(move || -> Result<Vec<crate::task::TaskSpec>> {
        let files = match path {
            Some(p) => vec![p],
            None => {
                let mut all = Vec::new();
                for p in &paths {
                    all.extend(crate::task::discover(p)?);
                }
                all
            }
        };
        for f in files {
            let specs = crate::task::read(&f, &base)?;
            if specs.iter().any(|s| s.meta.name == wanted) {
                return Ok(specs.into_iter().filter(|s| s.meta.name == wanted).collect());
            }
        }
        Err(Error::NotFound(format!("no expert file for task `{wanted}` (give its file as {{\"parameters\": {{\"path\": \"...\"}}}})")))
    })
    .await
    .map_err(|e| Error::Unavailable(format!("loading failed: {e}")))??;
    let metas: Vec<Arc<TaskMeta>> = specs.iter().map(|s| Arc::new(s.meta.clone())).collect();
    let (tx, rx) = oneshot::channel();
    app.shared.admin(Admin::Load(specs, tx));
    rx.await.map_err(|_| Error::Unavailable("the worker stopped".into()))?.map_err(Error::Input)?;
    // visible once the worker has it in place
    let mut tasks = app.tasks.write().expect("tasks lock");
    for m in metas {
        tasks.insert(m.name.clone(), m);
    }
    Ok(axum::Json(json!({ "name": name, "loaded": true })))
}

async fn unload(State(app): State<Arc<App>>, Path(name): Path<String>, headers: HeaderMap) -> Result<axum::Json<Value>> {
    authorise(&app, &headers)?;
    // no new request reaches it; those queued are answered before it goes
    if app.tasks.write().expect("tasks lock").remove(&name).is_none() {
        return Err(Error::NotFound(format!("no task `{name}` is loaded")));
    }
    let (tx, rx) = oneshot::channel();
    app.shared.admin(Admin::Unload(name.clone(), tx));
    rx.await.map_err(|_| Error::Unavailable("the worker stopped".into()))?.map_err(Error::NotFound)?;
    Ok(axum::Json(json!({ "name": name, "unloaded": true })))
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], app.metrics.encode(app.shared.depth()))
}
