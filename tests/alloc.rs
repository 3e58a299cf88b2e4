//! No heap allocation per frame in the steady state.
//!
//! A counting global allocator wraps the system one and counts every
//! allocation and reallocation, in every thread of this process. The
//! pipeline runs in-process on the synthetic scene (so events start and end,
//! pre-event frames go out, the detector, encoder and sender all work) and
//! sends to a real `camnode hub` over REQ. The hub starts only after a
//! hundred frames, as after a power cut: the send queue fills and overflows
//! first, so every buffer the node will ever need exists early. Two motion
//! cycles after the hub's first reply a window opens; the count is read as
//! it opens and four cycles later as it closes. In between, the whole node
//! (main loop, encoder workers, sender thread) must not have allocated at
//! all, with frames drawn into its own buffers, lent by the source, or
//! mapped from a Y4M file. libzmq and libjpeg-turbo manage their own memory in C, outside
//! this allocator.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use camnode::capture::{FrameSource, Synthetic, Y4mReader};
use camnode::capture::Rate;
use camnode::config::Config;
use camnode::encode::SendPolicy;
use camnode::flip::Flip;
use camnode::frame::{Frame, FrameBuf};
use camnode::pipeline::Pipeline;
use camnode::status::NodeStatus;
use support::{camnode, free_port, Proc};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
/// Set while the window is open: the first allocation in it records where
/// it came from, so that a failure says what allocated, on which thread.
static WINDOW_OPEN: AtomicBool = AtomicBool::new(false);
static FIRST_IN_WINDOW: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Taking a backtrace allocates: those allocations are neither counted nor recorded.
    static RECORDING: Cell<bool> = const { Cell::new(false) };
}

fn counted() {
    if RECORDING.get() {
        return;
    }
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    if WINDOW_OPEN.load(Ordering::Relaxed) {
        RECORDING.set(true);
        let mut first = FIRST_IN_WINDOW.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
            *first = Some(format!("thread {thread}:\n{}", Backtrace::force_capture()));
        }
        drop(first);
        RECORDING.set(false);
    }
}

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Frames per cycle of the synthetic scene (still, then an object crossing).
const CYCLE: u64 = 120;
/// The frame at which the hub starts: after the first event's frames have
/// overflowed the send queue.
const HUB_UP: u64 = 100;
/// Frames from the hub's first reply to the window: every buffer has grown
/// to its working size.
const WARMUP: u64 = 2 * CYCLE;
/// Frames in the window: four motion events, start to end.
const WINDOW: u64 = 4 * CYCLE;

/// A scene, put into the pipeline's buffers (`owned`: drawn into them, or
/// pointed at a mapped file) or lent. It asks for the hub at frame
/// `HUB_UP`, holds the next frame back until the hub has answered (so a
/// file scene has frames enough), reads the allocation count at the start
/// and the end of the window, and ends the stream soon after.
struct Watched {
    scene: Box<dyn FrameSource>,
    owned: bool,
    seq: u64,
    status: Arc<NodeStatus>,
    start_hub: Sender<()>,
    /// The first frame of the window, once the hub has replied.
    window: Option<u64>,
    counts: Arc<[AtomicU64; 2]>,
}

impl Watched {
    /// Bookkeeping before frame `seq`; false once the stream should end.
    fn before_frame(&mut self) -> bool {
        let seq = self.seq;
        self.seq += 1;
        if seq == HUB_UP {
            self.start_hub.send(()).unwrap();
        }
        if seq == HUB_UP + 1 {
            // The node's status has no signal to wait on; the sender thread
            // sets the flag on the hub's first reply.
            while !self.status.snapshot().hub_reachable {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            self.window = Some(seq + WARMUP);
        }
        let Some(start) = self.window else { return true };
        let count = || ALLOCATIONS.load(Ordering::SeqCst);
        if seq == start {
            self.counts[0].store(count(), Ordering::SeqCst);
            WINDOW_OPEN.store(true, Ordering::SeqCst);
        } else if seq == start + WINDOW {
            WINDOW_OPEN.store(false, Ordering::SeqCst);
            self.counts[1].store(count(), Ordering::SeqCst);
        }
        seq < start + WINDOW + 10
    }
}

impl FrameSource for Watched {
    fn size(&self) -> (usize, usize) {
        self.scene.size()
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if !self.before_frame() {
            return Ok(None);
        }
        self.scene.next_frame()
    }

    fn next_frame_into(&mut self, buf: &mut FrameBuf) -> Option<Result<bool>> {
        if !self.owned {
            return None;
        }
        if !self.before_frame() {
            return Some(Ok(false));
        }
        self.scene.next_frame_into(buf)
    }

    fn maps_frames(&self) -> bool {
        self.owned && self.scene.maps_frames()
    }

