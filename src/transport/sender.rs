//! The sender thread: owns the ZeroMQ socket, takes messages from a bounded
//! queue, and never lets the network stall capture.
//!
//! REQ: a message is delivered when the hub replied `OK` (what imagezmq's
//! `ImageHub.send_reply()` sends), within `reply_timeout`. A hub that does not
//! answer (restarted, unplugged, hung) leaves a REQ socket stuck forever in
//! imagezmq; here the socket is closed and recreated, and the node is in an
//! outage until a reply comes. With several hubs (`hub = "A,B"`) the new
//! socket goes to the next one, and after `failback` seconds away from the
//! first the node tries the first again; whichever hub answers gets the
//! spool. During an outage event messages go to the
//! [`Spool`] as soon as they are queued, and the oldest spooled message is
//! what probes the hub; other messages (heartbeats, frames of `send = "all"`
//! outside events) are dropped, counted. Once the hub replies, spooled
//! messages go out oldest first, taking turns with live ones so that a backlog
//! never starves the present. Delivery is at-least-once: when a reply is lost
//! the message goes again, and the hub drops the repeat by node, boot and
//! sequence number. Without a spool, the unanswered message is retried and
//! the queue waits behind it, dropping when full.
//!
//! PUB: the node binds, ZeroMQ buffers up to the high-water mark per
//! subscriber and drops past it. There is no acknowledgement, so nothing is
//! spooled: PUB is for live view, REQ for events that must arrive.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use super::security::{Curve, Role, SecurityConfig};
use super::spool::{Spool, SpoolConfig, SpoolCounts, SpoolKey};
use super::{BufferPool, Message, Mode, TransportConfig};
use crate::frame::unix_now;
use crate::queue::{Queue, TryPop};
use crate::stats::LatencyRecorder;
use crate::status::NodeStatus;

/// What the sender did, reported when it finishes.
#[derive(Debug, Default)]
pub struct SenderReport {
    /// Messages delivered (REQ: the hub replied; PUB: handed to ZeroMQ),
    /// spooled ones included.
    pub sent: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Messages neither delivered nor spooled when time ran out at exit.
    pub unsent: u64,
    /// PUB messages refused at the high-water mark; REQ messages that are not
    /// part of an event, dropped during an outage.
    pub dropped: u64,
    pub reconnects: u64,
    /// Microseconds spent sending and waiting for replies.
    pub busy_us: u64,
    /// Capture-to-reply latency of live messages (spooled ones would only
    /// measure the outage).
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    /// What the spool did; all zero without one.
    pub spool: SpoolCounts,
}

/// How the sender stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// A signal: the exit must fit in 2 s. The queue gets `linger` (at most
    /// 1.5 s); what is left of its event messages goes to the spool, which
    /// waits for the next start.
    Signal,
    /// The natural end of a finite run: the queue and the spool get up to
    /// `drain_timeout` (PUB: `linger`) to go out.
    Drain,
}

/// When the thread must give up, and whether it delivers the spool meanwhile.
#[derive(Clone, Copy, Debug)]
struct Stop {
    deadline: Instant,
    drain_spool: bool,
}

/// Set by [`Sender::finish`]; the thread reads it and waits on it.
#[derive(Default)]
struct StopSignal {
    stop: Mutex<Option<Stop>>,
    changed: Condvar,
}

