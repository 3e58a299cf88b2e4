//! The node's main loop: one frame's whole path from capture to the hub.
//!
//! ```text
//! source.next_frame -> flip -> motion.process -> send decision -> encode -> sender queue
//! ```
//!
//! The loop is driven by messages: between frames it waits on a control
//! channel (quit, trigger) with the pacing deadline as its timeout, so signals
//! and inputs meet the camera in one place. Whether a frame is encoded is
//! decided in exactly one place, [`Pipeline::decide`]; a still scene costs
//! no encoding at all.

mod ring;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, info, warn};

use crate::capture::{self, FrameSource, OpenOptions};
use crate::config::{Config, Format, Rate, SendPolicy};
use crate::encode::{placeholder_jpeg, Encoder};
use crate::flip::{flip_into, Flip};
use crate::frame::{unix_now, Frame, FrameBuf};
use crate::motion::{BoundingBox, MotionDetector, MotionEvent, MotionReport, MotionState};
use crate::stats::{lap, RunStats};
use crate::status::{NodeStatus, Phase};
use crate::transport::wire::OutHeader;
use crate::transport::{BufferPool, Message, MessageKind, Sender};
use ring::FrameRing;

/// Messages that reach the main loop from outside the camera.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Stop: a signal, or the end of a test.
    Quit,
}

/// The fixed texts of this node's messages, built once.
struct Texts {
    node: String,
    image: String,
    moving: String,
    still: String,
    heartbeat: String,
    restart: String,
}

impl Texts {
    fn new(config: &Config) -> Texts {
        let (node, view) = (&config.node.name, &config.node.view);
        let image_kind = match config.encode.format {
            Format::Jpg => "jpg",
            Format::Raw => "image",
        };
        Texts {
            image: format!("{node} {view}|{image_kind}"),
            moving: format!("{node} {view}|motion|moving"),
            still: format!("{node} {view}|motion|still"),
            heartbeat: format!("{node}|Heartbeat"),
            restart: format!("{node}|Restart|{}|camnode {}", crate::config::host_name(), env!("CARGO_PKG_VERSION")),
            node: node.clone(),
        }
    }
}

/// Everything a running node holds.
pub struct Pipeline {
    config: Config,
    texts: Texts,
    detector: MotionDetector,
    encoder: Encoder,
    sender: Option<Sender>,
    pool: BufferPool,
    status: Arc<NodeStatus>,
    /// Payload of event and notice messages (imagenode sends a tiny image with texts).
    placeholder: Vec<u8>,
    flipped: FrameBuf,
    pre_event: FrameRing,
    /// Frames still to send after an event ended.
    post_event_left: u32,
    boot: u64,
    /// This frame's motion boxes, copied out of the detector's report.
    boxes: Vec<BoundingBox>,
    stats: RunStats,
}

impl Pipeline {
    /// Opens the source and the transport; nothing is sent yet.
    pub fn run(config: &Config, controls: Receiver<Control>, status: Arc<NodeStatus>) -> Result<RunStats> {
        let options = OpenOptions {
            size: config.capture.size.map(|s| (s.width, s.height)),
            fps: match config.capture.rate {
                Rate::Fps(fps) => Some(fps),
                Rate::Max => None,
            },
            flip: config.capture.flip,
            seed: config.capture.seed,
        };
        let mut source = capture::open(&config.capture.source, &options)
            .with_context(|| format!("cannot open [capture] source = \"{}\"", config.capture.source))?;
        let (width, height) = source.size();
        info!("capturing {width}x{height} from {}", config.capture.source);
        let pool = BufferPool::default();
        let placeholder = match config.encode.format {
            Format::Jpg => placeholder_jpeg()?,
            Format::Raw => vec![0; 9],
        };
        let mut pipeline = Pipeline {
            texts: Texts::new(config),
            detector: MotionDetector::new(&config.motion, width, height)?,
            encoder: Encoder::new(config.encode.format, config.encode.quality)?,
            sender: Some(Sender::start(&config.transport, pool.clone(), status.clone())?),
            pool,
            status,
            placeholder,
            flipped: FrameBuf::default(),
            pre_event: FrameRing::new(if config.encode.send == SendPolicy::Motion { config.motion.pre_event_frames } else { 0 }),
            post_event_left: 0,
            boot: (unix_now() * 1e6) as u64,
            boxes: Vec::new(),
            stats: RunStats::default(),
            config: config.clone(),
        };
        pipeline.capture_loop(source.as_mut(), &controls)
    }

