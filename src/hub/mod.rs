//! `camnode hub`: the broker between a fleet of nodes and the programs that
//! use their images. It speaks imagezmq's wire format on every side, stores
//! what it gets the way imagehub does, and answers a node `OK` only once a
//! message is safe.
//!
//! # One message's path
//!
//! A node's REQ socket sends two frames, a JSON header and a JPEG. The
//! hub's ingest thread runs the [`frontend`]: it reads them from its ROUTER
//! socket (many nodes at once, each remembered by its routing id), with
//! every other message that waits, and checks each ([`inspect`]: a malformed
//! message is answered and dropped here, with one warning). The valid ones
//! are one batch for the [`store`] stage, on the same thread: it drops
//! repeats, writes the images and the event log (`--save`) and fsyncs the
//! batch in one group commit. Each message then goes to the observers
//! ([`observe`]: console, metrics, MQTT), to PUB subscribers ([`fanout`],
//! `--publish`), and, if it is an image, to one PULL peer (`--push`), to the
//! [`dispatch`] queue for the [`workers`] (`--workers`), or to JetStream
//! (`--nats`). When the last of these has it, the node's `OK` goes out; that
//! is when the node forgets it. The dispatcher hands the image to the free
//! worker that waited longest and takes it back if the worker dies or
//! hangs. A dispatcher on another machine (`--from-nats`) takes images out
//! of JetStream into its own dispatch queue and acknowledges each to
//! JetStream once a worker replied.
//!
//! ```text
//!  nodes (REQ) ──► frontend ──batch──► store ──► observers, PUB (--publish)
//!      ▲          (ROUTER,            (dedupe,         │ images
//!      └── OK ────  check)  ◄──────── fsync batch)     ├──► PUSH (--push) ──► PULL peers
//!                    ▲     (one thread)                ├──► dispatch queue ──► workers (REP)
//!                    └──── JetStream ack ◄─────────────┴──► JetStream (--nats)
//!  JetStream ──► (--from-nats) dispatch queue ──► workers ──► ack to JetStream
//! ```
//!
//! # When OK is sent, and what it promises
//!
//! `OK` goes out once the message is stored and fsynced (`--save`), and
//! handed to every downstream that needs each image: the dispatch queue,
//! the PUSH socket, JetStream's acknowledgement. Without `--save`, an image
//! acknowledged into the dispatch queue lives only in the hub's memory
//! until a worker answers: a crashed hub loses it. When a downstream is
//! full, the stage waits, and so the frontend stops reading: nodes wait
//! for their replies (and spool events) instead of the hub dropping
//! anything it acknowledged. Delivery from nodes is
//! at-least-once; the store drops repeats by node, boot and sequence number.
//!
//! The rest: [`config`] is the `[hub]` section, [`status`] the live figures
//! (`HubStatus`), [`wake`] the eventfd that lets plain threads wake a
//! thread waiting on ZeroMQ sockets (JetStream's replies, the dispatcher).

pub mod config;
pub mod dispatch;
pub mod fanout;
mod frontend;
pub mod inspect;
#[cfg(feature = "nats")]
mod nats;
pub mod observe;
pub mod status;
pub mod store;
mod wake;
pub mod workers;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{info, warn};
use serde::Serialize;

pub use config::HubConfig;
pub use observe::{Accepted, Kind, Observer};
pub use status::{HubSnapshot, HubStatus, WorkerSnapshot};
pub use store::Received;

use crate::transport::security::{Curve, Role, SecurityConfig};
use dispatch::DispatchQueue;
use fanout::{Publisher, Pusher};
use frontend::Frontend;
use store::{Outlets, Stage, Store};
use workers::{Pool, PoolConfig};

/// A hub run: the `[hub]` section, `[security]`, and when to stop.
#[derive(Clone, Debug, Default)]
pub struct HubOptions {
    pub config: HubConfig,
    pub security: SecurityConfig,
    /// Stop after this many accepted messages.
    pub count: Option<u64>,
    /// Stop after this long without a message (then hand every image on first).
    pub idle: Option<Duration>,
    /// Report each accepted message as a [`Received`] to [`Hub::receive`]
    /// and [`Hub::run`]'s callback (`--jsonl`); off, the hub saves the work.
    pub records: bool,
}

