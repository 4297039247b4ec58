//! The worker's Prometheus metrics.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use shuffle_proto::objstore::layers::{StoreObserver, StoreOp};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    pub op: &'static str,
    pub kind: &'static str,
}

/// Object-store calls: latency by operation, failed tries by operation and error kind.
#[derive(Clone, Debug)]
pub struct StoreMetrics {
    pub latency: Family<StoreLabels, Histogram, fn() -> Histogram>,
    pub errors: Family<StoreErrorLabels, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        // 1 ms .. ~65 s
        let histogram: fn() -> Histogram = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        Self { latency: Family::new_with_constructor(histogram), errors: Family::default() }
    }
}

impl StoreObserver for StoreMetrics {
    fn observe(&self, op: StoreOp, elapsed: Duration, error: Option<&'static str>) {
        let op = op.as_str();
        self.latency.get_or_create(&StoreLabels { op }).observe(elapsed.as_secs_f64());
        if let Some(kind) = error {
            self.errors.get_or_create(&StoreErrorLabels { op, kind }).inc();
        }
    }
}

/// Every metric a worker exports. Counters are cheap to bump from the data path.
pub struct Metrics {
    pub registry: Registry,
    pub bytes_pushed: Counter,
    /// Batches accepted from map tasks (replica copies included), and of them the ones sealed
    /// by their application (encrypted at rest).
    pub batches_pushed: Counter,
    pub sealed_batches: Counter,
    pub bytes_read: Counter,
    pub bytes_spilled: Counter,
    pub bytes_buffered: Gauge,
    pub disk_free: Gauge,
    pub partitions: Gauge,
    pub value_log_files: Gauge,
    pub push_latency: Histogram,
    pub forward_latency: Histogram,
    pub backpressure: Counter,
    pub segments: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub store: StoreMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("shoal_worker");
        let m = Metrics {
            bytes_pushed: Counter::default(),
            batches_pushed: Counter::default(),
            sealed_batches: Counter::default(),
            bytes_read: Counter::default(),
            bytes_spilled: Counter::default(),
            bytes_buffered: Gauge::default(),
            disk_free: Gauge::default(),
            partitions: Gauge::default(),
            value_log_files: Gauge::default(),
            // 50 µs .. ~1.6 s
            push_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            forward_latency: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            backpressure: Counter::default(),
            segments: Counter::default(),
            errors: Family::default(),
            store: StoreMetrics::default(),
            registry: Registry::default(),
        };
        registry.register("pushed_bytes", "Batch bytes accepted from map tasks", m.bytes_pushed.clone());
        registry.register("pushed_batches", "Batches accepted", m.batches_pushed.clone());
        registry.register(
            "sealed_batches",
            "Batches accepted encrypted by their application (Spark IO encryption)",
            m.sealed_batches.clone(),
        );
        registry.register("read_bytes", "Bytes streamed to readers", m.bytes_read.clone());
        registry.register("spilled_bytes", "Record bytes written to the object store", m.bytes_spilled.clone());
        registry.register("buffered_bytes", "Bytes held in the local buffer", m.bytes_buffered.clone());
        registry.register(
            "disk_free_bytes",
            "Free bytes on the data disk (pushes get DiskFull below disk_reserve)",
            m.disk_free.clone(),
        );
        registry.register("partitions", "Partitions with local data", m.partitions.clone());
        registry.register(
            "value_log_files",
            "Value log files on the data disk (one is removed once nothing in it is buffered)",
            m.value_log_files.clone(),
        );
        registry.register("push_latency_seconds", "From receiving a push to its ack", m.push_latency.clone());
        registry.register(
            "forward_latency_seconds",
            "Replication 2: from forwarding a batch to the replica's ack",
            m.forward_latency.clone(),
        );
        registry.register("backpressure_events", "Pushes refused with Busy", m.backpressure.clone());
        registry.register("segments_written", "Segments uploaded", m.segments.clone());
        registry.register("errors", "Requests that ended in an error, by kind", m.errors.clone());
        registry.register("store_call_seconds", "Object-store calls (each try), by operation", m.store.latency.clone());
        registry.register(
            "store_errors",
            "Object-store tries that failed, by operation and kind",
            m.store.errors.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn error(&self, kind: impl std::fmt::Display) {
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_string() }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