    fn capture_loop(&mut self, source: &mut dyn FrameSource, controls: &Receiver<Control>) -> Result<RunStats> {
        let started = Instant::now();
        self.status.set_phase(Phase::Running);
        self.notice(&self.texts.restart.clone(), 0);
        let pace = match self.config.capture.rate {
            Rate::Fps(fps) if !source.is_live() => Some(Duration::from_secs_f64(1.0 / fps)),
            _ => None,
        };
        let heartbeat = (self.config.node.heartbeat > 0.0).then(|| Duration::from_secs_f64(self.config.node.heartbeat));
        let flip = if source.flips_in_hardware() { Flip::None } else { self.config.capture.flip };
        let mut next_due = Instant::now();
        let mut last_heartbeat = Instant::now();
        let mut quit = false;
        let result = loop {
            if self.config.capture.frames > 0 && self.stats.frames >= self.config.capture.frames {
                break Ok(());
            }
            let wait = pace.map_or(Duration::ZERO, |_| next_due.saturating_duration_since(Instant::now()));
            match controls.recv_timeout(wait) {
                Ok(Control::Quit) | Err(RecvTimeoutError::Disconnected) => {
                    quit = true;
                    break Ok(());
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(period) = pace {
                // Catch up after a slow frame instead of bursting.
                next_due = (next_due + period).max(Instant::now());
            }
            let t0 = Instant::now();
            let frame = match source.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    info!("source ended after {} frames", self.stats.frames);
                    break Ok(());
                }
                Err(e) => break Err(e.context(format!("capture failed after {} frames", self.stats.frames))),
            };
            if let Err(e) = frame.validate() {
                warn!("skipped a bad frame: {e:#}");
                continue;
            }
            let t1 = lap(&mut self.stats.stage_us.capture, t0);
            if flip == Flip::None {
                self.process(&frame, t1)?;
            } else {
                let mut flipped = std::mem::take(&mut self.flipped);
                flip_into(&frame, flip, &mut flipped);
                let t2 = lap(&mut self.stats.stage_us.flip, t1);
                let outcome = self.process(&flipped.as_frame(), t2);
                self.flipped = flipped;
                outcome?;
            }
            if let Some(period) = heartbeat {
                if last_heartbeat.elapsed() >= period {
                    last_heartbeat = Instant::now();
                    self.notice(&self.texts.heartbeat.clone(), self.stats.frames);
                }
            }
        };
        self.stats.source_dropped = source.dropped();
        self.status.set_phase(if result.is_ok() { Phase::Stopped } else { Phase::Failed });
        // On a signal the whole exit must fit in 2 s; at a natural end the configured linger applies in full.
        let linger = Duration::from_secs_f64(self.config.transport.linger);
        let linger = if quit { linger.min(Duration::from_millis(1500)) } else { linger };
        self.finish_sending(linger);
        self.stats.finish(started);
        result.map(|()| std::mem::take(&mut self.stats))
    }

    /// Motion detection, the send decision and encoding for one frame.
    fn process(&mut self, frame: &Frame, t0: Instant) -> Result<()> {
        self.stats.frames += 1;
        let report = self.detector.process(frame);
        let (event, state, active) = (report.event, report.state, report.active);
        let score = report.score;
        self.boxes.clear();
        self.boxes.extend_from_slice(&report.boxes);
        let t1 = lap(&mut self.stats.stage_us.motion, t0);
        self.stats.moving_frames += active as u64;
        match event {
            Some(MotionEvent::Started) => {
                self.stats.events += 1;
                self.status.set_event_active(true);
                info!("motion started at frame {} (score {score:.2})", frame.seq);
                self.event(&self.texts.moving.clone(), frame, score);
                // The frames that led up to the event go first, in capture order.
                for buffered in self.pre_event.drain() {
                    let result = self.send_image(&buffered.as_frame(), None);
                    self.pre_event.recycle(buffered);
                    result?;
                }
            }
            Some(MotionEvent::Ended) => {
                self.status.set_event_active(false);
                info!("motion ended at frame {}", frame.seq);
                self.event(&self.texts.still.clone(), frame, score);
                self.post_event_left = self.config.motion.post_event_frames;
            }
            None => {}
        }
        if self.decide(state) {
            let boxes = std::mem::take(&mut self.boxes);
            let sent = self.send_image(frame, Some((score, &boxes)));
            self.boxes = boxes;
            sent?;
        } else if state == MotionState::Still && event.is_none() {
            self.pre_event.push(frame);
        }
        lap(&mut self.stats.stage_us.encode, t1);
        Ok(())
    }

