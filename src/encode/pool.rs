//! Frame-parallel encoding that still sends in capture order.
//!
//! A sent frame costs mostly its JPEG: at 1080p one encode takes ten times
//! as long as motion detection, so one core caps the frame rate. With
//! `[encode] workers` above 1, each frame to send goes, in a buffer of its
//! own (an owned frame's, or a spare a lent one is copied into), to the next
//! free worker thread, each with its own [`Encoder`]. Workers
//! finish out of order, so every message that passes through here gets a
//! ticket (images and the event and notice messages queued between them
//! alike), and [`EncodePool::next_ready`] gives them back strictly by ticket:
//! the hub sees the same sequence as with one encoder.
//!
//! Copying a camera's frame is what lets its buffer go back to the driver at
//! once; it costs a few percent of an encode. With `workers = 1` frames are
//! encoded inline on the caller's thread: no hand-over, no extra memory.
//!
//! At most one frame per worker, plus one waiting for the next free worker,
//! is in the pool (3 MB each at 1080p); beyond that,
//! [`EncodePool::encode`] waits for one to finish: a camera
//! then drops frames at the source, as it would with a slow inline encoder,
//! and memory stays bounded. Buffers come from the pipeline's [`Spares`] and
//! go back there once encoded, so nothing here allocates per frame.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::Encoder;
use super::Format;
use crate::frame::{Captured, FrameBuf, Spares};
use crate::queue::{Queue, TryPop};
use crate::stats::thread_cpu_time;
use crate::transport::Message;

/// The most workers `workers = 0` starts: no Pi has more cores, and each
/// worker holds a frame (3 MB at 1080p) while it encodes.
const AUTO_MAX_WORKERS: usize = 4;

/// Frames handed over beyond one per worker: the next frame already waits
/// when a worker finishes, which takes it at once instead of idling until
/// the main loop wakes to hand one over. With two workers on two cores this
/// raised frames/s on vtest 1080p in 15 of 15 paired runs, by 16 % on
/// average; a second waiting frame did not help.
const FRAMES_WAITING: usize = 1;

/// Images per worker that may wait for their turn. Workers finish out of
/// order, and one that the OS holds back (two cores shared with the main
/// loop, the sender and libzmq) holds back every message behind its frame:
/// past this many, the next frame waits for that worker instead of piling
/// up more messages, each of which holds a payload buffer.
const WAITING_PER_WORKER: usize = 4;

/// Room in the queue for the waiting images plus the event messages queued
/// between them, so that it never grows.
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
    /// JPEG quality; each job carries it to its worker.
    quality: u8,
    /// Messages in send order; `front` is the ticket of the first.
    queue: VecDeque<Slot>,
    front: u64,
    /// The first failure of a worker, reported by the next call.
    failure: Option<anyhow::Error>,
}

enum Mode {
    /// With the CPU time it spent encoding.
    Inline(Encoder, Duration),
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
    jobs: Arc<Queue<Job>>,
    /// Closed when the last worker has exited.
    done: Arc<Queue<Done>>,
    /// Frames handed over and not yet back.
    in_flight: usize,
    /// CPU time the workers spent on the frames that came back.
    cpu: Duration,
    threads: Vec<JoinHandle<()>>,
}

struct Job {
    ticket: u64,
    frame: FrameBuf,
    message: Message,
    quality: u8,
}

struct Done {
    ticket: u64,
    frame: FrameBuf,
    message: Message,
    result: Result<()>,
    /// The worker's CPU time for this frame.
    cpu: Duration,
}

impl EncodePool {
    /// `workers` encoders (1: inline on the caller's thread) for `format` at `quality`.
    pub fn new(workers: usize, format: Format, quality: u8) -> Result<Self> {
        let mode = if workers <= 1 {
            Mode::Inline(Encoder::new(format, quality)?, Duration::ZERO)
        } else {
            Mode::Workers(Workers::start(workers, format, quality)?)
        };
        Ok(EncodePool { mode, quality, queue: VecDeque::with_capacity(QUEUE_SLOTS), front: 0, failure: None })
    }