    /// Paced as a camera is: capture never waits for the network, so the
    /// send queue overflows and drops before the hub comes, and every
    /// buffer the node will need is made early. (A file at `--rate max`
    /// would wait for room instead, and wait for ever for a hub that this
    /// source starts only at frame `HUB_UP`.)
    fn is_live(&self) -> bool {
        true
    }
}

/// How the test scene reaches the pipeline.
#[derive(Clone, Copy, Debug)]
enum Frames {
    /// Drawn into the pipeline's own buffers.
    Owned,
    /// Lent, as a camera lends its buffers.
    Lent,
    /// Windows of a mapped Y4M file of the same scene.
    Mapped,
}

/// Frames a run reads at most: up to the hub, then the warm-up and the window.
const RUN_FRAMES: u64 = HUB_UP + 1 + WARMUP + WINDOW + 10;

/// The synthetic scene written as a Y4M file of `RUN_FRAMES` frames.
fn scene_file(dir: &std::path::Path, width: usize, height: usize) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("scene.y4m");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(out, "YUV4MPEG2 W{width} H{height} F30:1 Ip C420jpeg").unwrap();
    let mut scene = Synthetic::new(width, height, 5);
    for _ in 0..RUN_FRAMES {
        let frame = scene.next_frame().unwrap().unwrap();
        out.write_all(b"FRAME\n").unwrap();
        for plane in [frame.y, frame.u, frame.v] {
            out.write_all(plane.data).unwrap();
        }
    }
    out.flush().unwrap();
    path
}

/// Runs the pipeline past the window and returns the allocations in it.
fn allocations_in_window(frames: Frames, workers: usize, send: SendPolicy, flip: Flip) -> u64 {
    let port = free_port();
    let mut config = Config::default();
    config.node.name = "alloc".into();
    config.node.heartbeat = 0.0;
    config.capture.rate = Some(Rate::Max);
    config.capture.flip = flip;
    config.encode.send = send;
    config.encode.workers = workers;
    config.transport.hub = Some(format!("tcp://127.0.0.1:{port}"));
    // Back soon from the outage at the start, yet never in one later, on a
    // busy machine too: an outage is not the steady state.
    config.transport.reply_timeout = 2.0;
    // Nothing may be left on disk, and a full queue must drop, not spool.
    config.spool.max_mb = 0;
    let status = Arc::new(NodeStatus::default());
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (start_hub, hub_wanted) = channel();
    let dir = tempfile::tempdir().unwrap();
    let (width, height) = (320, 240);
    let scene: Box<dyn FrameSource> = match frames {
        Frames::Owned | Frames::Lent => Box::new(Synthetic::new(width, height, 5)),
        Frames::Mapped => Box::new(Y4mReader::open(&scene_file(dir.path(), width, height)).unwrap()),
    };
    let owned = !matches!(frames, Frames::Lent);
    let source = Watched { scene, owned, seq: 0, status: status.clone(), start_hub, window: None, counts: counts.clone() };
    let (_controls, rx) = channel();
    let node = std::thread::spawn(move || Pipeline::run_source(&config, Box::new(source), rx, status));
    hub_wanted.recv().unwrap();
    let _hub = Proc::spawn("camnode hub", camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")]));
    let stats = node.join().unwrap().unwrap();
    assert!(stats.events >= 5, "the scene must start events, and did {} times", stats.events);
    assert!(stats.encoded > WINDOW / 2, "only {} frames were encoded", stats.encoded);
    // The node runs at full speed and the hub replies at its own pace, so
    // how many images the full queue drops varies from run to run (here 5
    // to 50 % of those encoded); enough must still get through for the
    // sender to have worked all along.
    assert!(stats.sent > WINDOW / 4, "only {} messages reached the hub", stats.sent);
    assert!(stats.dropped > 0, "the send queue never overflowed before the hub came");
    let (before, after) = (counts[0].load(Ordering::SeqCst), counts[1].load(Ordering::SeqCst));
    assert!(before > 0 && after >= before, "the window was not reached");
    after - before
}

#[test]
fn steady_state_allocates_nothing() {
    // One test, the cases one after the other: the counter is global, and a
    // second test running beside the first would count into it.
    let cases = [
        (Frames::Owned, 2, SendPolicy::Motion, Flip::None),
        (Frames::Lent, 1, SendPolicy::All, Flip::Rotate180),
        (Frames::Mapped, 2, SendPolicy::Motion, Flip::None),
    ];
    for (frames, workers, send, flip) in cases {
        let count = allocations_in_window(frames, workers, send, flip);
        let case = format!("{frames:?} frames, workers {workers}, send {send:?}, flip {flip:?}");
        let first = FIRST_IN_WINDOW.lock().unwrap().take().unwrap_or_default();
        assert_eq!(count, 0, "allocations in {WINDOW} frames ({case}); the first, in {first}");
    }
}
