//! The dispatch queue: images the hub has acknowledged (or taken from
//! JetStream) that wait in memory for a free worker. Bounded by bytes
//! (`[hub] queue_mb`): when it is full, [`DispatchQueue::push`] waits, the
//! store stops taking messages, and the frontend stops reading from nodes,
//! so nothing acknowledged is ever dropped for lack of room. Without
//! `--save` or `--nats`, what waits here is the only copy: a hub that crashes
//! loses it (the nodes have their OK already), which docs/hub.md says.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use super::status::HubStatus;
use super::wake::Wake;

/// One image on its way to a worker.
pub struct Work {
    /// Header and payload exactly as the node sent them.
    pub header: Bytes,
    pub payload: Bytes,
    /// The message text, for log lines.
    pub msg: String,
    /// Hand-overs that failed so far (timeouts, lost connections).
    pub failures: u32,
    /// Called once: when a worker replied, or when the image was given up.
    pub done: Option<Done>,
}

/// What became of an image, told to whoever needs to know (JetStream's acknowledgement).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Processed,
    Abandoned,
}

pub type Done = Box<dyn FnOnce(Outcome) + Send>;

impl Work {
    pub fn finish(mut self, outcome: Outcome) {
        if let Some(done) = self.done.take() {
            done(outcome);
        }
    }
}

struct State {
    items: VecDeque<Work>,
    bytes: usize,
    /// No more pushes: the hub is draining or stopping.
    closed: bool,
}

pub struct DispatchQueue {
    state: Mutex<State>,
    room: Condvar,
    limit: usize,
    /// Wakes the dispatcher, which waits in `zmq::poll`.
    pub(crate) wake: Wake,
    status: Arc<HubStatus>,
}

/// How often a waiting producer looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(100);

impl DispatchQueue {
    pub fn new(limit_bytes: usize, status: Arc<HubStatus>) -> std::io::Result<DispatchQueue> {
        Ok(DispatchQueue {
            state: Mutex::new(State { items: VecDeque::new(), bytes: 0, closed: false }),
            room: Condvar::new(),
            limit: limit_bytes,
            wake: Wake::new()?,
            status,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an image, waiting while the queue is full. Gives it back if
    /// the queue closed or `stop` was set meanwhile.
    pub fn push(&self, work: Work, stop: &AtomicBool) -> Result<(), Work> {
        let size = work.payload.len() + work.header.len();
        let mut state = self.lock();
        // An image larger than the whole queue still goes through, alone.
        while !state.closed && state.bytes > 0 && state.bytes + size > self.limit {
            if stop.load(Ordering::Relaxed) {
                return Err(work);
            }
            state = self.room.wait_timeout(state, STOP_CHECK).unwrap_or_else(|e| e.into_inner()).0;
        }
        if state.closed {
            return Err(work);
        }
        state.bytes += size;
        state.items.push_back(work);
        self.publish(&state);
        drop(state);
        self.wake.wake();
        Ok(())
    }

    /// Whether `bytes` more would fit now (JetStream's consumer asks before fetching).
    pub fn has_room(&self, bytes: usize) -> bool {
        let state = self.lock();
        state.bytes == 0 || state.bytes + bytes <= self.limit
    }

    /// The oldest image, for the dispatcher.
    pub(crate) fn pop(&self) -> Option<Work> {
        let mut state = self.lock();
        let work = state.items.pop_front()?;
        state.bytes -= work.payload.len() + work.header.len();
        self.publish(&state);
        drop(state);
        self.room.notify_all();
        Some(work)
    }

    /// An image whose worker failed goes first again: it waited longest.
    /// Never refused, even when closed or full: it was accepted before.
    pub(crate) fn push_front(&self, work: Work) {
        let mut state = self.lock();
        state.bytes += work.payload.len() + work.header.len();
        state.items.push_front(work);
        self.publish(&state);
    }

    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }

    /// Refuses further pushes; what is queued stays for the dispatcher.
    pub fn close(&self) {
        self.lock().closed = true;
        self.room.notify_all();
        self.wake.wake();
    }

    /// Takes everything out, for the count of what was never handed on.
    pub(crate) fn drain(&self) -> Vec<Work> {
        let mut state = self.lock();
        state.bytes = 0;
        let items = state.items.drain(..).collect();
        self.publish(&state);
        items
    }

    fn publish(&self, state: &State) {
        self.status.dispatch_depth.store(state.items.len() as u64, Ordering::Relaxed);
        self.status.dispatch_bytes.store(state.bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(size: usize) -> Work {
        Work { header: Bytes::new(), payload: Bytes::from(vec![0; size]), msg: String::new(), failures: 0, done: None }
    }

    #[test]
    fn a_full_queue_waits_and_a_stop_gives_the_image_back() {
        let status = Arc::new(HubStatus::new(&[]));
        let queue = DispatchQueue::new(100, status.clone()).unwrap();
        let stop = AtomicBool::new(false);
        assert!(queue.push(work(60), &stop).is_ok());
        assert!(!queue.has_room(60));
        stop.store(true, Ordering::Relaxed);
        assert!(queue.push(work(60), &stop).is_err(), "a full queue took more than its limit");
        assert_eq!(status.dispatch_bytes.load(Ordering::Relaxed), 60);
        let first = queue.pop().unwrap();
        queue.push_front(first);
        assert_eq!(queue.pop().map(|w| w.payload.len()), Some(60));
        assert!(queue.is_empty() && queue.has_room(1000), "an empty queue takes an image of any size");
    }
}
