//! Frame-parallel encoding that still sends in capture order.
//!
//! A sent frame costs mostly its JPEG: at 1080p one encode takes tens of
//! times as long as motion detection, so one core caps the frame rate. With
//! `[encode] workers` above 1, each frame to send is copied into a recycled
//! [`FrameBuf`] and handed to the next free worker thread, each with its own
//! [`Encoder`]. Workers finish out of order, so every message that passes
//! through here gets a ticket (images and the event and notice messages
//! queued between them alike), and [`EncodePool::next_ready`] gives them back
//! strictly by ticket: the hub sees the same sequence as with one encoder.
//!
//! The copy is what lets the capture buffer go back to the camera at once; it
//! costs a few percent of an encode. With `workers = 1` frames are encoded
//! inline on the caller's thread: no copy, no hand-over, no extra memory.
//!
//! Frame buffers are fixed in number (one per worker plus one waiting, so a
//! worker that finishes starts its next frame at once). When every one is in
//! use, [`EncodePool::encode`] waits for a worker to finish: a camera then
//! drops frames at the source, as it would with a slow inline encoder, and
//! memory stays bounded. Nothing here allocates per frame once every buffer
//! has been used at the largest frame size.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use super::Encoder;
use crate::config::Format;
use crate::frame::{Frame, FrameBuf};
use crate::transport::Message;

/// The most workers `workers = 0` starts: no Pi has more cores, and each
/// worker keeps a frame buffer resident.
const AUTO_MAX_WORKERS: usize = 4;

/// Messages that can wait in order without the queue growing: images in
/// flight plus the few event messages queued between them.
const QUEUE_SLOTS: usize = 64;

