//! The frontend: the socket nodes talk to, and the loop of the hub's
//! ingest thread, which reads, checks, stores and answers.
//!
//! For REQ nodes it binds a ROUTER, so that it serves many nodes at once
//! instead of one REP in lock step: each request arrives with the routing id
//! of its node, and the reply can go back whenever the message is safe,
//! after requests of other nodes. A REQ node has one request out at a
//! time, so the hub holds at most one message per node it has not
//! answered. For PUB nodes it connects a SUB socket; nothing is answered.
//!
//! After each wake-up the loop reads every message that waits, up to
//! [`READ_BATCH`], and checks each ([`inspect`](super::inspect)): a
//! malformed one is answered `OK` at once (sending it again cannot help)
//! with one warning, and goes no further. The valid ones are one batch for
//! the [`Stage`]: stored and fsynced in one group commit, handed on, and
//! answered, all on this thread, before the loop reads again. Messages that
//! come meanwhile (while a batch syncs, say) wait in ZeroMQ's queues, one
//! per REQ node at most, and make the next batch; when a downstream is full
//! the stage waits, so the loop stops reading: the next requests wait in
//! ZeroMQ and TCP, the nodes' replies are late, and their event frames go to
//! their spools, but nothing the hub acknowledged is dropped.
//!
//! Why one thread: a hand-over between threads costs a wake-up, a system
//! call and a context switch on each side, and with a frontend thread and a
//! store thread a message crossed three (to the store, back with its reply,
//! on to ZeroMQ's I/O thread); at moderate rates, where no batch forms,
//! those wake-ups cost more than the hub's own work on a message
//! (docs/hub.md, "Where the CPU goes"). Replies that come from another
//! thread (JetStream's acknowledgements) come through [`Replies`] and an
//! eventfd the loop polls beside the socket, since a ZeroMQ socket belongs
//! to one thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use log::{debug, warn};

use super::inspect::{inspect, Incoming};
use super::status::{bump, HubStatus};
use super::store::Stage;
use super::wake::Wake;
use crate::transport::security::Curve;
use crate::transport::Mode;

/// A checked message of a batch for the stage, with whom to answer.
pub(crate) struct Ingested {
    pub incoming: Incoming,
    /// The node's routing id (REQ); `None` for PUB nodes.
    pub reply_to: Option<Bytes>,
    /// When it was read, Unix seconds.
    pub received: f64,
}

/// The reply that tells a node its message is safe.
const OK: &[u8] = b"OK";
/// The reply that tells it to send the message again later.
const NOT_STORED: &[u8] = b"ERROR: not stored";

/// Where another thread (JetStream's) sends the nodes' replies; cheap to
/// clone. The stage on the ingest thread answers directly instead, so a
/// build without the `nats` feature makes one and never sends through it.
#[derive(Clone)]
#[cfg_attr(not(feature = "nats"), allow(dead_code))]
pub(crate) struct Replies {
    tx: mpsc::Sender<(Bytes, bool)>,
    wake: Arc<Wake>,
}

#[cfg_attr(not(feature = "nats"), allow(dead_code))]
impl Replies {
    /// Answers a node: `OK`, or that it must send again. Nothing for PUB nodes.
    pub fn send(&self, to: Option<Bytes>, ok: bool) {
        if let Some(to) = to {
            if self.tx.send((to, ok)).is_ok() {
                self.wake.wake();
            }
        }
    }
}

/// The frontend's socket, open and bound, before its thread starts.
pub(crate) struct Frontend {
    socket: zmq::Socket,
    mode: Mode,
    replies: Receiver<(Bytes, bool)>,
    wake: Arc<Wake>,
    status: Arc<HubStatus>,
    /// Stop reading (drain): `--count` reached, `--idle`, or a signal.
    finish: Arc<AtomicBool>,
    /// Stop at `count` accepted messages: read no more than can reach it.
    count: Option<u64>,
}

/// How long a wait lasts before the finish flag is read again.
const TICK_MS: i64 = 100;

/// Largest frame a header may be: far more than any real header; a larger one is malformed.
const MAX_HEADER: usize = 1 << 20;

/// Messages read after one wake-up at most, and so in one group commit:
/// more than the nodes of a large fleet send at once, and a bound on what
/// the hub holds (a batch, and what waits in ZeroMQ's queues).
const READ_BATCH: usize = 256;

/// What one read from the socket gave.
// A message is moved once, into the batch: boxing it would allocate per message.
#[allow(clippy::large_enum_variant)]
enum Read {
    /// A valid message, for the store.
    Message(Ingested),
    /// A malformed message, answered and dropped here.
    Dropped,
    /// Nothing waits.
    Empty,
}

