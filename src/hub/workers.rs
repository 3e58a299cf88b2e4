//! The worker pool: unchanged imagezmq programs, each binding an `ImageHub`
//! (REP) and looping over `recv_jpg`/`recv_image`, work, `send_reply`. The
//! dispatcher thread gives each image, header and payload as the node sent
//! them, to exactly one free worker, the one idle longest (taken by
//! availability, as in the ZeroMQ guide's load-balancing broker, never round
//! robin), and waits for its reply before it gives that worker another.
//!
//! Each worker gets a DEALER socket of its own, connected to it alone, so
//! the hub knows which worker holds which image. Requests carry an id in
//! their envelope, which REP hands back with the reply, so a late reply to
//! an earlier request is recognised. A socket monitor tells when a worker
//! is connected and when its connection breaks (a worker killed with
//! SIGKILL): its image goes back to the front of the queue at once. A
//! worker that keeps an image past `worker_timeout` (hung, or on a machine
//! that vanished without closing the connection) is treated the same way,
//! and its socket is made anew, so nothing stale stays queued to it (the
//! Lazy Pirate pattern). A failed worker rests before it gets another image:
//! 1 s, doubling up to 60 s, reset by its next reply. Every image is
//! processed at least once; an image whose worker failed after taking it
//! may be processed twice. One that fails `worker_attempts` times (an
//! image that kills every worker) is given up, counted and logged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use super::dispatch::{DispatchQueue, Outcome, Work};
use super::inspect::quote;
use super::status::{bump, HubStatus};
use crate::transport::security::Curve;

/// How a pool runs.
pub struct PoolConfig {
    pub addresses: Vec<String>,
    pub timeout: Duration,
    pub attempts: u32,
}

/// First rest after a failure; doubles per failure in a row, up to `MAX_REST`.
const FIRST_REST: Duration = Duration::from_secs(1);
const MAX_REST: Duration = Duration::from_secs(60);

/// Handle to the dispatcher thread.
pub struct Pool {
    thread: JoinHandle<()>,
    finish: Arc<AtomicBool>,
    queue: Arc<DispatchQueue>,
}

impl Pool {
    /// Starts the dispatcher over `queue`; it runs until [`Pool::finish`] or `stop`.
    pub fn start(
        config: PoolConfig,
        context: &zmq::Context,
        curve: Option<Curve>,
        queue: Arc<DispatchQueue>,
        status: Arc<HubStatus>,
        stop: Arc<AtomicBool>,
    ) -> Result<Pool> {
        let mut workers = Vec::new();
        for (index, address) in config.addresses.iter().enumerate() {
            workers.push(Worker::connect(context, curve.as_ref(), index, address)?);
        }
        let finish = Arc::new(AtomicBool::new(false));
        let dispatcher = Dispatcher {
            context: context.clone(),
            curve,
            workers,
            queue: queue.clone(),
            status,
            stop,
            finish: finish.clone(),
            timeout: config.timeout,
            attempts: config.attempts,
            next_id: 0,
        };
        let thread = std::thread::Builder::new().name("dispatcher".into()).spawn(move || dispatcher.run())?;
        Ok(Pool { thread, finish, queue })
    }

    /// Lets the dispatcher end once every queued image was answered (or
    /// given up); a `stop` ends it at once.
    pub fn close(&self) {
        self.queue.close();
        self.finish.store(true, Ordering::Relaxed);
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the dispatcher; returns how many images were never answered by a worker.
    pub fn join(self) -> usize {
        let _ = self.thread.join();
        self.queue.drain().len()
    }
}

/// An image with a worker.
struct Job {
    work: Work,
    id: u64,
    deadline: Instant,
}

struct Worker {
    index: usize,
    address: String,
    socket: zmq::Socket,
    monitor: zmq::Socket,
    /// Handshake done and the connection not broken since.
    connected: bool,
    job: Option<Job>,
    /// Resting after a failure until then.
    resting: Option<Instant>,
    /// The next rest's length.
    rest: Duration,
    /// Since when it has been free: the longest-free worker is taken first.
    free_since: Instant,
}

/// Events the dispatcher watches on each worker's socket.
const EVENTS: i32 = (zmq::SocketEvent::HANDSHAKE_SUCCEEDED as i32)
    | (zmq::SocketEvent::DISCONNECTED as i32)
    | (zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL as i32)
    | (zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL as i32)
    | (zmq::SocketEvent::HANDSHAKE_FAILED_AUTH as i32);

impl Worker {
    fn connect(context: &zmq::Context, curve: Option<&Curve>, index: usize, address: &str) -> Result<Worker> {
        let (socket, monitor) = open_link(context, curve, index, address)?;
        Ok(Worker {
            index,
            address: address.to_string(),
            socket,
            monitor,
            connected: false,
            job: None,
            resting: None,
            rest: FIRST_REST,
            free_since: Instant::now(),
        })
    }

