//! The sender thread: owns the ZeroMQ socket, takes messages from a bounded
//! queue, and never lets the network stall capture.
//!
//! REQ: every message waits for the hub's reply, at most `reply_timeout`.
//! A hub that does not answer (restarted, unplugged, hung) leaves a REQ socket
//! stuck forever in imagezmq; here the socket is closed and recreated and the
//! unanswered message is sent again, so delivery resumes by itself when the
//! hub is back. PUB: the node binds, ZeroMQ buffers up to the high-water mark
//! per subscriber and drops past it; there is no acknowledgement.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use super::{BufferPool, Message};
use crate::config::{Mode, TransportConfig};
use crate::frame::unix_now;
use crate::stats::LatencyRecorder;
use crate::status::NodeStatus;

/// What the sender did, reported when it finishes.
#[derive(Debug, Default)]
pub struct SenderReport {
    /// Messages delivered (REQ: the hub replied; PUB: handed to ZeroMQ).
    pub sent: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Messages still queued or unanswered when time ran out at exit.
    pub unsent: u64,
    /// PUB messages refused at the high-water mark.
    pub dropped: u64,
    pub reconnects: u64,
    /// Microseconds spent sending and waiting for replies.
    pub busy_us: u64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
}

/// Handle to the running sender thread.
pub struct Sender {
    queue: SyncSender<Message>,
    /// Set by [`Sender::finish`]: after this instant the thread gives up.
    deadline: Arc<Mutex<Option<Instant>>>,
    thread: JoinHandle<SenderReport>,
}

impl Sender {
    /// Opens the socket (so a bad address or a port in use fails now, at
    /// start) and starts the thread.
    pub fn start(config: &TransportConfig, pool: BufferPool, status: Arc<NodeStatus>) -> Result<Sender> {
        let context = zmq::Context::new();
        let address = config.address();
        let socket = match config.mode {
            Mode::Req => connect_req(&context, &address)?,
            Mode::Pub => {
                let socket = context.socket(zmq::PUB)?;
                socket.set_sndhwm(config.pub_hwm)?;
                socket.set_linger((config.linger * 1000.0) as i32)?;
                socket.bind(&address).with_context(|| {
                    format!("cannot bind the PUB socket to [transport] hub = {address:?}: is another program using the port? set another address with --hub")
                })?;
                status.set_hub_reachable(true);
                socket
            }
        };
        let (queue, rx) = sync_channel(config.queue);
        let deadline = Arc::new(Mutex::new(None));
        let worker = Worker {
            context,
            socket,
            address,
            mode: config.mode,
            reply_timeout: Duration::from_secs_f64(config.reply_timeout),
            rx,
            deadline: deadline.clone(),
            pool,
            status,
            report: SenderReport::default(),
            latency: LatencyRecorder::new(4096),
        };
        let thread = std::thread::Builder::new().name("sender".into()).spawn(move || worker.run())?;
        Ok(Sender { queue, deadline, thread })
    }

    /// Queues a message; gives it back when the queue is full, so the caller
    /// decides what a drop means (count it, or keep it elsewhere).
    pub fn offer(&self, message: Message) -> std::result::Result<(), Message> {
        self.queue.try_send(message).map_err(|e| match e {
            TrySendError::Full(m) | TrySendError::Disconnected(m) => m,
        })
    }

    /// Stops taking messages, sends what it can within `linger`, and reports.
    pub fn finish(self, linger: Duration) -> SenderReport {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + linger);
        drop(self.queue);
        self.thread.join().unwrap_or_else(|_| {
            warn!("the sender thread panicked; its counts are lost");
            SenderReport::default()
        })
    }
}

fn connect_req(context: &zmq::Context, address: &str) -> Result<zmq::Socket> {
    let socket = context.socket(zmq::REQ)?;
    // An unanswered request must not hold the process at exit.
    socket.set_linger(0)?;
    socket.connect(address).with_context(|| {
        format!("cannot connect to the hub at [transport] hub = {address:?}: use an address like tcp://HOST:5555")
    })?;
    Ok(socket)
}

