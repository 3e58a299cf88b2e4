//! The hub's live figures, for `/metrics`, the console and the summary: one
//! [`HubStatus`] per hub, shared as an `Arc`, written by the hub's threads with
//! relaxed atomic adds and read by anyone at any time without a lock.
//!
//! # API for readers
//!
//! Get it with [`Hub::status`](super::Hub::status) (an `Arc<HubStatus>`, valid
//! for the hub's whole life and after) and call [`HubStatus::snapshot`] when
//! you want the numbers: it copies every counter and gauge into a plain
//! [`HubSnapshot`] (`Serialize`, no atomics), a few dozen loads and one short
//! `String` per worker, cheap enough for every scrape. Counters only grow
//! (Prometheus `_total`); gauges (`*_depth`, `*_bytes` of queues, a worker's
//! `up` and `busy`) are what they are at that moment. Figures are read one by
//! one, so a snapshot taken while messages flow may be off by a message
//! between two counters; each figure on its own is exact.
//!
//! Names follow the message's path through the hub (see [`super`]):
//! received from nodes -> ingest queue -> stored (fsync batches) -> observers,
//! publish, push -> the dispatch queue -> workers; and JetStream on both ends.
//! Worker figures are listed in the order of `--workers`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// Counters and gauges of one hub; see the module doc for how to read them.
#[derive(Debug)]
pub struct HubStatus {
    started: Instant,
    /// Accepted messages of every kind (not repeats, not malformed).
    pub(crate) messages: AtomicU64,
    /// Of those, images (JPEG or raw arrays).
    pub(crate) images: AtomicU64,
    /// Of those, motion and trigger events.
    pub(crate) events: AtomicU64,
    /// Of those, heartbeats.
    pub(crate) heartbeats: AtomicU64,
    /// Payload bytes of accepted messages.
    pub(crate) bytes: AtomicU64,
    /// Repeats of accepted messages (a node resending after a lost reply), acknowledged again.
    pub(crate) duplicates: AtomicU64,
    /// Malformed messages, acknowledged (resending cannot help) and dropped.
    pub(crate) bad: AtomicU64,
    /// Valid messages the hub could not keep (store or JetStream failed), not acknowledged.
    pub(crate) refused: AtomicU64,
    /// Gauge: messages read from nodes and waiting to be stored and handed on.
    pub(crate) ingest_depth: AtomicU64,
    /// The store's group commits: one fsync round per batch, and the messages in them.
    pub(crate) fsync_batches: AtomicU64,
    pub(crate) fsynced: AtomicU64,
    /// Gauge: images waiting in memory for a free worker, and their payload bytes.
    pub(crate) dispatch_depth: AtomicU64,
    pub(crate) dispatch_bytes: AtomicU64,
    /// Images given up after `worker_attempts` failed hand-overs.
    pub(crate) abandoned: AtomicU64,
    /// Messages handed to the PUB socket, and those it refused.
    pub(crate) published: AtomicU64,
    pub(crate) publish_dropped: AtomicU64,
    /// Images handed to the PUSH socket.
    pub(crate) pushed: AtomicU64,
    /// `--nats`: images JetStream acknowledged (then the node got `OK`), and publishes that failed.
    pub(crate) nats_acked: AtomicU64,
    pub(crate) nats_failed: AtomicU64,
    /// `--from-nats`: messages taken from the stream, and acknowledged to it after a worker's reply.
    pub(crate) nats_consumed: AtomicU64,
    pub(crate) nats_done: AtomicU64,
    pub(crate) workers: Vec<WorkerStatus>,
}

/// One worker of `--workers`.
#[derive(Debug)]
pub struct WorkerStatus {
    address: String,
    /// Connected (its ZeroMQ handshake done) and not resting after a failure.
    pub(crate) up: AtomicBool,
    /// An image is with it, waiting for its reply.
    pub(crate) busy: AtomicBool,
    /// Images it answered.
    pub(crate) handled: AtomicU64,
    /// Images it timed out on or lost its connection with (each went to another worker).
    pub(crate) failures: AtomicU64,
    /// Times it was taken back into the pool after resting (backoff) from a failure.
    pub(crate) retries: AtomicU64,
}