    fn available(&self, now: Instant) -> bool {
        self.connected && self.job.is_none() && self.resting.map_or(true, |until| now >= until)
    }
}

/// A DEALER connected to one worker, and the PAIR end of its monitor.
fn open_link(context: &zmq::Context, curve: Option<&Curve>, index: usize, address: &str) -> Result<(zmq::Socket, zmq::Socket)> {
    let socket = context.socket(zmq::DEALER)?;
    socket.set_linger(0)?;
    // Messages only to a completed connection: an image never waits in a
    // pipe to a worker that is not there.
    socket.set_immediate(true)?;
    if let Some(curve) = curve {
        curve.secure(context, &socket, address)?;
    }
    // One monitor per socket: this replaces CURVE's, and reports its failures itself.
    static LINKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let endpoint = format!("inproc://hub-worker-{index}-{}", LINKS.fetch_add(1, Ordering::Relaxed));
    socket.monitor(&endpoint, EVENTS)?;
    let monitor = context.socket(zmq::PAIR)?;
    monitor.connect(&endpoint)?;
    socket
        .connect(address)
        .with_context(|| format!("cannot connect to worker {address:?}: use an address like tcp://HOST:5555 ([hub] workers)"))?;
    Ok((socket, monitor))
}

struct Dispatcher {
    context: zmq::Context,
    curve: Option<Curve>,
    workers: Vec<Worker>,
    queue: Arc<DispatchQueue>,
    status: Arc<HubStatus>,
    stop: Arc<AtomicBool>,
    finish: Arc<AtomicBool>,
    timeout: Duration,
    attempts: u32,
    next_id: u64,
}

/// Longest wait in one poll: how soon a stop is noticed.
const TICK: Duration = Duration::from_millis(100);

impl Dispatcher {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            self.assign();
            if self.finish.load(Ordering::Relaxed) && self.queue.is_empty() && self.workers.iter().all(|w| w.job.is_none()) {
                break;
            }
            if let Err(e) = self.wait() {
                warn!("the worker dispatcher failed: {e}; images still queued are not handed on");
                break;
            }
            self.expire();
        }
        // Images still with workers at a stop are not answered: count them as never handed on.
        for worker in &mut self.workers {
            if let Some(job) = worker.job.take() {
                self.queue.push_front(job.work);
            }
        }
    }

    /// Hands queued images to free workers, the longest-free first.
    fn assign(&mut self) {
        let now = Instant::now();
        loop {
            let free = self.workers.iter().filter(|w| w.available(now)).min_by_key(|w| w.free_since).map(|w| w.index);
            let Some(index) = free else { return };
            let Some(work) = self.queue.pop() else { return };
            let worker = &mut self.workers[index];
            if worker.resting.take().is_some() {
                bump(&self.status.workers[index].retries);
                debug!("worker {} gets another try", worker.address);
            }
            self.next_id += 1;
            let id = self.next_id;
            let sent = worker
                .socket
                .send(&id.to_le_bytes()[..], zmq::SNDMORE | zmq::DONTWAIT)
                .and_then(|()| worker.socket.send(&[][..], zmq::SNDMORE | zmq::DONTWAIT))
                .and_then(|()| worker.socket.send(&work.header[..], zmq::SNDMORE | zmq::DONTWAIT))
                .and_then(|()| worker.socket.send(&work.payload[..], zmq::DONTWAIT));
            match sent {
                Ok(()) => {
                    self.status.workers[index].busy.store(true, Ordering::Relaxed);
                    worker.job = Some(Job { work, id, deadline: now + self.timeout });
                }
                Err(e) => {
                    // The connection went between the handshake and now.
                    debug!("cannot send to worker {}: {e}", worker.address);
                    worker.connected = false;
                    self.status.workers[index].up.store(false, Ordering::Relaxed);
                    self.queue.push_front(work);
                }
            }
        }
    }

    /// Waits for a reply, a connection event, new images or the next deadline.
    fn wait(&mut self) -> zmq::Result<()> {
        let now = Instant::now();
        let mut until = now + TICK;
        for worker in &self.workers {
            if let Some(job) = &worker.job {
                until = until.min(job.deadline);
            }
            if let Some(resting) = worker.resting.filter(|_| worker.connected) {
                until = until.min(resting);
            }
        }
        let mut items = vec![self.queue.wake.poll_item()];
        for worker in &self.workers {
            items.push(worker.socket.as_poll_item(zmq::POLLIN));
            items.push(worker.monitor.as_poll_item(zmq::POLLIN));
        }
        let timeout = until.saturating_duration_since(now).as_millis().max(1) as i64;
        match zmq::poll(&mut items, timeout) {
            Ok(_) | Err(zmq::Error::EINTR) => {}
            Err(e) => return Err(e),
        }
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        if ready[0] {
            self.queue.wake.clear();
        }
        for index in 0..self.workers.len() {
            if ready[1 + 2 * index] {
                self.replies(index)?;
            }
            if ready[2 + 2 * index] {
                self.events(index);
            }
        }
        Ok(())
    }

    /// Takes every reply waiting on a worker's socket.
    fn replies(&mut self, index: usize) -> zmq::Result<()> {
        loop {
            let parts = match self.workers[index].socket.recv_multipart(zmq::DONTWAIT) {
                Ok(parts) => parts,
                Err(zmq::Error::EAGAIN) => return Ok(()),
                Err(e) => return Err(e),
            };
            let id = parts.first().and_then(|p| <[u8; 8]>::try_from(&p[..]).ok()).map(u64::from_le_bytes);
            let worker = &mut self.workers[index];
            match worker.job.take() {
                Some(job) if Some(job.id) == id => {
                    let status = &self.status.workers[index];
                    bump(&status.handled);
                    status.busy.store(false, Ordering::Relaxed);
                    worker.rest = FIRST_REST;
                    worker.free_since = Instant::now();
                    job.work.finish(Outcome::Processed);
                }
                // A reply to an earlier request (its image went elsewhere): the worker lives.
                job => worker.job = job,
            }
        }
    }

    /// Connection news from a worker's monitor.
    fn events(&mut self, index: usize) {
        while let Ok(parts) = self.workers[index].monitor.recv_multipart(zmq::DONTWAIT) {
            let Some(head) = parts.first().filter(|p| p.len() >= 6) else { continue };
            let event = zmq::SocketEvent::from_raw(u16::from_ne_bytes([head[0], head[1]]));
            let worker = &mut self.workers[index];
            match event {
                zmq::SocketEvent::HANDSHAKE_SUCCEEDED => {
                    info!("worker {} connected", worker.address);
                    worker.connected = true;
                    worker.free_since = Instant::now();
                    self.status.workers[index].up.store(worker.resting.is_none(), Ordering::Relaxed);
                }
                zmq::SocketEvent::DISCONNECTED if worker.connected => {
                    worker.connected = false;
                    self.status.workers[index].up.store(false, Ordering::Relaxed);
                    if worker.job.is_some() {
                        self.fail(index, "lost its connection");
                    } else {
                        info!("worker {} disconnected", self.workers[index].address);
                    }
                }
                zmq::SocketEvent::HANDSHAKE_FAILED_AUTH | zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL | zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL => {
                    debug!("worker {}: handshake failed ({event:?}): check [hub] worker_cert and the worker's CURVE keys", worker.address);
                }
                _ => {}
            }
        }
    }

    /// Workers past their deadline fail; rested ones come back.
    fn expire(&mut self) {
        let now = Instant::now();
        for index in 0..self.workers.len() {
            if self.workers[index].job.as_ref().is_some_and(|job| now >= job.deadline) {
                let timeout = self.timeout;
                self.fail(index, &format!("did not reply within {timeout:?}"));
                self.reconnect(index);
            }
            let worker = &self.workers[index];
            if worker.connected && worker.resting.is_some_and(|until| now >= until) {
                self.status.workers[index].up.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The worker failed with an image: the image goes first in the queue
    /// again (or is given up), the worker rests.
    fn fail(&mut self, index: usize, what: &str) {
        let worker = &mut self.workers[index];
        let Some(job) = worker.job.take() else { return };
        let status = &self.status.workers[index];
        bump(&status.failures);
        status.busy.store(false, Ordering::Relaxed);
        status.up.store(false, Ordering::Relaxed);
        let rest = worker.rest;
        worker.resting = Some(Instant::now() + rest);
        worker.rest = (rest * 2).min(MAX_REST);
        let mut work = job.work;
        work.failures += 1;
        if work.failures >= self.attempts {
            warn!(
                "worker {} {what}; gave up {} after {} failed hand-overs ([hub] worker_attempts)",
                worker.address,
                quote(&work.msg),
                work.failures
            );
            bump(&self.status.abandoned);
            work.finish(Outcome::Abandoned);
        } else {
            warn!("worker {} {what}; its image goes to another worker, and it rests {rest:?}", worker.address);
            self.queue.push_front(work);
        }
    }

    /// A new socket for a worker that timed out: nothing stale stays queued to it.
    fn reconnect(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        match open_link(&self.context, self.curve.as_ref(), index, &worker.address) {
            Ok((socket, monitor)) => {
                worker.socket = socket;
                worker.monitor = monitor;
                worker.connected = false;
            }
            Err(e) => warn!("cannot reconnect to worker {}: {e:#}", worker.address),
        }
    }
}