/// What a hub run received and handed on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HubSummary {
    pub messages: u64,
    pub images: u64,
    pub events: u64,
    pub heartbeats: u64,
    pub duplicates: u64,
    /// Messages that were not imagezmq messages or whose image did not decode.
    pub bad: u64,
    /// Valid messages that could not be kept (not acknowledged: their nodes send them again).
    pub refused: u64,
    pub bytes: u64,
    pub per_node: HashMap<String, u64>,
    /// Images workers answered, and images given up after `worker_attempts`.
    pub processed: u64,
    pub abandoned: u64,
    /// Acknowledged images never answered by a worker (a stop by signal with images still queued).
    pub unprocessed: u64,
    pub published: u64,
    pub pushed: u64,
    pub nats_acked: u64,
    pub fsync_batches: u64,
    pub wall_s: f64,
}

/// A running hub: its threads, started by [`Hub::open`], and what they report.
pub struct Hub {
    status: Arc<HubStatus>,
    observers: Arc<RwLock<Vec<Arc<dyn Observer>>>>,
    received: Receiver<Received>,
    per_node: Arc<Mutex<HashMap<String, u64>>>,
    count: Option<u64>,
    idle: Option<Duration>,
    /// The frontend stops reading; the stages finish what they have.
    finish: Arc<AtomicBool>,
    /// Everything stops at once (a signal).
    stop: Arc<AtomicBool>,
    frontend: Option<JoinHandle<()>>,
    pool: Option<Pool>,
    #[cfg(feature = "nats")]
    nats: Vec<nats::Nats>,
    started: Instant,
    /// Keeps the CURVE authenticator running and the sockets' context alive.
    _curve: Option<Curve>,
    _context: zmq::Context,
    pub summary: HubSummary,
}

impl Hub {
    /// A hub with this `[hub]` section and no CURVE, reporting what it
    /// accepts to [`Hub::receive`], running until dropped.
    pub fn open(config: HubConfig) -> Result<Hub> {
        Hub::start(HubOptions { config, records: true, ..HubOptions::default() })
    }

    /// Opens every socket (so a bad address or a port in use fails here) and starts the threads.
    pub fn start(options: HubOptions) -> Result<Hub> {
        let HubOptions { config, security, count, idle, records } = options;
        raise_open_files_limit();
        let context = zmq::Context::new();
        let status = Arc::new(HubStatus::new(&config.workers));
        let stop = Arc::new(AtomicBool::new(false));
        let finish = Arc::new(AtomicBool::new(false));
        // The CURVE server for what the hub binds, a client for what it connects to.
        let server = if config.binds() { Curve::open(&security, Role::Server, &context)? } else { None };
        let client = match config.mode() {
            crate::transport::Mode::Pub => Curve::open(&security, Role::Client, &context)?,
            crate::transport::Mode::Req => None,
        };
        let max_message = (config.max_message_mb as usize) << 20;
        let frontend_curve = server.as_ref().or(client.as_ref());
        let (frontend, replies) =
            Frontend::open(&context, config.mode(), &config.bind, &config.connect, max_message, frontend_curve, status.clone(), finish.clone(), count)?;
        let observers: Arc<RwLock<Vec<Arc<dyn Observer>>>> = Arc::default();
        let mut outlets = Outlets { observers: observers.clone(), ..Outlets::default() };
        if let Some(address) = &config.publish {
            outlets.publisher = Some(Publisher::bind(&context, address, config.publish_hwm, server.as_ref())?);
        }
        if let Some(address) = &config.push {
            outlets.pusher = Some(Pusher::bind(&context, address, server.as_ref())?);
        }
        let queue = Arc::new(DispatchQueue::new((config.queue_mb as usize) << 20, status.clone())?);
        let pool = if config.workers.is_empty() {
            None
        } else {
            let curve = worker_curve(&config, &security, &context)?;
            let pool_config = PoolConfig {
                addresses: config.workers.clone(),
                timeout: Duration::from_secs_f64(config.worker_timeout),
                attempts: config.worker_attempts,
            };
            Some(Pool::start(pool_config, &context, curve, queue.clone(), status.clone(), stop.clone())?)
        };
        #[cfg(feature = "nats")]
        let mut nats = Vec::new();
        #[cfg(feature = "nats")]
        {
            if !config.nats.is_empty() {
                let (forward, task) = nats::Producer::start(&config, replies.clone(), status.clone())?;
                outlets.forward = Some(Box::new(forward));
                nats.push(task);
            }
            if !config.from_nats.is_empty() {
                nats.push(nats::Consumer::start(&config, queue.clone(), status.clone(), stop.clone())?);
            }
        }
        // Images reach the workers from the store, unless JetStream is between them.
        if pool.is_some() && config.nats.is_empty() && config.from_nats.is_empty() {
            outlets.dispatch = Some(queue.clone());
        }
        let store = Store::open(config.save.as_deref())?;
        let per_node = store.per_node.clone();
        let (received_tx, received) = mpsc::channel();
        let received_tx = records.then_some(received_tx);
        let stage = Stage { store, outlets, received: received_tx, status: status.clone(), stop: stop.clone() };
        // Only JetStream's producer keeps a sender: without it, the frontend
        // knows once the stage closes that nothing else will answer.
        drop(replies);
        let frontend = std::thread::Builder::new().name("ingest".into()).spawn(move || frontend.run(stage))?;
        info!(
            "hub: {} {}, {} worker(s){}{}{}",
            if config.mode() == crate::transport::Mode::Req { "REQ nodes on" } else { "subscribed to" },
            if config.mode() == crate::transport::Mode::Req { config.bind.clone() } else { config.connect.join(", ") },
            config.workers.len(),
            config.save.as_ref().map(|d| format!(", saving to {}", d.display())).unwrap_or_default(),
            config.publish.as_ref().map(|a| format!(", publishing on {a}")).unwrap_or_default(),
            config.push.as_ref().map(|a| format!(", pushing on {a}")).unwrap_or_default(),
        );
        Ok(Hub {
            status,
            observers,
            received,
            per_node,
            count,
            idle,
            finish,
            stop,
            frontend: Some(frontend),
            pool,
            #[cfg(feature = "nats")]
            nats,
            started: Instant::now(),
            _curve: server,
            _context: context,
            summary: HubSummary::default(),
        })
    }