/// A copy of [`HubStatus`] at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct HubSnapshot {
    pub uptime_seconds: f64,
    pub messages_total: u64,
    pub images_total: u64,
    pub events_total: u64,
    pub heartbeats_total: u64,
    pub bytes_total: u64,
    pub duplicates_total: u64,
    pub bad_total: u64,
    pub refused_total: u64,
    pub ingest_queue_depth: u64,
    pub fsync_batches_total: u64,
    pub fsynced_messages_total: u64,
    pub dispatch_queue_depth: u64,
    pub dispatch_queue_bytes: u64,
    pub abandoned_total: u64,
    pub published_total: u64,
    pub publish_dropped_total: u64,
    pub pushed_total: u64,
    pub nats_acked_total: u64,
    pub nats_failed_total: u64,
    pub nats_consumed_total: u64,
    pub nats_done_total: u64,
    pub workers: Vec<WorkerSnapshot>,
}

/// A copy of one [`WorkerStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct WorkerSnapshot {
    pub address: String,
    pub up: bool,
    pub busy: bool,
    pub handled_total: u64,
    pub failures_total: u64,
    pub retries_total: u64,
}

impl HubStatus {
    /// All zero, with one entry per worker address.
    pub fn new(workers: &[String]) -> HubStatus {
        HubStatus {
            started: Instant::now(),
            messages: AtomicU64::new(0),
            images: AtomicU64::new(0),
            events: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            bad: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            ingest_depth: AtomicU64::new(0),
            fsync_batches: AtomicU64::new(0),
            fsynced: AtomicU64::new(0),
            dispatch_depth: AtomicU64::new(0),
            dispatch_bytes: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            published: AtomicU64::new(0),
            publish_dropped: AtomicU64::new(0),
            pushed: AtomicU64::new(0),
            nats_acked: AtomicU64::new(0),
            nats_failed: AtomicU64::new(0),
            nats_consumed: AtomicU64::new(0),
            nats_done: AtomicU64::new(0),
            workers: workers.iter().map(|a| WorkerStatus::new(a)).collect(),
        }
    }

    /// Every figure, copied now.
    pub fn snapshot(&self) -> HubSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HubSnapshot {
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            messages_total: get(&self.messages),
            images_total: get(&self.images),
            events_total: get(&self.events),
            heartbeats_total: get(&self.heartbeats),
            bytes_total: get(&self.bytes),
            duplicates_total: get(&self.duplicates),
            bad_total: get(&self.bad),
            refused_total: get(&self.refused),
            ingest_queue_depth: get(&self.ingest_depth),
            fsync_batches_total: get(&self.fsync_batches),
            fsynced_messages_total: get(&self.fsynced),
            dispatch_queue_depth: get(&self.dispatch_depth),
            dispatch_queue_bytes: get(&self.dispatch_bytes),
            abandoned_total: get(&self.abandoned),
            published_total: get(&self.published),
            publish_dropped_total: get(&self.publish_dropped),
            pushed_total: get(&self.pushed),
            nats_acked_total: get(&self.nats_acked),
            nats_failed_total: get(&self.nats_failed),
            nats_consumed_total: get(&self.nats_consumed),
            nats_done_total: get(&self.nats_done),
            workers: self.workers.iter().map(WorkerStatus::snapshot).collect(),
        }
    }
}

impl WorkerStatus {
    fn new(address: &str) -> WorkerStatus {
        WorkerStatus {
            address: address.to_string(),
            up: AtomicBool::new(false),
            busy: AtomicBool::new(false),
            handled: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }

    fn snapshot(&self) -> WorkerSnapshot {
        WorkerSnapshot {
            address: self.address.clone(),
            up: self.up.load(Ordering::Relaxed),
            busy: self.busy.load(Ordering::Relaxed),
            handled_total: self.handled.load(Ordering::Relaxed),
            failures_total: self.failures.load(Ordering::Relaxed),
            retries_total: self.retries.load(Ordering::Relaxed),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_copies_counters_and_workers_in_order() {
        let status = HubStatus::new(&["tcp://a:1".into(), "tcp://b:2".into()]);
        bump(&status.messages);
        status.bytes.fetch_add(500, Ordering::Relaxed);
        status.workers[1].up.store(true, Ordering::Relaxed);
        bump(&status.workers[1].handled);
        let snap = status.snapshot();
        assert_eq!((snap.messages_total, snap.bytes_total), (1, 500));
        let workers: Vec<_> = snap.workers.iter().map(|w| (w.address.as_str(), w.up, w.handled_total)).collect();
        assert_eq!(workers, [("tcp://a:1", false, 0), ("tcp://b:2", true, 1)]);
    }
}