    /// The one place that decides whether a frame is encoded and sent.
    fn decide(&mut self, state: MotionState) -> bool {
        match self.config.encode.send {
            SendPolicy::All => true,
            SendPolicy::None => false,
            SendPolicy::Motion if state == MotionState::Moving => true,
            SendPolicy::Motion if self.post_event_left > 0 => {
                self.post_event_left -= 1;
                true
            }
            SendPolicy::Motion => false,
        }
    }

    fn send_image(&mut self, frame: &Frame, motion: Option<(f32, &[BoundingBox])>) -> Result<()> {
        let mut payload = self.pool.take();
        self.encoder.encode(frame, &mut payload)?;
        self.stats.encoded += 1;
        let shape = [frame.height, frame.width, 3];
        let raw = matches!(self.encoder, Encoder::Raw);
        let header = OutHeader {
            msg: &self.texts.image,
            dtype: raw.then_some("uint8"),
            shape: raw.then_some(&shape[..]),
            node: &self.texts.node,
            boot: self.boot,
            seq: frame.seq,
            ts: frame.timestamp,
            score: motion.map(|(score, _)| score),
            boxes: motion.map_or(&[], |(_, boxes)| boxes),
        };
        let message = Message::new(MessageKind::Image, &header, self.pool.take(), payload);
        self.offer(message);
        Ok(())
    }

    fn event(&mut self, text: &str, frame: &Frame, score: f32) {
        self.text_message(MessageKind::Event, text, frame.seq, frame.timestamp, Some(score));
    }

    fn notice(&mut self, text: &str, seq: u64) {
        self.text_message(MessageKind::Notice, text, seq, unix_now(), None);
    }

    fn text_message(&mut self, kind: MessageKind, text: &str, seq: u64, ts: f64, score: Option<f32>) {
        let mut payload = self.pool.take();
        payload.extend_from_slice(&self.placeholder);
        let raw = matches!(self.encoder, Encoder::Raw);
        let header = OutHeader {
            msg: text,
            dtype: raw.then_some("uint8"),
            shape: raw.then_some(&[3, 3][..]),
            node: &self.texts.node,
            boot: self.boot,
            seq,
            ts,
            score,
            boxes: &[],
        };
        let message = Message::new(kind, &header, self.pool.take(), payload);
        self.offer(message);
    }

    /// Hands a message to the sender; a full queue drops it, counted and logged.
    fn offer(&mut self, message: Message) {
        let Some(sender) = &self.sender else { return };
        if let Err(message) = sender.offer(message) {
            self.stats.dropped += 1;
            self.status.note_drop();
            if self.stats.dropped.is_power_of_two() {
                warn!("send queue full: dropped a {:?} message ({} dropped so far)", message.kind, self.stats.dropped);
            } else {
                debug!("send queue full: dropped a {:?} message", message.kind);
            }
            self.pool.give(message.header);
            self.pool.give(message.payload);
        }
    }

    fn finish_sending(&mut self, linger: Duration) {
        if let Some(sender) = self.sender.take() {
            let report = sender.finish(linger);
            if report.unsent > 0 {
                warn!("{} messages were not delivered before exit", report.unsent);
            }
            self.stats.sent = report.sent;
            self.stats.bytes = report.bytes;
            self.stats.dropped += report.unsent + report.dropped;
            self.stats.reconnects = report.reconnects;
            self.stats.latency_ms_p50 = report.latency_ms_p50;
            self.stats.latency_ms_p99 = report.latency_ms_p99;
            self.stats.stage_us.send = report.busy_us;
        }
    }
}

/// Runs only the detector over a source: what `camnode detect` prints.
pub fn detect_frames(config: &Config, mut each: impl FnMut(u64, &MotionReport) -> Result<()>) -> Result<u64> {
    let options = OpenOptions { seed: config.capture.seed, flip: config.capture.flip, ..Default::default() };
    let mut source = capture::open(&config.capture.source, &options)
        .with_context(|| format!("cannot open source \"{}\"", config.capture.source))?;
    let (width, height) = source.size();
    let mut detector = MotionDetector::new(&config.motion, width, height)?;
    let mut index = 0;
    while let Some(frame) = source.next_frame()? {
        if config.capture.frames > 0 && index >= config.capture.frames {
            break;
        }
        each(index, detector.process(&frame))?;
        index += 1;
    }
    Ok(index)
}