    /// Sets the JPEG quality of the frames handed over from now on (a reload).
    pub fn set_quality(&mut self, quality: u8) -> Result<()> {
        if let Mode::Inline(encoder, _) = &mut self.mode {
            encoder.set_quality(quality)?;
        }
        self.quality = quality;
        Ok(())
    }

    /// The most messages this pool holds at once, besides event messages
    /// passed between images: what the pipeline stocks buffers for.
    pub fn most_messages(&self) -> usize {
        match &self.mode {
            Mode::Inline(..) => 1,
            Mode::Workers(workers) => WAITING_PER_WORKER * workers.threads.len() + 1,
        }
    }

    /// The most frames handed over at once (inline: the one being encoded),
    /// each in a buffer of its own: what the pipeline stocks spares for.
    pub fn most_frames(&self) -> usize {
        match &self.mode {
            Mode::Inline(..) => 1,
            Mode::Workers(workers) => workers.most_in_flight(),
        }
    }

    /// CPU time spent encoding so far, on every encoder's thread, of the
    /// frames whose encoding has finished: with the process's CPU time, it
    /// tells how much of it camnode spends besides encoding.
    pub fn cpu_time(&self) -> Duration {
        match &self.mode {
            Mode::Inline(_, cpu) => *cpu,
            Mode::Workers(workers) => workers.cpu,
        }
    }

    /// Encoders running: 1 when inline.
    pub fn workers(&self) -> usize {
        match &self.mode {
            Mode::Inline(..) => 1,
            Mode::Workers(workers) => workers.threads.len(),
        }
    }

    /// Encodes `frame` into the payload of `message` (whose header is
    /// written), queued behind every message before it. With workers this
    /// returns once the frame is handed over, waiting first if all are busy;
    /// an owned frame leaves with its buffer.
    pub fn encode(&mut self, frame: &mut Captured, mut message: Message, spares: &mut Spares) -> Result<()> {
        self.check()?;
        match &mut self.mode {
            Mode::Inline(encoder, cpu) => {
                let started = thread_cpu_time();
                let encoded = encoder.encode(&frame.frame(), &mut message.payload);
                *cpu += thread_cpu_time() - started;
                encoded?;
                self.queue.push_back(Slot::Ready(message));
            }
            Mode::Workers(workers) => {
                // A lent frame is copied into a spare: past the limit of
                // buffers, the next one back.
                let lent = matches!(frame, Captured::Lent(_));
                let most_waiting = WAITING_PER_WORKER * workers.threads.len();
                while workers.in_flight == workers.most_in_flight()
                    || (lent && spares.must_wait() && workers.in_flight > 0)
                    || (self.queue.len() >= most_waiting && matches!(self.queue.front(), Some(Slot::Encoding)))
                {
                    let done = workers.wait()?;
                    settle(&mut self.queue, self.front, workers, spares, &mut self.failure, done);
                }
                let ticket = self.front + self.queue.len() as u64;
                self.queue.push_back(Slot::Encoding);
                workers.in_flight += 1;
                workers.jobs.push(Job { ticket, frame: frame.keep(spares), message, quality: self.quality });
            }
        }
        Ok(())
    }

    /// Queues a message that needs no encoding behind every message before it.
    pub fn pass(&mut self, message: Message) {
        self.queue.push_back(Slot::Ready(message));
    }