    /// The hub's live figures, shared: see [`status`] for how to read them.
    pub fn status(&self) -> Arc<HubStatus> {
        self.status.clone()
    }

    /// Shows every message accepted from now on to `observer`.
    pub fn observe(&mut self, observer: Arc<dyn Observer>) {
        self.observers.write().unwrap_or_else(|e| e.into_inner()).push(observer);
    }

    /// Waits up to `timeout` for the next accepted message.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Received>> {
        match self.received.recv_timeout(timeout) {
            Ok(received) => Ok(Some(received)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            // Without records nothing ever comes: wait as asked.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                Ok(None)
            }
        }
    }

    /// Receives until `--count`, `--idle` or `stop`, calling `each` per
    /// accepted message; then finishes: every acknowledged image is handed
    /// to (and answered by) a worker before it returns, unless `stop` is
    /// set meanwhile. Fills [`Hub::summary`].
    pub fn run(&mut self, stop: &AtomicBool, mut each: impl FnMut(&Received) -> Result<()>) -> Result<()> {
        let mut last = Instant::now();
        // Activity: messages from nodes, and for a dispatcher images from JetStream.
        let activity = |s: &HubStatus| (s.messages.load(Ordering::Relaxed), s.nats_consumed.load(Ordering::Relaxed));
        let mut seen = activity(&self.status);
        while !stop.load(Ordering::Relaxed) {
            let now = activity(&self.status);
            if now != seen {
                (seen, last) = (now, Instant::now());
            }
            if self.count.is_some_and(|n| now.0 >= n) {
                break;
            }
            if self.idle.is_some_and(|idle| last.elapsed() >= idle) {
                info!("no message for {:?}; stopping", self.idle.unwrap_or_default());
                break;
            }
            // Without records the channel stays empty: this is the loop's tick.
            if let Some(received) = self.receive(Duration::from_millis(100))? {
                each(&received)?;
            }
        }
        self.finish(stop, &mut each)
    }

    /// Stops reading, lets every stage finish (a second `stop` cuts it
    /// short), and fills the summary.
    fn finish(&mut self, stop: &AtomicBool, each: &mut impl FnMut(&Received) -> Result<()>) -> Result<()> {
        if stop.load(Ordering::Relaxed) {
            self.stop.store(true, Ordering::Relaxed);
        }
        self.finish.store(true, Ordering::Relaxed);
        // Signals reach the caller's flag; the hub's threads watch their own.
        if let Some(thread) = self.frontend.take() {
            wait_watching(|| thread.is_finished(), stop, &self.stop);
            let _ = thread.join();
        }
        while let Ok(received) = self.received.try_recv() {
            each(&received)?;
        }
        if let Some(pool) = self.pool.take() {
            let busy = self.status.dispatch_depth.load(Ordering::Relaxed);
            if busy > 0 {
                info!("handing the last {busy} images to workers before exiting");
            }
            pool.close();
            wait_watching(|| pool.is_finished(), stop, &self.stop);
            self.summary.unprocessed = pool.join() as u64;
        }
        #[cfg(feature = "nats")]
        for task in self.nats.drain(..) {
            task.finish();
        }
        if self.summary.unprocessed > 0 {
            warn!("{} acknowledged images were never answered by a worker", self.summary.unprocessed);
        }
        self.fill_summary();
        Ok(())
    }

    fn fill_summary(&mut self) {
        let s = self.status.snapshot();
        let summary = &mut self.summary;
        summary.messages = s.messages_total;
        summary.images = s.images_total;
        summary.events = s.events_total;
        summary.heartbeats = s.heartbeats_total;
        summary.duplicates = s.duplicates_total;
        summary.bad = s.bad_total;
        summary.refused = s.refused_total;
        summary.bytes = s.bytes_total;
        summary.processed = s.workers.iter().map(|w| w.handled_total).sum();
        summary.abandoned = s.abandoned_total;
        summary.published = s.published_total;
        summary.pushed = s.pushed_total;
        summary.nats_acked = s.nats_acked_total;
        summary.fsync_batches = s.fsync_batches_total;
        summary.per_node = self.per_node.lock().unwrap_or_else(|e| e.into_inner()).clone();
        summary.wall_s = self.started.elapsed().as_secs_f64();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finish.store(true, Ordering::Relaxed);
        if let Some(thread) = self.frontend.take() {
            let _ = thread.join();
        }
        if let Some(pool) = self.pool.take() {
            pool.close();
            pool.join();
        }
        #[cfg(feature = "nats")]
        for task in self.nats.drain(..) {
            task.finish();
        }
    }
}