struct Worker {
    context: zmq::Context,
    socket: zmq::Socket,
    address: String,
    mode: Mode,
    reply_timeout: Duration,
    rx: Receiver<Message>,
    deadline: Arc<Mutex<Option<Instant>>>,
    pool: BufferPool,
    status: Arc<NodeStatus>,
    report: SenderReport,
    latency: LatencyRecorder,
}

impl Worker {
    fn run(mut self) -> SenderReport {
        let mut outage_since: Option<Instant> = None;
        let mut pending: Option<Message> = None;
        loop {
            let Some(message) = pending.take().or_else(|| self.next_message()) else { break };
            if self.past_deadline() {
                self.report.unsent += 1;
                break;
            }
            let started = Instant::now();
            let delivered = match self.mode {
                Mode::Req => self.request(&message),
                Mode::Pub => self.publish(&message),
            };
            self.report.busy_us += started.elapsed().as_micros() as u64;
            match delivered {
                Ok(true) => {
                    if let Some(since) = outage_since.take() {
                        info!("hub at {} answers again after {:.1}s", self.address, since.elapsed().as_secs_f64());
                    }
                    self.status.set_hub_reachable(true);
                    self.report.sent += 1;
                    self.report.bytes += message.payload.len() as u64;
                    self.latency.record(Duration::from_secs_f64((unix_now() - message.ts).max(0.0)));
                    self.recycle(message);
                }
                Ok(false) if self.mode == Mode::Pub => {
                    self.report.dropped += 1;
                    self.status.note_drop();
                    self.recycle(message);
                }
                Ok(false) | Err(_) => {
                    if let Err(e) = &delivered {
                        debug!("send to {} failed: {e}", self.address);
                    }
                    if self.past_deadline() {
                        self.report.unsent += 1;
                        break;
                    }
                    if outage_since.is_none() {
                        warn!("hub at {} did not reply within {:?}; reconnecting until it does", self.address, self.reply_timeout);
                        outage_since = Some(Instant::now());
                    }
                    self.status.set_hub_reachable(false);
                    self.reconnect();
                    pending = Some(message);
                }
            }
        }
        self.report.unsent += self.rx.try_iter().count() as u64;
        self.report.latency_ms_p50 = self.latency.percentile(50.0);
        self.report.latency_ms_p99 = self.latency.percentile(99.0);
        self.report
    }

    /// The next queued message; `None` when the queue is closed and empty or
    /// the exit deadline passed.
    fn next_message(&self) -> Option<Message> {
        loop {
            match self.current_deadline() {
                // No deadline yet: wait, waking now and then to re-read it.
                None => match self.rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(m) => return Some(m),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return None,
                },
                Some(deadline) => return self.rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).ok(),
            }
        }
    }

    fn current_deadline(&self) -> Option<Instant> {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn past_deadline(&self) -> bool {
        self.current_deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Sends one request and waits for the reply. `Ok(false)`: no reply in time.
    fn request(&mut self, message: &Message) -> zmq::Result<bool> {
        self.socket.send(&message.header, zmq::SNDMORE | zmq::DONTWAIT)?;
        self.socket.send(&message.payload, zmq::DONTWAIT)?;
        let mut wait = self.reply_timeout;
        if let Some(deadline) = self.current_deadline() {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        if self.socket.poll(zmq::POLLIN, wait.as_millis() as i64)? == 0 {
            return Ok(false);
        }
        // Any reply acknowledges the message; imagezmq hubs send b"OK".
        self.socket.recv_multipart(0)?;
        Ok(true)
    }

    /// Publishes one message. `Ok(false)`: refused at the high-water mark.
    fn publish(&mut self, message: &Message) -> zmq::Result<bool> {
        match self.socket.send(&message.header, zmq::SNDMORE | zmq::DONTWAIT) {
            Err(zmq::Error::EAGAIN) => return Ok(false),
            other => other?,
        }
        self.socket.send(&message.payload, 0)?;
        Ok(true)
    }

    fn reconnect(&mut self) {
        self.report.reconnects += 1;
        match connect_req(&self.context, &self.address) {
            Ok(socket) => self.socket = socket,
            Err(e) => warn!("cannot recreate the REQ socket: {e:#}"),
        }
    }

    fn recycle(&self, message: Message) {
        self.pool.give(message.header);
        self.pool.give(message.payload);
    }
}