impl Frontend {
    /// Binds (REQ nodes) or connects (PUB nodes), so an address problem fails at start.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        context: &zmq::Context,
        mode: Mode,
        bind: &str,
        connect: &[String],
        max_message: usize,
        curve: Option<&Curve>,
        status: Arc<HubStatus>,
        finish: Arc<AtomicBool>,
        count: Option<u64>,
    ) -> Result<(Frontend, Replies)> {
        let socket = match mode {
            Mode::Req => {
                let socket = context.socket(zmq::ROUTER)?;
                socket.set_maxmsgsize(max_message as i64)?;
                // The last replies get a second to leave when the hub exits.
                socket.set_linger(1000)?;
                if let Some(curve) = curve {
                    curve.secure(context, &socket, bind)?;
                }
                socket.bind(bind).with_context(|| {
                    format!("cannot bind the hub to {bind:?}: is another hub running on that port? use --bind tcp://*:PORT")
                })?;
                socket
            }
            Mode::Pub => {
                if connect.is_empty() {
                    bail!("a SUB hub needs at least one node to connect to: add --connect tcp://NODE:5555");
                }
                let socket = context.socket(zmq::SUB)?;
                socket.set_maxmsgsize(max_message as i64)?;
                socket.set_linger(0)?;
                socket.set_subscribe(b"")?;
                if let Some(curve) = curve {
                    curve.secure(context, &socket, &connect.join(", "))?;
                }
                for address in connect {
                    socket.connect(address).with_context(|| format!("cannot connect to node {address:?}"))?;
                }
                socket
            }
        };
        let (tx, replies) = mpsc::channel();
        let wake = Arc::new(Wake::new()?);
        let frontend = Frontend { socket, mode, replies, wake: wake.clone(), status, finish, count };
        Ok((frontend, Replies { tx, wake }))
    }

    /// Reads, stores and answers until finished; then, with the stage
    /// closed (so JetStream can finish), answers what JetStream still
    /// acknowledges until every [`Replies`] is gone.
    pub fn run(self, stage: Stage) {
        let mut stage = Some(stage);
        loop {
            if self.finish.load(Ordering::Relaxed) {
                stage = None;
            }
            let reading = stage.is_some() && self.below_count();
            let mut items = [self.socket.as_poll_item(if reading { zmq::POLLIN } else { zmq::PollEvents::empty() }), self.wake.poll_item()];
            match zmq::poll(&mut items, TICK_MS) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => {
                    warn!("the hub's frontend failed: {e}");
                    return;
                }
            }
            let (readable, woken) = (items[0].is_readable(), items[1].is_readable());
            if woken {
                self.wake.clear();
            }
            if !self.answer() && stage.is_none() {
                // The stage is closed and nothing else can answer.
                return;
            }
            if let (Some(stage), true) = (&mut stage, readable && reading) {
                let batch = self.read_batch();
                if !batch.is_empty() {
                    stage.take(batch, &mut |to, ok| self.reply(&to, if ok { OK } else { NOT_STORED }));
                }
            }
        }
    }

    /// Reads what waits, up to [`READ_BATCH`] messages and within `--count`.
    fn read_batch(&self) -> Vec<Ingested> {
        let mut batch = Vec::new();
        while batch.len() < READ_BATCH && self.below_count_with(batch.len()) {
            match self.read() {
                Read::Message(message) => batch.push(message),
                Read::Dropped => {}
                Read::Empty => break,
            }
        }
        batch
    }

    /// Whether reading one more message can stay within `--count`.
    fn below_count(&self) -> bool {
        self.below_count_with(0)
    }

    /// The same with `pending` messages read and not yet accepted.
    fn below_count_with(&self, pending: usize) -> bool {
        self.count.map_or(true, |count| self.status.messages.load(Ordering::Relaxed) + (pending as u64) < count)
    }

    /// Sends the replies waiting; false once no stage can send more.
    fn answer(&self) -> bool {
        loop {
            match self.replies.try_recv() {
                Ok((to, ok)) => self.reply(&to, if ok { OK } else { NOT_STORED }),
                Err(mpsc::TryRecvError::Empty) => return true,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn reply(&self, to: &[u8], text: &[u8]) {
        // A node that went away meanwhile: ROUTER drops the reply, as it should.
        let sent = self
            .socket
            .send(to, zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|()| self.socket.send(&[][..], zmq::SNDMORE | zmq::DONTWAIT))
            .and_then(|()| self.socket.send(text, zmq::DONTWAIT));
        if let Err(e) = sent {
            debug!("a reply was not sent: {e}");
        }
    }

    /// Reads one message, if one waits, and checks it.
    fn read(&self) -> Read {
        let mut frames = Vec::with_capacity(4);
        loop {
            let mut part = zmq::Message::new();
            match self.socket.recv(&mut part, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => return Read::Empty,
                Err(e) => {
                    debug!("receive failed: {e}");
                    return Read::Empty;
                }
            }
            let more = part.get_more();
            frames.push(Bytes::from_owner(Frame(part)));
            if !more {
                break;
            }
        }
        let received = crate::frame::unix_now();
        let reply_to = match self.mode {
            Mode::Req => {
                // ROUTER: routing id, the REQ's empty delimiter, then the message.
                let to = frames.remove(0);
                if frames.first().is_some_and(|f| f.is_empty()) {
                    frames.remove(0);
                } else {
                    bump(&self.status.bad);
                    warn!("dropped a message without a REQ envelope: only REQ sockets may send to this hub");
                    return Read::Dropped;
                }
                Some(to)
            }
            Mode::Pub => None,
        };
        if frames.first().is_some_and(|h| h.len() > MAX_HEADER) {
            return self.malformed(reply_to, &format!("its {}-byte header is longer than any imagezmq header", frames[0].len()));
        }
        match inspect(frames) {
            Ok(incoming) => Read::Message(Ingested { incoming, reply_to, received }),
            Err(reason) => self.malformed(reply_to, &reason),
        }
    }

    /// Answers and drops a malformed message, with one warning.
    fn malformed(&self, reply_to: Option<Bytes>, reason: &str) -> Read {
        bump(&self.status.bad);
        warn!("dropped a message: {reason}");
        if let Some(to) = reply_to {
            self.reply(&to, OK);
        }
        Read::Dropped
    }
}

/// A received ZeroMQ frame shared as `Bytes`, without a copy.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
