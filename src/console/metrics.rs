//! `/metrics`: the fleet and the hub for Prometheus, in the OpenMetrics
//! text format (which Prometheus asks for first), encoded by
//! prometheus-client, the Prometheus project's own Rust client.
//!
//! Nothing is counted twice: on each scrape a collector reads the fleet
//! ([`crate::fleet`]), the hub's own figures ([`HubStatus`]) and the
//! process's CPU time and memory, and writes them out. Names follow
//! Prometheus' conventions: a `camnode_` prefix, base units in the name,
//! `_total` on counters, and labels only for `node`, `view` and `worker`.
//! Figures a node reports in its heartbeats are there once it has sent one
//! with health (camnode nodes do; imagenode's do not). docs/console.md
//! lists every metric.

use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::App;
use crate::fleet::{Fleet, NodeSummary};
use crate::health::Health;
use crate::hub::HubStatus;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn serve(State(app): State<Arc<App>>) -> Response {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Figures { fleet: app.fleet.clone(), hub: app.hub.clone() }));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the metrics").into_response(),
    }
}

/// What a scrape reads.
struct Figures {
    fleet: Arc<Fleet>,
    hub: Arc<HubStatus>,
}

impl fmt::Debug for Figures {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Figures")
    }
}

/// One sample's value: counters count, gauges measure.
#[derive(Clone, Copy)]
enum Value {
    Count(u64),
    Seconds(f64),
    Gauge(f64),
}

/// Writes one metric family; families without samples are left out.
fn family<L: EncodeLabelSet>(encoder: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, samples: Vec<(L, Value)>) -> fmt::Result {
    let Some((_, first)) = samples.first() else { return Ok(()) };
    let kind = match first {
        Value::Count(_) | Value::Seconds(_) if name.ends_with("_total") => MetricType::Counter,
        _ => MetricType::Gauge,
    };
    // prometheus-client adds `_total` to counters itself.
    let name = name.trim_end_matches("_total");
    let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), kind)?;
    for (labels, value) in &samples {
        let sample = metric.encode_family(labels)?;
        match (kind, *value) {
            (MetricType::Counter, Value::Count(n)) => ConstCounter::new(n).encode(sample)?,
            (MetricType::Counter, Value::Seconds(s) | Value::Gauge(s)) => ConstCounter::new(s).encode(sample)?,
            (_, Value::Count(n)) => ConstGauge::new(n as f64).encode(sample)?,
            (_, Value::Seconds(s) | Value::Gauge(s)) => ConstGauge::new(s).encode(sample)?,
        }
    }
    Ok(())
}

type NoLabels = [(&'static str, &'static str); 0];

fn one(value: Value) -> Vec<(NoLabels, Value)> {
    vec![([], value)]
}

