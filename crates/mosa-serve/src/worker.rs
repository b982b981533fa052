//! The worker: the one thread that runs burn. Requests wait in one queue per task; the worker
//! takes the task whose oldest request is oldest, waits up to the wait cap for that task's batch
//! to fill (size cap), puts the task's weight change in place (if another is), runs the batch
//! and answers each request. Loading and unloading tasks happen between batches, so every
//! request is answered by exactly one state of the weights.
//!
//! A sparse change is added into the model's own tensors in place and taken out by writing the
//! saved entries back ([`mosa_kernels::entries`]: O(nnz), bit for bit); a dense change (LoRA,
//! full, a merged file's tensors) is built from the base tensor, which is kept, and taken out by
//! handing the base back. (The alternative — the base untouched and `x·ΔW` added beside each
//! changed linear layer on every batch — was measured against this: `docs/serve.md`.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::TensorData;
use mosa_kernels::Kernels;
use mosa_models::Backbone;
use tokio::sync::oneshot;

use crate::metrics::Metrics;
use crate::task::{Change, TaskSpec, WeightChange};

/// Logits of one request, row-major `[n, classes]`.
pub type Answer = std::result::Result<Vec<f32>, String>;

/// One request's images, already preprocessed (`[n, 3, side, side]`).
pub struct Job {
    pub task: String,
    pub n: usize,
    pub side: usize,
    pub input: Vec<f32>,
    pub enqueued: Instant,
    pub reply: oneshot::Sender<Answer>,
}

/// What the repository API asks of the worker.
pub enum Admin {
    Load(Vec<TaskSpec>, oneshot::Sender<std::result::Result<(), String>>),
    Unload(String, oneshot::Sender<std::result::Result<(), String>>),
}

/// The queues, shared by the HTTP side (pushing) and the worker (taking).
#[derive(Default)]
pub struct Queue {
    by_task: HashMap<String, VecDeque<Job>>,
    admin: VecDeque<Admin>,
    /// Images waiting over all tasks.
    pub images: usize,
    pub closing: bool,
}

impl Queue {
    /// The front of `task`'s queue: jobs up to `max` images (a larger job alone).
    fn take_batch(&mut self, task: &str, max: usize) -> Vec<Job> {
        let Some(jobs) = self.by_task.get_mut(task) else { return Vec::new() };
        let mut taken = Vec::new();
        let mut n = 0;
        while let Some(j) = jobs.front() {
            if !taken.is_empty() && n + j.n > max {
                break;
            }
            n += j.n;
            taken.push(jobs.pop_front().expect("front"));
        }
        if jobs.is_empty() {
            self.by_task.remove(task);
        }
        self.images -= n;
        taken
    }
}

pub struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
}

/// Batch formation.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Most images in one forward pass.
    pub max_batch: usize,
    /// How long the oldest request waits for its batch to fill.
    pub max_wait: Duration,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The server is shutting down.
    Closing,
    /// `max_queue` images already wait.
    Full,
}

impl Shared {
    pub fn new() -> Arc<Self> {
        Arc::new(Self { queue: Mutex::new(Queue::default()), wake: Condvar::new() })
    }

