//! Prometheus metrics (`GET /metrics`, the text exposition format) through `prometheus-client`:
//! requests by task and status, latency per task, batch sizes, expert switches, queue depth,
//! tasks loaded and resident memory.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub task: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<TaskLabel, Histogram, fn() -> Histogram>,
    pub batch: Histogram,
    pub switches: Counter,
    pub switch_seconds: Histogram,
    pub queue: Gauge,
    pub experts: Gauge,
    pub resident: Gauge,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mosa");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Inference requests answered, by task and HTTP status", requests.clone());
        let latency = Family::<TaskLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register("request_duration_seconds", "Time from a request's arrival to its answer, by task", latency.clone());
        let batch = Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]);
        registry.register("batch_size", "Images per forward pass", batch.clone());
        let switches = Counter::default();
        registry.register("expert_switches", "Times the weights in place changed to another task's", switches.clone());
        let switch_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 14));
        registry.register("expert_switch_duration_seconds", "Time to put another task's weights in place", switch_seconds.clone());
        let queue = Gauge::default();
        registry.register("queue_depth", "Images waiting", queue.clone());
        let experts = Gauge::default();
        registry.register("tasks_loaded", "Tasks served", experts.clone());
        let resident = Gauge::default();
        registry.register("resident_memory_bytes", "Resident set size of the process", resident.clone());
        Self { registry, requests, latency, batch, switches, switch_seconds, queue, experts, resident }
    }

    /// The exposition text, with the resident memory read now.
    pub fn encode(&self, queue_depth: usize) -> String {
        self.queue.set(queue_depth as i64);
        if let Some(rss) = resident_bytes() {
            self.resident.set(rss as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The process's resident set size (Linux: `/proc/self/statm`; elsewhere unknown).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