/// The number of encoders a `[encode] workers` setting asks for: the value
/// itself, or for 0 one per CPU core this process may use, at most 4.
pub fn worker_count(setting: usize) -> usize {
    if setting > 0 {
        return setting;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(AUTO_MAX_WORKERS)
}

/// Encoders, inline or on worker threads, with in-order output.
pub struct EncodePool {
    mode: Mode,
    /// Messages in send order; `front` is the ticket of the first.
    queue: VecDeque<Slot>,
    front: u64,
    /// The first failure of a worker, reported by the next call.
    failure: Option<anyhow::Error>,
}

enum Mode {
    Inline(Encoder),
    Workers(Workers),
}

enum Slot {
    /// Waiting only for its turn.
    Ready(Message),
    /// With a worker.
    Encoding,
    /// Its encoding failed; the failure is reported, the slot skipped.
    Failed,
}

struct Workers {
    /// Closed on drop, which tells the workers to exit.
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    /// Frame buffers not with a worker.
    free: Vec<FrameBuf>,
    /// Frame buffers in all.
    buffers: usize,
    threads: Vec<JoinHandle<()>>,
}

struct Job {
    ticket: u64,
    frame: FrameBuf,
    message: Message,
}

struct Done {
    ticket: u64,
    frame: FrameBuf,
    message: Message,
    result: Result<()>,
}

impl EncodePool {
    /// `workers` encoders (1: inline on the caller's thread) for `format` at `quality`.
    pub fn new(workers: usize, format: Format, quality: u8) -> Result<Self> {
        let mode = if workers <= 1 {
            Mode::Inline(Encoder::new(format, quality)?)
        } else {
            Mode::Workers(Workers::start(workers, format, quality)?)
        };
        Ok(EncodePool { mode, queue: VecDeque::with_capacity(QUEUE_SLOTS), front: 0, failure: None })
    }

    /// Encoders running: 1 when inline.
    pub fn workers(&self) -> usize {
        match &self.mode {
            Mode::Inline(_) => 1,
            Mode::Workers(workers) => workers.threads.len(),
        }
    }

    /// Encodes `frame` into the payload of `message` (whose header is
    /// written), queued behind every message before it. With workers this
    /// returns once the frame is copied, waiting first if all are busy.
    pub fn encode(&mut self, frame: &Frame, mut message: Message) -> Result<()> {
        self.check()?;
        match &mut self.mode {
            Mode::Inline(encoder) => {
                encoder.encode(frame, &mut message.payload)?;
                self.queue.push_back(Slot::Ready(message));
            }
            Mode::Workers(workers) => {
                let mut buf = loop {
                    if let Some(buf) = workers.free.pop() {
                        break buf;
                    }
                    let done = workers.wait()?;
                    settle(&mut self.queue, self.front, workers, &mut self.failure, done);
                };
                buf.copy_from(frame);
                let ticket = self.front + self.queue.len() as u64;
                self.queue.push_back(Slot::Encoding);
                let job = Job { ticket, frame: buf, message };
                let jobs = workers.jobs.as_ref().expect("the job queue closes only on drop");
                // The queue holds as many jobs as there are buffers, so this never waits.
                if jobs.send(job).is_err() {
                    return Err(anyhow!("the encoder workers have stopped"));
                }
            }
        }
        Ok(())
    }

    /// Queues a message that needs no encoding behind every message before it.
    pub fn pass(&mut self, message: Message) {
        self.queue.push_back(Slot::Ready(message));
    }

    /// The next message in send order, if it is ready; never waits.
    pub fn next_ready(&mut self) -> Option<Message> {
        if let Mode::Workers(workers) = &mut self.mode {
            while let Ok(done) = workers.done.try_recv() {
                settle(&mut self.queue, self.front, workers, &mut self.failure, done);
            }
        }
        loop {
            match self.queue.front()? {
                Slot::Encoding => return None,
                Slot::Ready(_) | Slot::Failed => {}
            }
            self.front += 1;
            if let Some(Slot::Ready(message)) = self.queue.pop_front() {
                return Some(message);
            }
        }
    }

    /// Waits until every frame handed over is encoded; their messages are
    /// then ready. Reports a worker's failure.
    pub fn flush(&mut self) -> Result<()> {
        if let Mode::Workers(workers) = &mut self.mode {
            while workers.free.len() < workers.buffers {
                let done = workers.wait()?;
                settle(&mut self.queue, self.front, workers, &mut self.failure, done);
            }
        }
        self.check()
    }

    fn check(&mut self) -> Result<()> {
        self.failure.take().map_or(Ok(()), Err)
    }
}

/// Files a finished job: its buffer back to the free list, its message into
/// its slot.
fn settle(queue: &mut VecDeque<Slot>, front: u64, workers: &mut Workers, failure: &mut Option<anyhow::Error>, done: Done) {
    workers.free.push(done.frame);
    let slot = &mut queue[(done.ticket - front) as usize];
    match done.result {
        Ok(()) => *slot = Slot::Ready(done.message),
        Err(e) => {
            *slot = Slot::Failed;
            failure.get_or_insert(e);
        }
    }
}

impl Workers {
    fn start(count: usize, format: Format, quality: u8) -> Result<Workers> {
        // One buffer per worker and one waiting, so a worker never idles
        // while the next frame is copied.
        let buffers = count + 1;
        let (jobs, job_rx) = sync_channel::<Job>(buffers);
        let (done_tx, done) = sync_channel::<Done>(buffers);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let encoder = Encoder::new(format, quality)?;
            let (job_rx, done_tx) = (job_rx.clone(), done_tx.clone());
            let thread = std::thread::Builder::new()
                .name(format!("encode-{index}"))
                .spawn(move || work(encoder, &job_rx, &done_tx))
                .context("cannot start an encoder worker thread")?;
            threads.push(thread);
        }
        let free = (0..buffers).map(|_| FrameBuf::default()).collect();
        Ok(Workers { jobs: Some(jobs), done, free, buffers, threads })
    }

    /// The next finished job, waiting for one.
    fn wait(&self) -> Result<Done> {
        // Every worker holds a sender: this fails only when all have exited.
        self.done.recv().map_err(|_| anyhow!("the encoder workers have stopped"))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs = None;
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A worker: encode jobs until the queue closes.
fn work(mut encoder: Encoder, jobs: &Mutex<Receiver<Job>>, done: &SyncSender<Done>) {
    loop {
        // Idle workers queue on the lock; the one holding it takes the next job.
        let job = jobs.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Job { ticket, frame, mut message }) = job else { return };
        // A panic is turned into an error so that the caller, waiting for
        // this job, hears of it instead of waiting forever.
        let result = catch_unwind(AssertUnwindSafe(|| encoder.encode(&frame.as_frame(), &mut message.payload)))
            .unwrap_or_else(|_| Err(anyhow!("an encoder worker panicked on frame {}", frame.seq)));
        if done.send(Done { ticket, frame, message, result }).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{FrameSource, Synthetic};
    use crate::transport::wire::OutHeader;
    use crate::transport::MessageKind;

    fn message(kind: MessageKind, seq: u64) -> Message {
        let header = OutHeader { msg: "n v|jpg", dtype: None, shape: None, node: "n", boot: 1, seq, ts: 0.0, score: None, boxes: &[] };
        Message::new(kind, &header, Vec::new(), Vec::new())
    }

    fn seq_of(message: &Message) -> u64 {
        crate::transport::wire::parse_header(&message.header).unwrap().seq.unwrap()
    }

    /// Frames of two sizes, so that workers finish out of order, with an
    /// event message after every third: returns (kind, seq, payload) in the
    /// order the pool released them.
    fn run(workers: usize) -> Vec<(MessageKind, u64, Vec<u8>)> {
        let mut pool = EncodePool::new(workers, Format::Jpg, 90).unwrap();
        assert_eq!(pool.workers(), workers);
        let mut big = Synthetic::new(640, 480, 1);
        let mut small = Synthetic::new(64, 48, 2);
        let mut out = Vec::new();
        let mut collect = |pool: &mut EncodePool| {
            while let Some(m) = pool.next_ready() {
                out.push((m.kind, seq_of(&m), m.payload));
            }
        };
        for seq in 0..30 {
            let source: &mut Synthetic = if seq % 2 == 0 { &mut big } else { &mut small };
            let frame = source.next_frame().unwrap().unwrap();
            pool.encode(&frame, message(MessageKind::Image, seq)).unwrap();
            if seq % 3 == 2 {
                pool.pass(message(MessageKind::Event, seq));
            }
            collect(&mut pool);
        }
        pool.flush().unwrap();
        collect(&mut pool);
        assert!(pool.next_ready().is_none());
        out
    }

    #[test]
    fn workers_release_in_order_what_one_encoder_makes() {
        let inline = run(1);
        let parallel = run(3);
        let order: Vec<_> = parallel.iter().map(|(kind, seq, _)| (*kind, *seq)).collect();
        let mut expected = Vec::new();
        for seq in 0..30 {
            expected.push((MessageKind::Image, seq));
            if seq % 3 == 2 {
                expected.push((MessageKind::Event, seq));
            }
        }
        assert_eq!(order, expected);
        // Same frames, same settings: byte for byte the same JPEGs.
        assert!(inline.iter().zip(&parallel).all(|(a, b)| a == b));
        let (_, _, jpeg) = &parallel[0];
        assert_eq!(turbojpeg::read_header(jpeg).unwrap().width, 640);
    }

    #[test]
    fn a_message_waits_for_the_image_before_it() {
        let mut pool = EncodePool::new(2, Format::Jpg, 90).unwrap();
        let mut scene = Synthetic::new(320, 240, 1);
        pool.encode(&scene.next_frame().unwrap().unwrap(), message(MessageKind::Image, 0)).unwrap();
        pool.pass(message(MessageKind::Event, 1));
        // However fast the worker is, the event never overtakes the image.
        let first = pool.next_ready().map(|m| m.kind);
        assert!(matches!(first, None | Some(MessageKind::Image)), "{first:?}");
        pool.flush().unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| pool.next_ready()).map(|m| m.kind).collect();
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        assert_eq!(all, vec![MessageKind::Image, MessageKind::Event]);
    }

    #[test]
    fn zero_means_one_worker_per_core() {
        assert_eq!(worker_count(3), 3);
        let auto = worker_count(0);
        assert!((1..=AUTO_MAX_WORKERS).contains(&auto), "{auto}");
    }
}