    /// Queues a job; refused when `max_queue` images already wait or the server is closing.
    pub fn push(&self, job: Job, max_queue: usize) -> std::result::Result<(), Refused> {
        let mut q = self.queue.lock().expect("queue lock");
        if q.closing {
            return Err(Refused::Closing);
        }
        if q.images + job.n > max_queue && q.images > 0 {
            return Err(Refused::Full);
        }
        q.images += job.n;
        q.by_task.entry(job.task.clone()).or_default().push_back(job);
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    pub fn admin(&self, a: Admin) {
        self.queue.lock().expect("queue lock").admin.push_back(a);
        self.wake.notify_one();
    }

    /// Stops taking requests; the worker finishes those queued and exits.
    pub fn close(&self) {
        self.queue.lock().expect("queue lock").closing = true;
        self.wake.notify_all();
    }

    pub fn depth(&self) -> usize {
        self.queue.lock().expect("queue lock").images
    }
}

enum Work {
    Admin(Admin),
    Batch(String, Vec<Job>),
    Stop,
}

/// Takes the next piece of work, waiting for it (and for a batch to fill).
fn next(shared: &Shared, b: &Batching) -> Work {
    let mut q = shared.queue.lock().expect("queue lock");
    loop {
        if let Some(a) = q.admin.pop_front() {
            return Work::Admin(a);
        }
        // the task whose oldest request is oldest
        let oldest = q.by_task.iter().filter_map(|(t, jobs)| jobs.front().map(|j| (j.enqueued, t.clone()))).min();
        match oldest {
            Some((since, task)) => {
                let jobs = &q.by_task[&task];
                let waiting: usize = jobs.iter().map(|j| j.n).sum();
                let age = since.elapsed();
                if waiting < b.max_batch && age < b.max_wait && !q.closing {
                    q = shared.wake.wait_timeout(q, b.max_wait - age).expect("queue lock").0;
                    continue;
                }
                let taken = q.take_batch(&task, b.max_batch);
                return Work::Batch(task, taken);
            }
            None if q.closing => return Work::Stop,
            None => q = shared.wake.wait(q).expect("queue lock"),
        }
    }
}

/// A weight change of one tensor as device tensors, in the model's layout.
enum DeviceChange<B: Backend> {
    /// Added in place ([`mosa_kernels::entries`]).
    Sparse { indices: Tensor<B, 1, Int>, values: Tensor<B, 1> },
    /// Built from the base tensor.
    Dense(DenseChange<B>),
}

enum DenseChange<B: Backend> {
    LowRank { a: Tensor<B, 2>, b: Tensor<B, 2> },
    Add(Tensor<B, 1>),
    Replace(Tensor<B, 1>),
}

impl<B: Backend> DenseChange<B> {
    /// The changed tensor (flattened), built from its base.
    fn build(&self, base: &Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            DenseChange::LowRank { a, b } => {
                let d = a.clone().matmul(b.clone());
                let n = d.shape().num_elements();
                base.clone() + d.reshape([n])
            }
            DenseChange::Add(d) => base.clone() + d.clone(),
            DenseChange::Replace(t) => t.clone(),
        }
    }
}

struct DeviceWeights<B: Backend> {
    id: u64,
    tensors: Vec<(String, DeviceChange<B>)>,
}

impl<B: Backend> DeviceWeights<B> {
    fn new(c: &WeightChange, device: &B::Device) -> Self {
        let flat = |v: &[f32]| Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
        let tensors = c
            .tensors
            .iter()
            .map(|(name, ch)| {
                let d = match ch {
                    Change::Sparse { indices, values } => DeviceChange::Sparse {
                        indices: Tensor::from_data(TensorData::new(indices.iter().map(|&i| i as i64).collect::<Vec<_>>(), [indices.len()]), device),
                        values: flat(values),
                    },
                    Change::LowRank { a_t, b_t } => DeviceChange::Dense(DenseChange::LowRank {
                        a: Tensor::from_data(TensorData::new(a_t.data.clone(), [a_t.shape[0], a_t.shape[1]]), device),
                        b: Tensor::from_data(TensorData::new(b_t.data.clone(), [b_t.shape[0], b_t.shape[1]]), device),
                    }),
                    Change::Dense(v) => DeviceChange::Dense(DenseChange::Add(flat(v))),
                    Change::Replace(v) => DeviceChange::Dense(DenseChange::Replace(flat(v))),
                };
                (name.clone(), d)
            })
            .collect();
        Self { id: c.id, tensors }
    }
}

/// A task as the worker holds it.
struct Installed<B: Backend> {
    head: Linear<B>,
    weights: Option<Arc<DeviceWeights<B>>>,
}

/// The weight change in place: its tensors, and for each sparse one the entries it overwrote.
struct InPlace<B: Backend> {
    weights: Arc<DeviceWeights<B>>,
    saved: HashMap<String, Tensor<B, 1>>,
}

/// The worker's state: the model, the base tensors of the parameters a dense change (LoRA,
/// full, merged) replaces, the installed tasks and which weight change is in place.
pub struct Worker<B: Kernels> {
    model: Option<Backbone<B>>,
    /// Bases are kept only where a dense change needs one: a parameter only sparse changes touch
    /// is owned by the model alone, and changed in place in O(nnz).
    base: HashMap<String, Tensor<B, 1>>,
    tasks: HashMap<String, Installed<B>>,
    /// Device copies of the weight changes, by id (shared by the tasks of one merged file).
    changes: HashMap<u64, Arc<DeviceWeights<B>>>,
    in_place: Option<InPlace<B>>,
    device: B::Device,
    metrics: Arc<Metrics>,
}