/// A per-node family from what each node's heartbeat said, for nodes that said it.
fn per_node(nodes: &[NodeSummary], value: impl Fn(&Health) -> Option<Value>) -> Vec<([(&'static str, &str); 1], Value)> {
    nodes.iter().filter_map(|n| Some(([("node", n.name.as_str())], value(n.health.as_ref()?)?))).collect()
}

impl Collector for Figures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        let hub = self.hub.snapshot();
        let (cpu_seconds, _) = crate::stats::resource_usage();
        family(e, "process_cpu_seconds_total", "CPU time of the hub process (user and system).", None, one(Value::Seconds(cpu_seconds)))?;
        if let Some(rss) = resident_bytes() {
            family(e, "process_resident_memory", "Resident memory of the hub process.", Some(Unit::Bytes), one(Value::Count(rss)))?;
        }
        family(e, "camnode_hub_uptime", "Time since the hub started.", Some(Unit::Seconds), one(Value::Seconds(hub.uptime_seconds)))?;
        for (name, help, value) in [
            ("camnode_hub_messages_total", "Messages accepted (not repeats, not malformed).", hub.messages_total),
            ("camnode_hub_images_total", "Images accepted, JPEG or raw.", hub.images_total),
            ("camnode_hub_events_total", "Motion and trigger events accepted.", hub.events_total),
            ("camnode_hub_duplicates_total", "Repeats of accepted messages, acknowledged again.", hub.duplicates_total),
            ("camnode_hub_bad_total", "Malformed messages, dropped.", hub.bad_total),
            ("camnode_hub_refused_total", "Valid messages the hub could not keep, not acknowledged.", hub.refused_total),
            ("camnode_hub_fsync_batches_total", "Group commits of the store.", hub.fsync_batches_total),
            ("camnode_hub_fsynced_messages_total", "Messages made durable by those commits.", hub.fsynced_messages_total),
            ("camnode_hub_abandoned_total", "Images given up after every worker failed them.", hub.abandoned_total),
            ("camnode_hub_published_total", "Messages published on the hub's PUB socket.", hub.published_total),
            ("camnode_hub_publish_dropped_total", "Messages the PUB socket refused.", hub.publish_dropped_total),
            ("camnode_hub_pushed_total", "Images handed to the PUSH socket.", hub.pushed_total),
            ("camnode_hub_nats_acked_total", "Images JetStream acknowledged.", hub.nats_acked_total),
            ("camnode_hub_nats_failed_total", "Publishes to JetStream that failed.", hub.nats_failed_total),
            ("camnode_hub_nats_consumed_total", "Messages taken from JetStream.", hub.nats_consumed_total),
            ("camnode_hub_nats_done_total", "Messages acknowledged to JetStream after a worker's reply.", hub.nats_done_total),
        ] {
            family(e, name, help, None, one(Value::Count(value)))?;
        }
        family(e, "camnode_hub_received_bytes_total", "Payload bytes of accepted messages.", None, one(Value::Count(hub.bytes_total)))?;
        family(e, "camnode_hub_ingest_queue_depth", "Messages read from nodes, waiting to be stored and handed on.", None, one(Value::Gauge(hub.ingest_queue_depth as f64)))?;
        family(e, "camnode_hub_dispatch_queue_depth", "Images waiting for a free worker.", None, one(Value::Gauge(hub.dispatch_queue_depth as f64)))?;
        family(e, "camnode_hub_dispatch_queue_bytes", "Payload bytes of the images waiting for a worker.", None, one(Value::Gauge(hub.dispatch_queue_bytes as f64)))?;
        let workers = |value: &dyn Fn(&crate::hub::WorkerSnapshot) -> Value| -> Vec<_> {
            hub.workers.iter().map(|w| ([("worker", w.address.as_str())], value(w))).collect()
        };
        family(e, "camnode_hub_worker_up", "1 while the worker is connected and not resting after a failure.", None, workers(&|w| Value::Gauge(w.up as u8 as f64)))?;
        family(e, "camnode_hub_worker_busy", "1 while an image is with the worker.", None, workers(&|w| Value::Gauge(w.busy as u8 as f64)))?;
        family(e, "camnode_hub_worker_handled_total", "Images the worker answered.", None, workers(&|w| Value::Count(w.handled_total)))?;
        family(e, "camnode_hub_worker_failures_total", "Images the worker timed out on or lost.", None, workers(&|w| Value::Count(w.failures_total)))?;
        family(e, "camnode_hub_worker_retries_total", "Times the worker was taken back after resting.", None, workers(&|w| Value::Count(w.retries_total)))?;

        let snapshot = self.fleet.snapshot(u64::MAX, 0);
        let nodes = &snapshot.nodes;
        let by_node = |value: &dyn Fn(&NodeSummary) -> Value| -> Vec<_> { nodes.iter().map(|n| ([("node", n.name.as_str())], value(n))).collect() };
        family(e, "camnode_node_up", "1 while the node is heard from (not stale).", None, by_node(&|n| Value::Gauge(!n.stale as u8 as f64)))?;
        family(e, "camnode_node_last_seen_timestamp", "When the node's last message came, Unix time.", Some(Unit::Seconds), by_node(&|n| Value::Gauge(n.last_seen)))?;
        family(e, "camnode_node_messages_total", "Messages accepted from the node.", None, by_node(&|n| Value::Count(n.messages)))?;
        family(e, "camnode_node_restarts_total", "Restarts the node announced.", None, by_node(&|n| Value::Count(n.restarts)))?;
        family(e, "camnode_node_uptime", "Time since the node started, at its last heartbeat.", Some(Unit::Seconds), per_node(nodes, |h| h.uptime_s.map(Value::Seconds)))?;
        family(e, "camnode_node_frames_total", "Frames the node captured since it started.", None, per_node(nodes, |h| h.frames.map(Value::Count)))?;
        family(e, "camnode_node_dropped_frames_total", "Frames the node could not send since it started.", None, per_node(nodes, |h| h.dropped.map(Value::Count)))?;
        family(e, "camnode_node_capture_fps", "Frames the node captured per second between its last two heartbeats.", None, per_node(nodes, |h| h.fps.map(Value::Gauge)))?;
        family(e, "camnode_node_spool_messages", "Event messages waiting in the node's spool.", None, per_node(nodes, |h| h.spool_depth.map(|d| Value::Gauge(d as f64))))?;
        family(e, "camnode_node_spool", "Bytes in the node's spool.", Some(Unit::Bytes), per_node(nodes, |h| h.spool_bytes.map(|b| Value::Gauge(b as f64))))?;
        family(e, "camnode_node_cpu", "The node machine's CPU use, all cores.", Some(Unit::Ratios), per_node(nodes, |h| h.cpu_percent.map(|c| Value::Gauge(c / 100.0))))?;
        family(e, "camnode_node_temperature", "The node's SoC temperature.", Some(Unit::Celsius), per_node(nodes, |h| h.temp_c.map(Value::Gauge)))?;
        family(e, "camnode_node_disk_free", "Free space on the node's spool file system.", Some(Unit::Bytes), per_node(nodes, |h| h.disk_free_bytes.map(|b| Value::Gauge(b as f64))))?;
        let info: Vec<_> = nodes
            .iter()
            .filter_map(|n| {
                let health = n.health.as_ref()?;
                let labels = [("node", n.name.as_str()), ("version", health.version.as_deref().unwrap_or("")), ("address", health.address.as_deref().unwrap_or(""))];
                Some((labels, Value::Gauge(1.0)))
            })
            .collect();
        family(e, "camnode_node_info", "The node's version and address, as labels.", None, info)?;

        let views = |value: &dyn Fn(&crate::fleet::ViewSummary) -> Option<Value>| -> Vec<_> {
            nodes
                .iter()
                .flat_map(|n| n.views.iter().filter_map(move |v| Some(([("node", n.name.as_str()), ("view", v.view.as_str())], value(v)?))))
                .collect()
        };
        family(e, "camnode_images_total", "Images accepted from the view.", None, views(&|v| Some(Value::Count(v.images))))?;
        family(e, "camnode_image_bytes_total", "Payload bytes of the view's images.", None, views(&|v| Some(Value::Count(v.bytes))))?;
        family(e, "camnode_motion_events_total", "Motion events the view started.", None, views(&|v| Some(Value::Count(v.events))))?;
        family(e, "camnode_trigger_events_total", "Trigger events of the view.", None, views(&|v| Some(Value::Count(v.triggers))))?;
        family(e, "camnode_moving", "1 while a motion event of the view is in progress.", None, views(&|v| Some(Value::Gauge(v.moving as u8 as f64))))?;
        family(e, "camnode_motion_score", "The motion score of the view's latest scored image or event.", None, views(&|v| v.score.map(|s| Value::Gauge(s as f64))))?;
        family(e, "camnode_last_image_timestamp", "When the view's latest image came, Unix time.", Some(Unit::Seconds), views(&|v| v.last_image.map(Value::Gauge)))?;
        Ok(())
    }
}

/// This process's resident memory now (VmRSS).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()? * 1024)
}
