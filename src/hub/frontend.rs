//! The frontend: the socket nodes talk to, on a thread of its own.
//!
//! For REQ nodes it binds a ROUTER, so that it serves many nodes at once
//! instead of one REP in lock step: each request arrives with the routing id
//! of its node, and the reply can go back whenever the message is safe,
//! after requests of other nodes. A REQ node has one request out at a
//! time, so the hub holds at most one message per node it has not
//! answered. For PUB nodes it connects a SUB socket; nothing is answered.
//!
//! Each message is checked here ([`inspect`](super::inspect)): a malformed
//! one is answered `OK` at once (sending it again cannot help) with one
//! warning, and goes no further. Valid ones go to the store stage through
//! the bounded ingest queue. When that queue is full the frontend stops
//! reading: the next requests wait in ZeroMQ and TCP, the nodes' replies
//! are late, and their event frames go to their spools, but nothing the hub
//! acknowledged is dropped. Replies come back from the store stage (or
//! JetStream) through [`Replies`] and go out on the same thread, since a
//! ZeroMQ socket belongs to one thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use log::{debug, warn};

use super::inspect::{inspect, Incoming};
use super::status::{bump, HubStatus};
use super::wake::Wake;
use crate::transport::security::Curve;
use crate::transport::Mode;

/// A checked message on its way to the store, with whom to answer.
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

/// Where the stages send the nodes' replies; cheap to clone, usable from any thread.
#[derive(Clone)]
pub(crate) struct Replies {
    tx: mpsc::Sender<(Bytes, bool)>,
    wake: Arc<Wake>,
}

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

    /// Reads until finished, feeding `ingest`; then answers what the stages
    /// still settle until every [`Replies`] is gone.
    pub fn run(self, ingest: SyncSender<Ingested>) {
        let mut ingest = Some(ingest);
        // A message read while the ingest queue was full: it goes first.
        let mut held: Option<Ingested> = None;
        loop {
            if self.finish.load(Ordering::Relaxed) {
                // Closing the queue lets the store finish its last batch; a
                // message held back is not answered, so its node sends it again.
                ingest = None;
                if held.take().is_some() {
                    self.status.ingest_depth.fetch_sub(1, Ordering::Relaxed);
                }
            }
            if let (Some(tx), Some(item)) = (&ingest, held.take()) {
                match tx.try_send(item) {
                    Ok(()) => {}
                    Err(TrySendError::Full(item)) => held = Some(item),
                    Err(TrySendError::Disconnected(_)) => ingest = None,
                }
            }
            let reading = ingest.is_some() && held.is_none() && self.below_count();
            let mut items = [self.socket.as_poll_item(if reading { zmq::POLLIN } else { zmq::PollEvents::empty() }), self.wake.poll_item()];
            // While held, look again soon: the store takes a batch at a time.
            let timeout = if held.is_some() { 5 } else { TICK_MS };
            match zmq::poll(&mut items, timeout) {
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
            if !self.answer() && ingest.is_none() {
                // Every stage is done and has nothing more to answer.
                return;
            }
            if readable && reading {
                held = self.read();
            }
        }
    }

    /// Whether reading one more message can stay within `--count`.
    fn below_count(&self) -> bool {
        self.count.map_or(true, |count| {
            self.status.messages.load(Ordering::Relaxed) + self.status.ingest_depth.load(Ordering::Relaxed) < count
        })
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

    /// Reads one message; returns it checked, or `None` when it was
    /// malformed (and answered) or nothing was there.
    fn read(&self) -> Option<Ingested> {
        let mut frames = Vec::with_capacity(4);
        loop {
            let mut part = zmq::Message::new();
            match self.socket.recv(&mut part, zmq::DONTWAIT) {
                Ok(()) => {}
                Err(zmq::Error::EAGAIN) => return None,
                Err(e) => {
                    debug!("receive failed: {e}");
                    return None;
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
                    return None;
                }
                Some(to)
            }
            Mode::Pub => None,
        };
        if frames.first().is_some_and(|h| h.len() > MAX_HEADER) {
            return self.malformed(reply_to, &format!("its {}-byte header is longer than any imagezmq header", frames[0].len()));
        }
        match inspect(frames) {
            Ok(incoming) => {
                self.status.ingest_depth.fetch_add(1, Ordering::Relaxed);
                Some(Ingested { incoming, reply_to, received })
            }
            Err(reason) => self.malformed(reply_to, &reason),
        }
    }

    /// Answers and drops a malformed message, with one warning.
    fn malformed(&self, reply_to: Option<Bytes>, reason: &str) -> Option<Ingested> {
        bump(&self.status.bad);
        warn!("dropped a message: {reason}");
        if let Some(to) = reply_to {
            self.reply(&to, OK);
        }
        None
    }
}

/// A received ZeroMQ frame shared as `Bytes`, without a copy.
struct Frame(zmq::Message);

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}