fn head<B: Backend>(h: &mosa_core::expert::Head, device: &B::Device) -> Linear<B> {
    let (c, d) = (h.weight.shape[0], h.weight.shape[1]);
    let w = h.weight.t();
    Linear {
        weight: burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(w.data, [d, c]), device)),
        bias: h.bias.as_ref().map(|b| burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(b.data.clone(), [c]), device))),
    }
}

impl<B: Kernels> Worker<B> {
    pub fn new(model: Backbone<B>, device: B::Device, metrics: Arc<Metrics>) -> Self {
        Self { model: Some(model), base: HashMap::new(), tasks: HashMap::new(), changes: HashMap::new(), in_place: None, device, metrics }
    }

    /// Every backbone parameter's layout, by timm name.
    pub fn layout(&self) -> std::collections::BTreeMap<String, mosa_models::load::by_path::ParamLayout> {
        self.model.as_ref().expect("model").param_layout()
    }

    /// The width of the features the heads read (one forward on a blank image of `side` px).
    pub fn features(&self, side: usize) -> usize {
        let x = Tensor::<B, 4>::zeros([1, 3, side, side], &self.device);
        self.model.as_ref().expect("model").forward(x).pre_logits.dims()[1]
    }

    /// Installs tasks (replacing those of the same names).
    pub fn install(&mut self, specs: Vec<TaskSpec>) {
        for s in specs {
            let weights = s.change.as_ref().map(|c| {
                // a dense change needs its parameters' bases: read from the model with the base in place
                let missing: HashSet<String> = c
                    .tensors
                    .iter()
                    .filter(|(_, ch)| !matches!(ch, Change::Sparse { .. }))
                    .map(|(n, _)| n.clone())
                    .filter(|n| !self.base.contains_key(n))
                    .collect();
                if !missing.is_empty() {
                    self.put_in_place(None);
                    let found = self.model.as_ref().expect("model").params_flat(&missing);
                    self.base.extend(found);
                }
                self.changes.entry(c.id).or_insert_with(|| Arc::new(DeviceWeights::new(c, &self.device))).clone()
            });
            if let Some(old) = self.tasks.insert(s.meta.name.clone(), Installed { head: head(&s.head, &self.device), weights }) {
                self.forget(old);
            }
        }
        self.metrics.experts.set(self.tasks.len() as i64);
    }

    pub fn uninstall(&mut self, task: &str) -> bool {
        match self.tasks.remove(task) {
            Some(old) => {
                self.forget(old);
                self.metrics.experts.set(self.tasks.len() as i64);
                true
            }
            None => false,
        }
    }

    /// Drops a removed task's weight change when no other task shares it; one in place is
    /// taken out first (the base goes back).
    fn forget(&mut self, old: Installed<B>) {
        let Some(w) = old.weights else { return };
        if self.tasks.values().any(|t| t.weights.as_ref().is_some_and(|x| x.id == w.id)) {
            return;
        }
        if self.in_place.as_ref().is_some_and(|x| x.weights.id == w.id) {
            self.put_in_place(None);
        }
        self.changes.remove(&w.id);
    }