/// Waits for a hub thread to end, passing a caller's stop (a signal) on to
/// the hub's threads meanwhile.
fn wait_watching(finished: impl Fn() -> bool, caller: &AtomicBool, hub: &AtomicBool) {
    while !finished() {
        if caller.load(Ordering::Relaxed) {
            hub.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CURVE for the links to workers: a client of the workers' key, when set.
fn worker_curve(config: &HubConfig, security: &SecurityConfig, context: &zmq::Context) -> Result<Option<Curve>> {
    if !security.enabled() {
        return Ok(None);
    }
    let Some(worker_cert) = &config.worker_cert else {
        warn!("[security] is on but [hub] worker_cert is not set: the links to workers are plaintext");
        return Ok(None);
    };
    let client = SecurityConfig { secret_cert: security.secret_cert.clone(), server_cert: Some(worker_cert.clone()), allowed_dir: None };
    Curve::open(&client, Role::Client, context).context("[hub] worker_cert")
}

/// A hub for hundreds of nodes holds a connection (a descriptor) per node:
/// more than the usual soft limit of 1024 allows. Raised to the hard limit.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_on_free_port(config: HubConfig) -> (Hub, zmq::Socket, zmq::Context) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let hub = Hub::open(HubConfig { bind: format!("tcp://127.0.0.1:{port}"), ..config }).unwrap();
        let context = zmq::Context::new();
        let node = context.socket(zmq::REQ).unwrap();
        node.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        (hub, node, context)
    }

    #[test]
    fn a_message_that_cannot_be_saved_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (mut hub, node, _context) = hub_on_free_port(HubConfig { save: Some(dir.path().to_path_buf()), ..HubConfig::default() });
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let header = br#"{"msg": "n v|jpg", "node": "n", "boot": 1, "seq": 7, "ts": 86400.5}"#;
        // A file where the day's folder should be makes saving fail.
        let day = store::image_path(dir.path(), "n v|jpg", 86400.5).parent().unwrap().to_path_buf();
        std::fs::write(&day, b"in the way").unwrap();
        let exchange = |hub: &mut Hub| {
            node.send_multipart([&header[..], &jpeg[..]], 0).unwrap();
            let reply = node.recv_bytes(0).unwrap();
            (hub.receive(Duration::from_millis(200)).unwrap(), reply)
        };
        let (received, reply) = exchange(&mut hub);
        assert!(received.is_none());
        assert!(reply.starts_with(b"ERROR"), "{}", String::from_utf8_lossy(&reply));
        std::fs::remove_file(&day).unwrap();
        let (received, reply) = exchange(&mut hub);
        assert_eq!(reply, b"OK");
        assert!(received.unwrap().path.unwrap().exists());
        // The resend after a failure is stored once; a repeat of a stored one is only acknowledged.
        let (received, reply) = exchange(&mut hub);
        assert_eq!((received.is_none(), reply.as_slice()), (true, &b"OK"[..]));
        // Names no file system takes are stored under a safe, shortened one, inside the store.
        for (name, seq) in [(format!("{}\\u0000 Cam", "n".repeat(300)), 8), ("../../up Cam".to_string(), 9)] {
            let header = format!(r#"{{"msg": "{name}|jpg", "node": "n", "boot": 1, "seq": {seq}}}"#);
            node.send_multipart([header.as_bytes(), &jpeg[..]], 0).unwrap();
            assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
            let path = hub.receive(Duration::from_secs(5)).unwrap().unwrap().path.unwrap();
            assert!(path.starts_with(dir.path()) && path.exists() && path.file_name().unwrap().len() < 200, "{}", path.display());
        }
        let status = hub.status().snapshot();
        assert_eq!((status.images_total, status.duplicates_total, status.refused_total), (3, 1, 1));
        assert!(status.fsync_batches_total >= 1);
    }

    #[test]
    fn observers_see_each_accepted_message_once() {
        /// Kind, node, view and payload size of one accepted message.
        type Row = (Kind, String, Option<String>, usize);
        #[derive(Default)]
        struct Seen(Mutex<Vec<Row>>);
        impl Observer for Seen {
            fn accepted(&self, m: &Accepted) {
                self.0.lock().unwrap().push((m.kind, m.node.clone(), m.view.clone(), m.payload.len()));
            }
        }
        let (mut hub, node, _context) = hub_on_free_port(HubConfig::default());
        let seen = Arc::new(Seen::default());
        hub.observe(seen.clone());
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let messages: [&[u8]; 4] = [
            br#"{"msg": "yard Cam|jpg", "node": "yard", "boot": 1, "seq": 1}"#,
            br#"{"msg": "yard Cam|jpg", "node": "yard", "boot": 1, "seq": 1}"#,
            br#"{"msg": "yard Cam|motion|moving", "node": "yard", "boot": 1, "seq": 2}"#,
            br#"{"msg": "yard|Heartbeat", "uptime_s": 5}"#,
        ];
        for header in messages {
            node.send_multipart([header, &jpeg[..]], 0).unwrap();
            assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
        }
        let cam = Some("Cam".to_string());
        assert_eq!(*seen.0.lock().unwrap(), [
            (Kind::Jpeg, "yard".into(), cam.clone(), jpeg.len()),
            (Kind::Event, "yard".into(), cam, jpeg.len()),
            (Kind::Heartbeat, "yard".into(), None, jpeg.len()),
        ]);
    }

    #[test]
    fn malformed_messages_are_answered_and_the_hub_goes_on() {
        let (hub, node, _context) = hub_on_free_port(HubConfig::default());
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let long_name = format!(r#"{{"msg": "{}\u0000 Cam|jpg"}}"#, "n".repeat(300));
        let huge = format!(r#"{{"msg": "x|text", "pad": "{}"}}"#, "p".repeat(100_000));
        let bad: Vec<Vec<&[u8]>> = vec![
            vec![b"not json", &jpeg],
            vec![br#"{"nomsg": 1}"#, &jpeg],
            vec![br#"{"msg": "a b|jpg"}"#],
            vec![br#"{"msg": "a b|jpg"}"#, &jpeg, b"third"],
            vec![br#"{"msg": "a b|image", "dtype": "float64", "shape": [1]}"#, &[0; 8]],
            vec![br#"{"msg": "a b|image", "dtype": "uint8", "shape": [9, 9, 3]}"#, &[0; 8]],
            vec![br#"{"msg": "a b|jpg"}"#, b"\xff\xd8corrupt"],
        ];
        for frames in &bad {
            node.send_multipart(frames, 0).unwrap();
            assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
        }
        for header in [long_name.as_bytes(), huge.as_bytes()] {
            node.send_multipart([header, &jpeg[..]], 0).unwrap();
            assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
        }
        let status = hub.status().snapshot();
        assert_eq!((status.bad_total, status.messages_total), (bad.len() as u64, 2));
    }
}