    /// The next message in send order, if it is ready; never waits.
    pub fn next_ready(&mut self, spares: &mut Spares) -> Option<Message> {
        if let Mode::Workers(workers) = &mut self.mode {
            while let TryPop::Item(done) = workers.done.try_pop() {
                settle(&mut self.queue, self.front, workers, spares, &mut self.failure, done);
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
    pub fn flush(&mut self, spares: &mut Spares) -> Result<()> {
        if let Mode::Workers(workers) = &mut self.mode {
            while workers.in_flight > 0 {
                let done = workers.wait()?;
                settle(&mut self.queue, self.front, workers, spares, &mut self.failure, done);
            }
        }
        self.check()
    }

    /// Waits for one frame being encoded, if any, whose buffer then is a
    /// spare. False when none was.
    pub fn wait_one(&mut self, spares: &mut Spares) -> Result<bool> {
        let Mode::Workers(workers) = &mut self.mode else { return Ok(false) };
        if workers.in_flight == 0 {
            return Ok(false);
        }
        let done = workers.wait()?;
        settle(&mut self.queue, self.front, workers, spares, &mut self.failure, done);
        Ok(true)
    }

    fn check(&mut self) -> Result<()> {
        self.failure.take().map_or(Ok(()), Err)
    }
}

/// Files a finished job: its buffer back to the spares, its message into its
/// slot.
fn settle(queue: &mut VecDeque<Slot>, front: u64, workers: &mut Workers, spares: &mut Spares, failure: &mut Option<anyhow::Error>, done: Done) {
    workers.in_flight -= 1;
    workers.cpu += done.cpu;
    spares.give(done.frame);
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
        // Room in both for every frame that may be handed over at once, so
        // that a push never waits nor grows the ring: all of them can be
        // waiting for a worker, or all finished before the main loop
        // collects any.
        let jobs = Arc::new(Queue::new(most_in_flight(count), 1));
        let done = Arc::new(Queue::new(most_in_flight(count), count));
        let mut threads = Vec::with_capacity(count);
        for index in 0..count {
            let encoder = Encoder::new(format, quality)?;
            let (jobs, done) = (jobs.clone(), done.clone());
            let thread = std::thread::Builder::new()
                .name(format!("encode-{index}"))
                .spawn(move || work(encoder, quality, &jobs, &done))
                .context("cannot start an encoder worker thread")?;
            threads.push(thread);
        }
        Ok(Workers { jobs, done, in_flight: 0, cpu: Duration::ZERO, threads })
    }

    fn most_in_flight(&self) -> usize {
        most_in_flight(self.threads.len())
    }

    /// The next finished job, waiting for one.
    fn wait(&self) -> Result<Done> {
        self.done.pop().ok_or_else(|| anyhow!("the encoder workers have stopped"))
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.jobs.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Frames `workers` encoders may hold at once: one each, and one waiting.
fn most_in_flight(workers: usize) -> usize {
    workers + FRAMES_WAITING
}

/// A worker: encode jobs until the queue closes.
fn work(mut encoder: Encoder, mut quality: u8, jobs: &Queue<Job>, done: &Queue<Done>) {
    // However this thread ends, the pool must hear of it, not wait forever.
    struct Leaving<'a>(&'a Queue<Done>);
    impl Drop for Leaving<'_> {
        fn drop(&mut self) {
            self.0.close();
        }
    }
    let _leaving = Leaving(done);
    while let Some(Job { ticket, frame, mut message, quality: wanted }) = jobs.pop() {
        let started = thread_cpu_time();
        let tuned = if wanted == quality { Ok(()) } else { encoder.set_quality(wanted) };
        quality = wanted;
        // A panic becomes an error, reported by the pool's next call.
        let result = tuned.and_then(|()| {
            catch_unwind(AssertUnwindSafe(|| encoder.encode(&frame.as_frame(), &mut message.payload)))
                .unwrap_or_else(|_| Err(anyhow!("an encoder worker panicked on frame {}", frame.seq)))
        });
        done.push(Done { ticket, frame, message, result, cpu: thread_cpu_time() - started });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

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
        let process_cpu_before = crate::stats::resource_usage().0;
        let mut pool = EncodePool::new(workers, Format::Jpg, 90).unwrap();
        assert_eq!(pool.workers(), workers);
        let mut spares = Spares::new(4, 0);
        let mut big = Synthetic::new(640, 480, 1);
        let mut small = Synthetic::new(64, 48, 2);
        let mut out = Vec::new();
        let mut collect = |pool: &mut EncodePool, spares: &mut Spares| {
            while let Some(m) = pool.next_ready(spares) {
                out.push((m.kind, seq_of(&m), m.payload));
            }
        };
        for seq in 0..30 {
            let source: &mut Synthetic = if seq % 2 == 0 { &mut big } else { &mut small };
            let frame = source.next_frame().unwrap().unwrap();
            pool.encode(&mut Captured::Lent(frame), message(MessageKind::Image, seq), &mut spares).unwrap();
            if seq % 3 == 2 {
                pool.pass(message(MessageKind::Event, seq));
            }
            collect(&mut pool, &mut spares);
        }
        pool.flush(&mut spares).unwrap();
        collect(&mut pool, &mut spares);
        assert!(pool.next_ready(&mut spares).is_none());
        // Every encoder's time is counted, and none that the process did not spend.
        let encoding = pool.cpu_time().as_secs_f64();
        let process = crate::stats::resource_usage().0 - process_cpu_before;
        assert!(encoding > 0.0 && encoding <= process + 0.001, "{workers} workers: encoding {encoding} s of {process} s");
        out
    }

    #[test]
    fn every_frame_handed_over_can_finish_before_any_is_collected() {
        let mut pool = EncodePool::new(2, Format::Jpg, 90).unwrap();
        let mut spares = Spares::new(4, 0);
        let most = pool.most_frames() as u64;
        let mut scene = Synthetic::new(64, 48, 1);
        for seq in 0..most {
            let frame = scene.next_frame().unwrap().unwrap();
            pool.encode(&mut Captured::Lent(frame), message(MessageKind::Image, seq), &mut spares).unwrap();
        }
        // The main loop busy elsewhere: every worker finishes, nothing is collected.
        let Mode::Workers(workers) = &pool.mode else { unreachable!("two workers run on threads") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while workers.done.waiting() < most as usize {
            assert!(workers.threads.iter().all(|thread| !thread.is_finished()), "a worker died");
            assert!(Instant::now() < deadline, "the workers did not finish {most} frames in 30 s");
            std::thread::yield_now();
        }
        pool.flush(&mut spares).unwrap();
        let seqs: Vec<u64> = std::iter::from_fn(|| pool.next_ready(&mut spares)).map(|m| seq_of(&m)).collect();
        assert_eq!(seqs, (0..most).collect::<Vec<_>>());
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
        let (mut pool, mut spares) = (EncodePool::new(2, Format::Jpg, 90).unwrap(), Spares::new(4, 0));
        let mut scene = Synthetic::new(320, 240, 1);
        let mut owned = FrameBuf::default();
        scene.next_frame_into(&mut owned).unwrap().unwrap();
        let pixels = owned.data.as_ptr();
        pool.encode(&mut Captured::Owned(&mut owned), message(MessageKind::Image, 0), &mut spares).unwrap();
        assert_eq!(owned.data.heap_capacity(), 0, "the worker has the frame's buffer");
        pool.pass(message(MessageKind::Event, 1));
        // However fast the worker is, the event never overtakes the image.
        let first = pool.next_ready(&mut spares).map(|m| m.kind);
        assert!(matches!(first, None | Some(MessageKind::Image)), "{first:?}");
        pool.flush(&mut spares).unwrap();
        let rest: Vec<_> = std::iter::from_fn(|| pool.next_ready(&mut spares)).map(|m| m.kind).collect();
        let all: Vec<_> = first.into_iter().chain(rest).collect();
        assert_eq!(all, vec![MessageKind::Image, MessageKind::Event]);
        // Encoded, the buffer is a spare again.
        assert_eq!(spares.take().data.as_ptr(), pixels);
    }

    #[test]
    fn zero_means_one_worker_per_core() {
        assert_eq!(worker_count(3), 3);
        let auto = worker_count(0);
        assert!((1..=AUTO_MAX_WORKERS).contains(&auto), "{auto}");
    }
}