    /// Makes `want` the weight change in place (None: the base): the change in place is taken
    /// out (sparse entries get their saved bits back, dense tensors their base), then `want`'s
    /// is put in (sparse values added in place, their old entries saved), in one walk.
    fn put_in_place(&mut self, want: Option<Arc<DeviceWeights<B>>>) {
        if self.in_place.as_ref().map(|w| w.weights.id) == want.as_ref().map(|w| w.id) {
            return;
        }
        let t0 = Instant::now();
        let old = self.in_place.take();
        let mut names: HashSet<String> = HashSet::new();
        let mut undo: HashMap<&str, &DeviceChange<B>> = HashMap::new();
        if let Some(o) = &old {
            for (name, ch) in &o.weights.tensors {
                names.insert(name.clone());
                undo.insert(name, ch);
            }
        }
        let mut put: HashMap<&str, &DeviceChange<B>> = HashMap::new();
        if let Some(w) = &want {
            for (name, ch) in &w.tensors {
                names.insert(name.clone());
                put.insert(name, ch);
            }
        }
        let mut saved = HashMap::new();
        let base = &self.base;
        let mut step = |name: &str, t: Tensor<B, 1>| -> Tensor<B, 1> {
            let t = match undo.get(name) {
                Some(DeviceChange::Sparse { indices, .. }) => {
                    let entries = old.as_ref().and_then(|o| o.saved.get(name)).expect("a sparse change in place saved its entries");
                    mosa_kernels::entries::set_at(t, indices.clone(), entries.clone())
                }
                // the tensor in place is dropped: the base it was built from stays in `base`
                Some(DeviceChange::Dense(_)) => base[name].clone(),
                None => t,
            };
            match put.get(name) {
                Some(DeviceChange::Sparse { indices, values }) => {
                    let (t, entries) = mosa_kernels::entries::add_at(t, indices.clone(), values.clone());
                    saved.insert(name.to_string(), entries);
                    t
                }
                Some(DeviceChange::Dense(d)) => d.build(&base[name]),
                None => t,
            }
        };
        let model = self.model.take().expect("model").map_params(&names, &mut step);
        self.model = Some(model);
        self.in_place = want.map(|weights| InPlace { weights, saved });
        // the new tensors are computed (a lazy backend would only now run them)
        B::sync(&self.device).ok();
        self.metrics.switches.inc();
        self.metrics.switch_seconds.observe(t0.elapsed().as_secs_f64());
    }

    /// Runs one task's batch and answers every request of it.
    fn run(&mut self, task: &str, jobs: Vec<Job>, max_batch: usize) {
        // requests whose client has gone (timed out, disconnected) are not computed
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.reply.is_closed()).collect();
        if jobs.is_empty() {
            return;
        }
        let Some(t) = self.tasks.get(task) else {
            for j in jobs {
                let _ = j.reply.send(Err(format!("task `{task}` was unloaded")));
            }
            return;
        };
        let (head, weights) = (t.head.clone(), t.weights.clone());
        self.put_in_place(weights);
        let side = jobs[0].side;
        let n: usize = jobs.iter().map(|j| j.n).sum();
        self.metrics.batch.observe(n as f64);
        let mut input = Vec::with_capacity(n * 3 * side * side);
        for j in &jobs {
            input.extend_from_slice(&j.input);
        }
        let model = self.model.as_ref().expect("model");
        let mut logits: Vec<f32> = Vec::new();
        let per = 3 * side * side;
        // at most `max_batch` images per pass (only a single larger request is split)
        let mut rest = input;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(max_batch * per));
            let chunk = std::mem::replace(&mut rest, tail);
            let m = chunk.len() / per;
            let x = Tensor::<B, 4>::from_data(TensorData::new(chunk, [m, 3, side, side]), &self.device);
            let out = head.forward(model.forward(x).pre_logits);
            logits.extend(out.into_data().into_vec::<f32>().expect("f32 logits"));
        }
        let classes = logits.len() / n;
        let mut at = 0;
        for j in jobs {
            let part = logits[at * classes..(at + j.n) * classes].to_vec();
            at += j.n;
            let _ = j.reply.send(Ok(part));
        }
    }

    /// Serves until the queue is closed and empty.
    pub fn serve(mut self, shared: Arc<Shared>, batching: Batching) {
        loop {
            match next(&shared, &batching) {
                Work::Stop => return,
                Work::Admin(Admin::Load(specs, reply)) => {
                    self.install(specs);
                    let _ = reply.send(Ok(()));
                }
                Work::Admin(Admin::Unload(task, reply)) => {
                    // requests already queued for it are answered first
                    loop {
                        let batch = shared.queue.lock().expect("queue lock").take_batch(&task, batching.max_batch);
                        if batch.is_empty() {
                            break;
                        }
                        self.run(&task, batch, batching.max_batch);
                    }
                    let found = self.uninstall(&task);
                    let _ = reply.send(if found { Ok(()) } else { Err(format!("task `{task}` is not loaded")) });
                }
                Work::Batch(task, jobs) => self.run(&task, jobs, batching.max_batch),
            }
        }
    }
}
