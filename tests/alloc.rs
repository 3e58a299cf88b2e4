//! No heap allocation per frame in the steady state.
//!
//! A counting global allocator wraps the system one and counts every
//! allocation and reallocation, in every thread of this process. The
//! pipeline runs in-process on the synthetic scene (so events start and end,
//! pre-event frames go out, the detector, encoder and sender all work) and
//! sends to a real `camnode hub` over REQ. The hub starts only after a few
//! frames, as after a power cut: the send queue fills and overflows first,
//! so every buffer the node will ever need exists before the window. A
//! wrapper around the scene reads the count when a frame far into the run is
//! captured and again hundreds of frames later: in between, the whole node
//! (main loop, encoder workers, sender thread) must not have allocated at
//! all. libzmq and libjpeg-turbo manage their own memory in C, outside this
//! allocator.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;

use anyhow::Result;
use camnode::capture::{FrameSource, Synthetic};
use camnode::config::{Config, Rate, SendPolicy};
use camnode::flip::Flip;
use camnode::frame::Frame;
use camnode::pipeline::Pipeline;
use camnode::status::NodeStatus;
use support::{camnode, free_port, Proc};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
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
/// Frames before the window: every buffer has grown to its working size.
const WARMUP: u64 = 3 * CYCLE;
/// Frames in the window: four motion events, start to end.
const WINDOW: u64 = 4 * CYCLE;

/// The synthetic scene, asking for the hub at frame `HUB_UP` and reading
/// the allocation count as frames `WARMUP` and `WARMUP + WINDOW` are captured.
struct Watched {
    scene: Synthetic,
    seq: u64,
    start_hub: Sender<()>,
    counts: Arc<[AtomicU64; 2]>,
}

impl FrameSource for Watched {
    fn size(&self) -> (usize, usize) {
        self.scene.size()
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        match self.seq {
            HUB_UP => self.start_hub.send(()).unwrap(),
            WARMUP => self.counts[0].store(ALLOCATIONS.load(Ordering::SeqCst), Ordering::SeqCst),
            n if n == WARMUP + WINDOW => self.counts[1].store(ALLOCATIONS.load(Ordering::SeqCst), Ordering::SeqCst),
            _ => {}
        }
        self.seq += 1;
        self.scene.next_frame()
    }
}

/// Runs the pipeline past the window and returns the allocations in it.
fn allocations_in_window(workers: usize, send: SendPolicy, flip: Flip) -> u64 {
    let port = free_port();
    let mut config = Config::default();
    config.node.name = "alloc".into();
    config.node.heartbeat = 0.0;
    config.capture.rate = Rate::Max;
    config.capture.frames = WARMUP + WINDOW + 10;
    config.capture.flip = flip;
    config.encode.send = send;
    config.encode.workers = workers;
    config.transport.hub = Some(format!("tcp://127.0.0.1:{port}"));
    // Soon back from the outage at the start.
    config.transport.reply_timeout = 0.2;
    // Nothing may be left on disk, and a full queue must drop, not spool.
    config.spool.max_mb = 0;
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let (start_hub, hub_wanted) = channel();
    let source = Watched { scene: Synthetic::new(320, 240, 5), seq: 0, start_hub, counts: counts.clone() };
    let (_controls, rx) = channel();
    let node = std::thread::spawn(move || Pipeline::run_source(&config, Box::new(source), rx, Arc::new(NodeStatus::default())));
    hub_wanted.recv().unwrap();
    let _hub = Proc::spawn("camnode hub", camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")]));
    let stats = node.join().unwrap().unwrap();
    assert_eq!(stats.frames, WARMUP + WINDOW + 10);
    assert!(stats.events >= 6, "the scene must start events, and did {} times", stats.events);
    assert!(stats.encoded > WINDOW / 2, "only {} frames were encoded", stats.encoded);
    assert!(stats.sent > 0, "nothing reached the hub");
    assert!(stats.dropped > 0, "the send queue never overflowed before the hub came");
    let (before, after) = (counts[0].load(Ordering::SeqCst), counts[1].load(Ordering::SeqCst));
    assert!(before > 0 && after >= before, "the window was not reached");
    after - before
}

#[test]
fn steady_state_allocates_nothing() {
    // One test, the cases one after the other: the counter is global, and a
    // second test running beside the first would count into it.
    for (workers, send, flip) in [(2, SendPolicy::Motion, Flip::None), (1, SendPolicy::All, Flip::Rotate180)] {
        let count = allocations_in_window(workers, send, flip);
        assert_eq!(count, 0, "{count} allocations in {WINDOW} frames (workers {workers}, send {send:?}, flip {flip:?})");
    }
}