impl StopSignal {
    fn lock(&self) -> MutexGuard<'_, Option<Stop>> {
        self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self) -> Option<Stop> {
        *self.lock()
    }

    fn set(&self, stop: Stop) {
        *self.lock() = Some(stop);
        self.changed.notify_all();
    }

    /// Waits until `until`, the deadline, or a stop being set, which
    /// ever comes first.
    fn wait(&self, until: Instant) {
        let mut guard = self.lock();
        let was_set = guard.is_some();
        loop {
            let limit = guard.map_or(until, |s| until.min(s.deadline));
            let now = Instant::now();
            if now >= limit || guard.is_some() != was_set {
                return;
            }
            guard = self.changed.wait_timeout(guard, limit - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Handle to the running sender thread.
pub struct Sender {
    queue: Producer,
    spool: Option<Arc<Spool>>,
    pool: BufferPool,
    status: Arc<NodeStatus>,
    stop: Arc<StopSignal>,
    mode: Mode,
    linger: Duration,
    drain_timeout: Duration,
    thread: JoinHandle<SenderReport>,
}

impl Sender {
    /// Opens the socket and the spool (so a bad address, a port in use or an
    /// unwritable spool fails now, at start) and starts the thread.
    pub fn start(
        config: &TransportConfig,
        spool: &SpoolConfig,
        security: &SecurityConfig,
        pool: BufferPool,
        status: Arc<NodeStatus>,
    ) -> Result<Sender> {
        let context = zmq::Context::new();
        let addresses = config.addresses();
        let curve = Curve::open(security, Role::of_node(config.mode), &context)?;
        let socket = match config.mode {
            Mode::Req => connect_req(&context, &addresses[0], curve.as_ref())?,
            Mode::Pub => {
                let socket = context.socket(zmq::PUB)?;
                socket.set_sndhwm(config.pub_hwm)?;
                socket.set_linger((config.linger * 1000.0) as i32)?;
                if let Some(curve) = &curve {
                    curve.secure(&context, &socket, &addresses.join(", "))?;
                }
                for address in &addresses {
                    socket.bind(address).with_context(|| {
                        format!("cannot bind the PUB socket to [transport] hub = {address:?}: is another program using the port? set another address with --hub")
                    })?;
                }
                status.set_hub_reachable(true);
                socket
            }
        };
        let spool = Spool::open_configured(spool, config.mode)?.map(Arc::new);
        let queue = Arc::new(Queue::new(config.queue, 1));
        let stop = Arc::new(StopSignal::default());
        let worker = Worker {
            context,
            socket,
            curve,
            addresses,
            current: 0,
            failed_over: None,
            failback: Duration::from_secs_f64(config.failback),
            mode: config.mode,
            reply_timeout: Duration::from_secs_f64(config.reply_timeout),
            queue: queue.clone(),
            stop: stop.clone(),
            spool: spool.clone(),
            pool: pool.clone(),
            status: status.clone(),
            outage_since: None,
            spool_turn: false,
            report: SenderReport::default(),
            latency: LatencyRecorder::new(4096),
            reply: zmq::Message::new(),
        };
        let thread = std::thread::Builder::new().name("sender".into()).spawn(move || worker.run())?;
        Ok(Sender {
            queue: Producer(queue),
            spool,
            pool,
            status,
            stop,
            mode: config.mode,
            linger: Duration::from_secs_f64(config.linger),
            drain_timeout: Duration::from_secs_f64(config.drain_timeout),
            thread,
        })
    }

    /// Queues a message. When the queue is full an event message goes to the
    /// spool instead (in the caller's thread: it costs an fsync, but only
    /// while the network is behind); anything else is given back, so the
    /// caller counts the drop.
    pub fn offer(&self, message: Message) -> std::result::Result<(), Message> {
        let Err(message) = self.queue.0.try_push(message) else { return Ok(()) };
        let Some(spool) = self.spool.as_ref().filter(|_| message.durable) else { return Err(message) };
        match spool.store(&message) {
            Ok(()) => {
                self.status.note_drop();
                self.pool.give(message.header, message.payload);
                Ok(())
            }
            Err(e) => {
                warn!("send queue full and {e:#}");
                Err(message)
            }
        }
    }

    /// Event messages waiting in the spool and their bytes; `None` without a spool.
    pub fn spool_usage(&self) -> Option<(u64, u64)> {
        self.spool.as_ref().map(|spool| (spool.len() as u64, spool.used_bytes()))
    }

    /// Queues a message, waiting until `deadline` for room; the message
    /// comes back if there is none by then. For sources that can wait for
    /// the network, which then never drop or spool for a full queue.
    pub fn offer_until(&self, message: Message, deadline: Instant) -> std::result::Result<(), Message> {
        self.queue.0.push_until(message, deadline)
    }

    /// Stops taking messages, delivers what it can in the time `how` allows,
    /// and reports.
    pub fn finish(self, how: Shutdown) -> SenderReport {
        let (limit, drain_spool) = match (how, self.mode) {
            (Shutdown::Signal, _) => (self.linger.min(Duration::from_millis(1500)), false),
            (Shutdown::Drain, Mode::Req) => (self.drain_timeout, true),
            (Shutdown::Drain, Mode::Pub) => (self.linger, false),
        };
        self.stop.set(Stop { deadline: Instant::now() + limit, drain_spool });
        drop(self.queue);
        self.thread.join().unwrap_or_else(|_| {
            warn!("the sender thread panicked; its counts are lost");
            SenderReport::default()
        })
    }
}

/// The pipeline's end of the send queue: closing it, when the `Sender` is
/// finished or dropped, tells the sender thread that nothing more comes.
struct Producer(Arc<Queue<Message>>);

impl Drop for Producer {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn connect_req(context: &zmq::Context, address: &str, curve: Option<&Curve>) -> Result<zmq::Socket> {
    let socket = context.socket(zmq::REQ)?;
    // An unanswered request must not hold the process at exit.
    socket.set_linger(0)?;
    if let Some(curve) = curve {
        curve.secure(context, &socket, address)?;
    }
    socket.connect(address).with_context(|| {
        format!("cannot connect to the hub at [transport] hub = {address:?}: use an address like tcp://HOST:5555")
    })?;
    Ok(socket)
}

/// Checks that the hubs can be reached as [`Sender::start`] would reach
/// them, for `camnode doctor`: REQ sends `message` (a heartbeat) to each hub
/// and waits up to `reply_timeout` for its `OK`, returning how long the
/// slowest took; PUB binds the addresses and lets them go. With
/// `[security]`, over CURVE.
pub fn probe(config: &TransportConfig, security: &SecurityConfig, message: &Message) -> Result<Duration> {
    let context = zmq::Context::new();
    let curve = Curve::open(security, Role::of_node(config.mode), &context)?;
    let mut slowest = Duration::ZERO;
    for address in config.addresses() {
        let started = Instant::now();
        if config.mode == Mode::Pub {
            let socket = context.socket(zmq::PUB)?;
            socket.set_linger(0)?;
            if let Some(curve) = &curve {
                curve.secure(&context, &socket, &address)?;
            }
            socket.bind(&address).with_context(|| format!("cannot bind [transport] hub = {address:?}"))?;
            continue;
        }
        let socket = connect_req(&context, &address, curve.as_ref())?;
        socket.send(&message.header[..], zmq::SNDMORE)?;
        socket.send(&message.payload[..], 0)?;
        let timeout = Duration::from_secs_f64(config.reply_timeout);
        if socket.poll(zmq::POLLIN, timeout.as_millis() as i64)? == 0 {
            anyhow::bail!("no reply from {address} within {timeout:?}");
        }
        let reply = socket.recv_multipart(0)?;
        match reply.first() {
            Some(first) if reply.len() == 1 && first == b"OK" => slowest = slowest.max(started.elapsed()),
            first => anyhow::bail!(
                "{address} replied {:?} instead of OK: it is not an imagezmq hub",
                String::from_utf8_lossy(first.map_or(&[][..], |f| &f[..f.len().min(40)]))
            ),
        }
    }
    Ok(slowest)
}

/// How one request went.
enum Reply {
    /// The hub replied `OK`.
    Ack,
    /// No reply within `reply_timeout` (or before the exit deadline).
    Silent,
    /// A reply other than `OK`: the hub is not an imagezmq hub, or is broken.
    Refused(String),
    /// The socket failed.
    Failed(zmq::Error),
}

/// How long a wait for a reply sleeps at a time: an outage moves queued event
/// messages to the spool in between, and a stop is noticed at once.
const POLL_SLICE: Duration = Duration::from_millis(100);

struct Worker {
    context: zmq::Context,
    socket: zmq::Socket,
    /// `[security]`: CURVE for every socket this worker makes (REQ reconnects
    /// make new ones), and for a PUB node the authenticator of its subscribers.
    curve: Option<Curve>,
    /// The hubs in order of preference (REQ), or the bound addresses (PUB).
    addresses: Vec<String>,
    /// Which hub the REQ socket is connected to.
    current: usize,
    /// When the node last moved away from the first hub.
    failed_over: Option<Instant>,
    /// How long it stays on a later hub before trying the first again.
    failback: Duration,
    mode: Mode,
    reply_timeout: Duration,
    queue: Arc<Queue<Message>>,
    stop: Arc<StopSignal>,
    spool: Option<Arc<Spool>>,
    pool: BufferPool,
    status: Arc<NodeStatus>,
    /// Since when the hub has not replied.
    outage_since: Option<Instant>,
    /// When live and spooled messages both wait, whether a spooled one is next.
    spool_turn: bool,
    report: SenderReport,
    latency: LatencyRecorder,
    /// The hub's reply, received into the same message every time.
    reply: zmq::Message,
}

impl Worker {
    fn run(mut self) -> SenderReport {
        match self.mode {
            Mode::Req => self.run_req(),
            Mode::Pub => self.run_pub(),
        }
        // What is still queued at the deadline: event messages wait in the spool for the next start.
        while let TryPop::Item(message) = self.queue.try_pop() {
            if !self.shelve(message) {
                self.report.unsent += 1;
            }
        }
        if let Some(spool) = &self.spool {
            self.report.spool = spool.counts();
        }
        self.report.latency_ms_p50 = self.latency.percentile(50.0);
        self.report.latency_ms_p99 = self.latency.percentile(99.0);
        self.report
    }

    fn run_pub(&mut self) {
        while let Some(message) = self.wait_live() {
            if self.past_deadline() {
                self.report.unsent += 1;
                self.recycle(message);
                break;
            }
            let started = Instant::now();
            let published = self.publish(&message);
            self.report.busy_us += started.elapsed().as_micros() as u64;
            match published {
                Ok(true) => self.delivered(message, None),
                Ok(false) | Err(_) => {
                    if let Err(e) = published {
                        debug!("publish on {} failed: {e}", self.addresses.join(", "));
                    }
                    self.report.dropped += 1;
                    self.status.note_drop();
                    self.recycle(message);
                }
            }
        }
        // ZeroMQ flushes at close for at most the time left before the deadline.
        let left = self.stop.get().map_or(Duration::ZERO, |s| s.deadline.saturating_duration_since(Instant::now()));
        if let Err(e) = self.socket.set_linger(left.as_millis() as i32) {
            debug!("cannot shorten the PUB linger: {e}");
        }
    }

    fn run_req(&mut self) {
        // A live message that failed and could not be spooled: sent again first.
        let mut retry: Option<Message> = None;
        loop {
            if self.outage_since.is_some() {
                self.spool_queue();
            }
            let next = match retry.take() {
                Some(message) => Some((message, None)),
                None => self.next_req(),
            };
            let Some((message, key)) = next else { break };
            if self.past_deadline() {
                self.put_back(message, key);
                break;
            }
            self.fail_back();
            let started = Instant::now();
            let reply = self.request(&message);
            self.report.busy_us += started.elapsed().as_micros() as u64;
            if let Reply::Ack = reply {
                self.delivered(message, key);
                continue;
            }
            self.note_outage(&reply);
            match key {
                Some(key) => self.put_back(message, Some(key)),
                None if message.durable && self.spool.is_some() => {
                    if !self.shelve(message) {
                        self.report.dropped += 1;
                    }
                }
                None => retry = Some(message),
            }
            match reply {
                // The whole reply timeout was waited already.
                Reply::Silent => self.reconnect(),
                // Failing fast: wait before the next try, not to hammer a broken hub.
                Reply::Failed(_) => {
                    self.reconnect();
                    self.stop.wait(Instant::now() + self.reply_timeout);
                }
                Reply::Refused(_) => {
                    self.stop.wait(Instant::now() + self.reply_timeout);
                    if self.addresses.len() > 1 {
                        self.reconnect();
                    }
                }
                Reply::Ack => {}
            }
        }
        if let Some(message) = retry {
            self.put_back(message, None);
        }
    }

    /// The next message to deliver, with its spool key if it comes from the
    /// spool; `None` when there is nothing left to do before exit.
    fn next_req(&mut self) -> Option<(Message, Option<SpoolKey>)> {
        loop {
            if self.past_deadline() {
                return None;
            }
            let spool_waiting = self.spool_deliverable();
            // In an outage the queue went to the spool already: its oldest message is the probe.
            if spool_waiting && (self.outage_since.is_some() || self.spool_turn) {
                self.spool_turn = false;
                match self.spool.as_ref().and_then(|s| s.take_oldest(&self.pool)) {
                    Some((key, message)) => return Some((message, Some(key))),
                    // Every file left was damaged, and is gone now.
                    None => continue,
                }
            }
            match self.queue.try_pop() {
                TryPop::Item(message) => {
                    self.spool_turn = spool_waiting;
                    return Some((message, None));
                }
                // Dropped without `finish`: nobody waits for the spool to drain.
                TryPop::Closed if self.stop.get().is_none() => return None,
                _ if spool_waiting => self.spool_turn = true,
                TryPop::Closed => return None,
                TryPop::Empty => return self.wait_live().map(|m| (m, None)),
            }
        }
    }

    /// Waits for a queued message; `None` once the queue is closed and
    /// empty, or at the exit deadline.
    fn wait_live(&mut self) -> Option<Message> {
        // `finish` sets the stop before it closes the queue, which wakes this.
        self.queue.pop_until(self.stop.get().map(|stop| stop.deadline))
    }

    /// True when spooled messages wait and may go now: after a signal the
    /// spool is left for the next start.
    fn spool_deliverable(&self) -> bool {
        let Some(spool) = &self.spool else { return false };
        self.stop.get().map_or(true, |s| s.drain_spool) && !spool.is_empty()
    }

    fn past_deadline(&self) -> bool {
        self.stop.get().is_some_and(|s| Instant::now() >= s.deadline)
    }

    /// Sends one request and waits for the reply.
    fn request(&mut self, message: &Message) -> Reply {
        // Slices, not `&Vec`: zmq turns a `&Vec<u8>` into a message by cloning
        // the vector, a heap allocation per frame; a slice is copied by libzmq.
        let sent = self.socket.send(&message.header[..], zmq::SNDMORE | zmq::DONTWAIT).and_then(|()| self.socket.send(&message.payload[..], zmq::DONTWAIT));
        if let Err(e) = sent {
            return Reply::Failed(e);
        }
        let until = Instant::now() + self.reply_timeout;
        loop {
            let limit = self.stop.get().map_or(until, |s| until.min(s.deadline));
            let now = Instant::now();
            if now >= limit {
                return Reply::Silent;
            }
            let slice = (limit - now).min(POLL_SLICE);
            match self.socket.poll(zmq::POLLIN, slice.as_millis().max(1) as i64) {
                Ok(0) if self.outage_since.is_some() => self.spool_queue(),
                // A signal interrupted the wait, not the hub: keep waiting.
                Ok(0) | Err(zmq::Error::EINTR) => {}
                Ok(_) => break,
                Err(e) => return Reply::Failed(e),
            }
        }
        // Into one reused message, part by part: no allocation per reply.
        let (mut parts, mut not_ok) = (0, None);
        loop {
            if let Err(e) = self.socket.recv(&mut self.reply, 0) {
                return Reply::Failed(e);
            }
            parts += 1;
            if parts == 1 && &self.reply[..] != b"OK" {
                not_ok = Some(String::from_utf8_lossy(&self.reply[..self.reply.len().min(40)]).into_owned());
            }
            if !self.reply.get_more() {
                break;
            }
        }
        match (parts, not_ok) {
            (1, None) => Reply::Ack,
            (parts, first) => Reply::Refused(format!("{parts} frames starting {:?}", first.as_deref().unwrap_or("OK"))),
        }
    }

    /// Publishes one message. `Ok(false)`: refused at the high-water mark.
    fn publish(&mut self, message: &Message) -> zmq::Result<bool> {
        match self.socket.send(&message.header[..], zmq::SNDMORE | zmq::DONTWAIT) {
            Err(zmq::Error::EAGAIN) => return Ok(false),
            other => other?,
        }
        self.socket.send(&message.payload[..], 0)?;
        Ok(true)
    }

    fn delivered(&mut self, message: Message, key: Option<SpoolKey>) {
        if let Some(since) = self.outage_since.take() {
            let waiting = self.spool.as_ref().map_or(0, |s| s.len());
            info!("hub at {} replies after {:.1}s; {waiting} messages wait in the spool", self.address(), since.elapsed().as_secs_f64());
        }
        self.status.set_hub_reachable(true);
        self.report.sent += 1;
        self.report.bytes += message.payload.len() as u64;
        match (key, &self.spool) {
            (Some(key), Some(spool)) => spool.delivered(key),
            _ => self.latency.record(Duration::from_secs_f64((unix_now() - message.ts).max(0.0))),
        }
        self.recycle(message);
    }

    fn note_outage(&mut self, reply: &Reply) {
        let what = match reply {
            Reply::Silent => format!("did not reply within {:?}", self.reply_timeout),
            Reply::Refused(reply) => format!("replied {reply} instead of OK"),
            Reply::Failed(e) => format!("failed: {e}"),
            Reply::Ack => return,
        };
        if self.outage_since.is_none() {
            let meanwhile = if self.spool.is_some() { "event messages go to the spool meanwhile" } else { "with no spool, the queue waits and drops when full" };
            let retrying = if self.addresses.len() > 1 { "trying the next hub until one replies OK" } else { "retrying until it replies OK" };
            warn!("hub at {} {what}; {retrying}, {meanwhile}", self.address());
            self.outage_since = Some(Instant::now());
        } else {
            debug!("hub at {} {what}", self.address());
        }
        self.status.set_hub_reachable(false);
    }

    /// During an outage: queued event messages go to the spool at once, so
    /// that little waits in memory; the rest is dropped, counted. Without a
    /// spool the queue stays as it is.
    fn spool_queue(&mut self) {
        if self.spool.is_none() {
            return;
        }
        while let TryPop::Item(message) = self.queue.try_pop() {
            if !self.shelve(message) {
                self.report.dropped += 1;
                self.status.note_drop();
            }
        }
    }

    /// Puts a live event message in the spool; false (the message recycled)
    /// if it is not an event message, there is no spool, or the write failed.
    fn shelve(&mut self, message: Message) -> bool {
        let stored = match &self.spool {
            Some(spool) if message.durable => match spool.store(&message) {
                Ok(()) => true,
                Err(e) => {
                    warn!("dropped an event message: {e:#}");
                    false
                }
            },
            _ => false,
        };
        if stored {
            self.status.note_drop();
        }
        self.recycle(message);
        stored
    }

    /// A message taken but not delivered before exit: a spooled one stays
    /// in the spool, a live one is spooled if it can be.
    fn put_back(&mut self, message: Message, key: Option<SpoolKey>) {
        match (key, &self.spool) {
            (Some(key), Some(spool)) => {
                spool.release(key);
                self.recycle(message);
            }
            _ => {
                if !self.shelve(message) {
                    self.report.unsent += 1;
                }
            }
        }
    }

    fn address(&self) -> &str {
        &self.addresses[self.current]
    }

    /// After silence or a failure: a new REQ socket, to the next hub when
    /// there are several (Lazy Pirate's reconnect, with failover).
    fn reconnect(&mut self) {
        if self.addresses.len() > 1 {
            self.current = (self.current + 1) % self.addresses.len();
            self.failed_over = (self.current != 0).then(Instant::now);
            debug!("switching to hub {}", self.address());
        }
        self.connect_current();
    }

    /// On a later hub for `failback`: back to the first (if it is still
    /// silent, the next silence moves the node on again).
    fn fail_back(&mut self) {
        if self.failed_over.is_some_and(|since| since.elapsed() >= self.failback) {
            self.current = 0;
            self.failed_over = None;
            info!("trying the first hub {} again", self.address());
            self.connect_current();
        }
    }

    fn connect_current(&mut self) {
        self.report.reconnects += 1;
        match connect_req(&self.context, &self.addresses[self.current], self.curve.as_ref()) {
            Ok(socket) => self.socket = socket,
            Err(e) => warn!("cannot recreate the REQ socket: {e:#}"),
        }
    }

    fn recycle(&self, message: Message) {
        self.pool.give(message.header, message.payload);
    }
}
