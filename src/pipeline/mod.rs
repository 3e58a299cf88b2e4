//! The node's main loop: one frame's whole path from capture to the hub.
//!
//! ```text
//! source.next_frame -> flip -> motion.process -> send decision -> encode -> sender queue
//! ```
//!
//! The loop is driven by messages: between frames it waits on a control
//! channel (quit, trigger, reload) with the pacing deadline as its timeout, so
//! signals and inputs meet the camera in one place. A reload ([`reload`])
//! is applied there too, between two frames: the camera, the sockets, the
//! pre-event ring and the boot id stay. Whether a frame is encoded is
//! decided in exactly one place, [`Pipeline::decide`]; a still scene costs
//! no encoding at all. Frames that may yet be sent are kept back in a
//! [`FrameRing`]: before an event, those that would show how it began, and
//! during one, those in which nothing moved, until motion resumes.

mod reload;
mod ring;

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use log::{debug, error, info, warn};

use crate::capture::{self, CaptureConfig, FrameSource, Rate, DEFAULT_FILE_FPS};
use crate::config::{Config, NodeConfig};
use crate::control::Control;
use crate::encode::{payload_room, placeholder_jpeg, worker_count, EncodePool, Format, SendPolicy};
use crate::flip::{flip_into, Flip};
use crate::frame::{unix_now, Captured, Frame, FrameBuf, Spares};
use crate::gpio::TriggerMode;
use crate::health::{self, HealthProbe};
use crate::motion::{BoundingBox, MotionDetector, MotionEvent, MotionState};
use crate::stats::{lap, thread_cpu_time, RunStats};
use crate::status::{NodeStatus, Phase};
use crate::systemd::{Notifier, Notify};
use crate::transport::wire::{OutHeader, HEADER_ROOM};
use crate::transport::{BufferPool, Buffers, Message, MessageKind, Sender, Shutdown, SpoolKeep};
use ring::{FrameRing, Kept};

/// How often a wait for room in the send queue looks at the control
/// channel, so that a signal still stops a node that waits on a slow hub.
const ROOM_CHECK: Duration = Duration::from_millis(100);

/// Messages out at once besides those in the send queue and the encoders:
/// the one the sender is delivering, one it replays from the spool, and the
/// event and notice messages queued between images.
const MESSAGES_IN_HAND: usize = 4;

/// Frames sent before the one where the detector first saw what started an
/// event: an object coming into view, or out from behind something, shows
/// for a frame before it differs enough to be seen.
const LEAD_FRAMES: u64 = 1;

/// What becomes of a frame: see [`Pipeline::decide`].
enum Decision {
    /// Encoded and sent now.
    Send,
    /// Kept back during an event: nothing moved in it.
    HoldBack,
    /// Kept in case an event starts.
    Keep,
    /// Neither (`send = "none"`).
    Skip,
}

/// The fixed texts of this node's messages, built once. Shared (`Arc<str>`),
/// so that the hot path hands one to a message without allocating.
struct Texts {
    node: Arc<str>,
    image: Arc<str>,
    moving: Arc<str>,
    still: Arc<str>,
    pressed: Arc<str>,
    armed: Arc<str>,
    disarmed: Arc<str>,
    heartbeat: Arc<str>,
    restart: Arc<str>,
}

impl Texts {
    fn new(config: &Config) -> Texts {
        let (node, view) = (&config.node.name, &config.node.view);
        let image_kind = match config.encode.format {
            Format::Jpg => "jpg",
            Format::Raw => "image",
        };
        Texts {
            image: format!("{node} {view}|{image_kind}").into(),
            moving: format!("{node} {view}|motion|moving").into(),
            still: format!("{node} {view}|motion|still").into(),
            pressed: format!("{node} {view}|trigger|pressed").into(),
            armed: format!("{node} {view}|trigger|armed").into(),
            disarmed: format!("{node} {view}|trigger|disarmed").into(),
            heartbeat: format!("{node}|Heartbeat").into(),
            restart: format!("{node}|Restart|{}|camnode {}", crate::config::host_name(), env!("CARGO_PKG_VERSION")).into(),
            node: node.as_str().into(),
        }
    }
}

/// Everything a running node holds.
pub struct Pipeline {
    config: Config,
    texts: Texts,
    detector: MotionDetector,
    /// Every outgoing message passes through here, images to be encoded and
    /// texts alike, and leaves in the order it came.
    encoder: EncodePool,
    sender: Option<Sender>,
    pool: BufferPool,
    /// Bytes every payload buffer reserves: the largest image of this run.
    payload_room: usize,
    status: Arc<NodeStatus>,
    /// Quit and trigger messages from signals and the GPIO trigger.
    controls: Receiver<Control>,
    /// A control message that came while `offer` waited for room; acted on
    /// before the next frame.
    deferred: Vec<Control>,
    /// The source has no clock of its own (a file, a pipe, the synthetic
    /// scene) and runs at `--rate max`: it waits for room in the send queue
    /// instead of dropping. Cameras and paced sources never wait.
    wait_for_room: bool,
    /// Payload of event and notice messages (imagenode sends a tiny image with texts).
    placeholder: Vec<u8>,
    /// What sources that read frames (files, pipes) read into. A frame that
    /// is kept leaves in it, without a copy, and a spare takes its place.
    current: FrameBuf,
    flipped: FrameBuf,
    /// Frame buffers for the ring and the encoder workers, beyond the two
    /// above: as many as the larger of the two holds, so that at 1080p a
    /// node keeps 4 or 5 frames in memory, not 7.
    spares: Spares,
    /// Frames before an event, and frames of one in which nothing moved.
    pre_event: FrameRing,
    /// Messages handed to the encoder so far, and messages back from it: the
    /// ticket of each, which says whether it is a frame encoded ahead for
    /// `pre_event`. The encoder gives them back in order; a failure to
    /// encode ends the run.
    handed_to_encoder: u64,
    back_from_encoder: u64,
    /// Frames still to send after an event ended.
    post_event_left: u32,
    /// Frames still to send for a trigger press (`trigger_mode = "capture"`).
    burst_left: u32,
    /// Motion detection and sending are on; `trigger_mode = "arm"` switches them.
    armed: bool,
    /// Trigger presses so far, the sequence number of trigger events.
    presses: u64,
    /// Frame size, for a fresh detector when re-armed.
    size: (usize, usize),
    boot: u64,
    /// This frame's motion boxes, copied out of the detector's report.
    boxes: Vec<BoundingBox>,
    /// The images going out now belong to an event (moving, pre- or
    /// post-event, a trigger burst): the spool keeps them when the hub cannot.
    in_event: bool,
    /// Measures what each heartbeat reports.
    health: HealthProbe,
    stats: RunStats,
}

impl Pipeline {
    /// Opens the source and the transport; nothing is sent yet.
    pub fn run(config: &Config, controls: Receiver<Control>, status: Arc<NodeStatus>) -> Result<RunStats> {
        let source = capture::open(&config.capture)
            .with_context(|| format!("cannot open [capture] source = \"{}\"", config.capture.source))?;
        info!("capturing {}x{} from {}", source.size().0, source.size().1, config.capture.source);
        Pipeline::run_source(config, source, controls, status)
    }

    /// Runs on a source that is already open, in place of `[capture] source`:
    /// for embedding camnode, and for tests that watch frames go by.
    pub fn run_source(config: &Config, mut source: Box<dyn FrameSource>, controls: Receiver<Control>, status: Arc<NodeStatus>) -> Result<RunStats> {
        let (width, height) = source.size();
        let workers = worker_count(config.encode.workers);
        // Filled only while the send policy is "motion", but there for a
        // reload that switches to it; its buffers are made as it fills.
        let pre_event = config.motion.pre_event_frames;
        let encoder = EncodePool::new(workers, config.encode.format, config.encode.quality)?;
        let frames_held = encoder.most_frames();
        let payload_room = payload_room(config.encode.format, width, height);
        // Older frames before an event are kept as JPEGs; raw arrays are
        // larger than the frames they come from, so those are kept raw.
        let pre_event = FrameRing::new(pre_event, config.encode.format == Format::Jpg, encoder.most_messages());
        // Every message that can be out at once: a full send queue, those
        // with the encoders, those in hand and the frames kept encoded.
        let most_messages = config.transport.queue + encoder.most_messages() + MESSAGES_IN_HAND + pre_event.encoded_capacity();
        let pool = BufferPool::stocked(most_messages, HEADER_ROOM, payload_room);
        let placeholder = match config.encode.format {
            Format::Jpg => placeholder_jpeg()?,
            Format::Raw => vec![0; 9],
        };
        let mut pipeline = Pipeline {
            texts: Texts::new(config),
            detector: MotionDetector::new(&config.motion, width, height)?,
            encoder,
            sender: Some(Sender::start(&config.transport, &config.spool, &config.security, pool.clone(), status.clone())?),
            pool,
            payload_room,
            status,
            controls,
            deferred: Vec::new(),
            wait_for_room: waits_for_room(&config.capture, source.is_live()),
            placeholder,
            current: FrameBuf::default(),
            flipped: FrameBuf::default(),
            // The capture slot and the flip slot are filled by their owners.
            spares: Spares::new(pre_event.raw_capacity().max(frames_held), 2),
            pre_event,
            handed_to_encoder: 0,
            back_from_encoder: 0,
            post_event_left: 0,
            burst_left: 0,
            armed: true,
            presses: 0,
            size: (width, height),
            boot: (unix_now() * 1e6) as u64,
            boxes: Vec::with_capacity(crate::motion::MAX_BOXES),
            in_event: false,
            health: HealthProbe::new(config.transport.addresses().first().map_or("", String::as_str), &config.spool.dir, config.node.heartbeat),
            stats: RunStats::default(),
            config: config.clone(),
        };
        let threads = pipeline.encoder.workers();
        info!("encoding on {threads} thread{}", if threads == 1 { " (inline)" } else { "s" });
        pipeline.capture_loop(source.as_mut())
    }

    fn capture_loop(&mut self, source: &mut dyn FrameSource) -> Result<RunStats> {
        let started = Instant::now();
        self.status.set_phase(Phase::Running);
        self.notice(&self.texts.restart.clone(), 0);
        let mut pace = pace_of(&self.config.capture, source.is_live());
        let mut heartbeat = heartbeat_of(&self.config.node);
        let flip = if source.flips_in_hardware() { Flip::None } else { self.config.capture.flip };
        let maps_frames = source.maps_frames();
        let mut next_due = Instant::now();
        let mut last_heartbeat = Instant::now();
        let mut quit = false;
        // systemd's watchdog hears from us only while frames flow, so a stuck
        // camera gets the service restarted rather than left running blind.
        let mut systemd = Notifier::from_env().unwrap_or_else(|e| {
            warn!("systemd notification is off: {e:#}");
            Notifier::disabled()
        });
        let result = loop {
            if self.config.capture.frames > 0 && self.stats.frames >= self.config.capture.frames {
                break Ok(());
            }
            let wait = pace.map_or(Duration::ZERO, |_| next_due.saturating_duration_since(Instant::now()));
            let control = match self.deferred.pop() {
                Some(control) => Ok(control),
                None => self.controls.recv_timeout(wait),
            };
            match control {
                Ok(Control::Quit) | Err(RecvTimeoutError::Disconnected) => {
                    quit = true;
                    break Ok(());
                }
                // Back to waiting after a press: it does not bring the next frame forward.
                Ok(Control::Trigger) => match self.trigger() {
                    Ok(()) => continue,
                    Err(e) => break Err(e),
                },
                Ok(Control::Reload(config)) => {
                    self.reload(*config, source);
                    pace = pace_of(&self.config.capture, source.is_live());
                    heartbeat = heartbeat_of(&self.config.node);
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Images the workers finished meanwhile go out before the next frame is read.
            self.release();
            if let Some(period) = pace {
                // Catch up after a slow frame instead of bursting.
                next_due = (next_due + period).max(Instant::now());
            }
            if self.stats.frames == self.config.stats.warmup {
                self.stats.start_steady(self.encoder.cpu_time());
            }
            let t0 = Instant::now();
            let mut current = std::mem::take(&mut self.current);
            let outcome = match source.next_frame_into(&mut current) {
                Some(Ok(true)) => self
                    .captured(Captured::Owned(&mut current), flip, t0)
                    .and_then(|()| if maps_frames { Ok(()) } else { self.restock(&mut current) })
                    .map(|()| true),
                Some(Ok(false)) => Ok(false),
                Some(Err(e)) => Err(e.context(format!("capture failed after {} frames", self.stats.frames))),
                None => match source.next_frame() {
                    Ok(Some(frame)) => self.captured(Captured::Lent(frame), flip, t0).map(|()| true),
                    Ok(None) => Ok(false),
                    Err(e) => Err(e.context(format!("capture failed after {} frames", self.stats.frames))),
                },
            };
            self.current = current;
            match outcome {
                Ok(true) => {
                    if self.stats.frames == 1 {
                        tell_systemd(&systemd, Notify::Ready);
                    }
                    if let Err(e) = systemd.keepalive(Instant::now()) {
                        debug!("watchdog keep-alive failed: {e:#}");
                    }
                }
                Ok(false) => {
                    info!("source ended after {} frames", self.stats.frames);
                    break Ok(());
                }
                Err(e) => break Err(e),
            }
            if let Some(period) = heartbeat {
                if last_heartbeat.elapsed() >= period {
                    last_heartbeat = Instant::now();
                    self.heartbeat(source.dropped());
                }
            }
        };
        tell_systemd(&systemd, Notify::Stopping);
        // Frames still with the encoder workers go out before the sender stops.
        let flushed = self.encoder.flush(&mut self.spares);
        self.release();
        let result = result.and(flushed);
        self.stats.source_dropped = source.dropped();
        // Frames kept for an event that did not come are not sent now either.
        self.pre_event.clear(&mut self.spares, &self.pool);
        self.stats.encoded_unsent = self.pre_event.forgotten();
        self.status.set_phase(if result.is_ok() { Phase::Stopped } else { Phase::Failed });
        // On a signal the whole exit must fit in 2 s, and the spool waits for
        // the next start; at the end of a finite run (or a failed source) the
        // queue and the spool get up to `drain_timeout`.
        self.finish_sending(if quit { Shutdown::Signal } else { Shutdown::Drain });
        self.stats.finish(started, self.encoder.cpu_time());
        result.map(|()| std::mem::take(&mut self.stats))
    }

    /// One frame from the source: checked (a bad one is skipped), flipped
    /// if need be, processed.
    fn captured(&mut self, mut frame: Captured, flip: Flip, t0: Instant) -> Result<()> {
        if let Err(e) = frame.frame().validate() {
            warn!("skipped a bad frame: {e:#}");
            return Ok(());
        }
        let t1 = lap(&mut self.stats.stage_us.capture, t0);
        if flip == Flip::None {
            self.process(&mut frame, t1)?;
        } else {
            let mut flipped = std::mem::take(&mut self.flipped);
            flip_into(&frame.frame(), flip, &mut flipped);
            let t2 = lap(&mut self.stats.stage_us.flip, t1);
            let outcome = self.process(&mut Captured::Owned(&mut flipped), t2).and_then(|()| self.restock(&mut flipped));
            self.flipped = flipped;
            outcome?;
        }
        Ok(())
    }

    /// Motion detection, the send decision and encoding for one frame.
    fn process(&mut self, captured: &mut Captured, t0: Instant) -> Result<()> {
        self.stats.frames += 1;
        // Disarmed, the node does not look at the scene at all: no motion
        // events, no images, no CPU spent on detection.
        if !self.armed {
            return Ok(());
        }
        let frame = captured.frame();
        let report = self.detector.process(&frame);
        let (event, state, active) = (report.event, report.state, report.active);
        let (seen_for, followed_for) = (u64::from(report.seen_for), u64::from(report.followed_for));
        // Pre-event frames go out on the frame that starts an event, in state Moving too.
        self.in_event = state == MotionState::Moving;
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
                self.event(&self.texts.moving.clone(), &frame, score);
                // The frames that show how the event began go first, in
                // capture order: from just before its object was first seen.
                self.send_kept(frame.seq.saturating_sub(seen_for.saturating_sub(1) + LEAD_FRAMES))?;
            }
            Some(MotionEvent::Ended) => {
                // A trigger burst may still be going out.
                self.status.set_event_active(self.burst_left > 0);
                info!("motion ended at frame {}", frame.seq);
                self.event(&self.texts.still.clone(), &frame, score);
                self.post_event_left = self.config.motion.post_event_frames;
                // The event's last frames, in which nothing moved, go out
                // ahead of the post-event frames; without those, they stay
                // as the frames before a next event.
                if self.post_event_left > 0 {
                    self.send_kept(0)?;
                }
            }
            None => {}
        }
        match self.decide(state, active) {
            Decision::Send => {
                if state == MotionState::Moving {
                    // Motion resumed: the frames held back meanwhile go first.
                    self.send_kept(0)?;
                }
                let boxes = std::mem::take(&mut self.boxes);
                let sent = self.send_image(captured, Some((score, &boxes)));
                self.boxes = boxes;
                sent?;
            }
            Decision::HoldBack => {
                // Held back past the ring's room, a frame goes out after all.
                if let Some(mut leaving) = self.keep(captured)? {
                    let sent = self.send_image(&mut Captured::Owned(&mut leaving), None);
                    self.spares.give(leaving);
                    sent?;
                }
            }
            Decision::Keep => {
                // Frames from before what the detector follows cannot show
                // how a coming event began.
                let oldest_useful = frame.seq.saturating_sub(followed_for.saturating_sub(1) + LEAD_FRAMES);
                if let Some(leaving) = self.keep(captured)? {
                    if self.pre_event.wants(leaving.seq, oldest_useful) {
                        self.encode_ahead(leaving)?;
                    } else {
                        self.spares.give(leaving);
                    }
                }
                self.pre_event.forget_before(oldest_useful, &mut self.spares, &self.pool);
            }
            Decision::Skip => {}
        }
        lap(&mut self.stats.stage_us.encode, t1);
        Ok(())
    }

    /// The one place that decides whether a frame is encoded and sent.
    fn decide(&mut self, state: MotionState, active: bool) -> Decision {
        // A trigger burst goes out whatever the motion state and the send policy.
        if self.burst_left > 0 {
            self.burst_left -= 1;
            if self.burst_left == 0 {
                self.status.set_event_active(state == MotionState::Moving);
            }
            self.in_event = true;
            return Decision::Send;
        }
        match self.config.encode.send {
            SendPolicy::All => Decision::Send,
            SendPolicy::None => Decision::Skip,
            // Nothing moved in this frame of an event: it goes out if motion
            // resumes before the event ends.
            SendPolicy::Motion if state == MotionState::Moving && !active && self.pre_event.raw_capacity() > 0 => Decision::HoldBack,
            SendPolicy::Motion if state == MotionState::Moving => Decision::Send,
            SendPolicy::Motion if self.post_event_left > 0 => {
                self.post_event_left -= 1;
                self.in_event = true;
                Decision::Send
            }
            SendPolicy::Motion => Decision::Keep,
        }
    }

    /// Keeps this frame in the ring; returns the oldest one kept raw if it
    /// no longer fits.
    fn keep(&mut self, captured: &mut Captured) -> Result<Option<FrameBuf>> {
        if let Captured::Lent(_) = captured {
            self.spare_ready()?;
        }
        Ok(self.pre_event.push(captured, &mut self.spares))
    }

    /// Sends the kept frames from sequence number `first` on, in capture
    /// order, and forgets the older ones.
    fn send_kept(&mut self, first: u64) -> Result<()> {
        // Frames being encoded ahead come back first.
        while self.pre_event.awaits_encoded() && self.encoder.wait_one(&mut self.spares)? {
            self.release();
        }
        self.release();
        self.pre_event.forget_before(first, &mut self.spares, &self.pool);
        while let Some(kept) = self.pre_event.pop_oldest() {
            match kept {
                Kept::Encoded(mut message) => {
                    message.durable = self.durable();
                    self.stats.encoded += 1;
                    self.pass(message);
                    self.release();
                }
                Kept::Raw(mut frame) => {
                    let sent = self.send_image(&mut Captured::Owned(&mut frame), None);
                    self.spares.give(frame);
                    sent?;
                }
            }
        }
        Ok(())
    }

    /// Encodes a frame that may yet be sent before an event, into the ring.
    fn encode_ahead(&mut self, mut frame: FrameBuf) -> Result<()> {
        self.pre_event.encoding(self.handed_to_encoder, frame.seq);
        let message = self.image_message(&frame.as_frame(), None);
        let handed = self.hand_to_encoder(&mut Captured::Owned(&mut frame), message);
        self.spares.give(frame);
        handed
    }

    /// A press of the trigger input: an event and a burst of frames, or
    /// motion detection and sending switched on or off.
    fn trigger(&mut self) -> Result<()> {
        self.presses += 1;
        let text = match self.config.gpio.trigger_mode {
            TriggerMode::Capture => {
                // A press during a burst starts it over: every press is followed by its frames.
                self.burst_left = self.config.gpio.trigger_frames;
                self.status.set_event_active(true);
                info!("trigger pressed: sending {} frames", self.burst_left);
                self.texts.pressed.clone()
            }
            TriggerMode::Arm if !self.armed => {
                self.armed = true;
                // The background is as old as the pause: start again from the scene as it is now.
                let (width, height) = self.size;
                self.detector = MotionDetector::new(&self.config.motion, width, height)?;
                info!("trigger pressed: armed, motion is sent again");
                self.texts.armed.clone()
            }
            TriggerMode::Arm => {
                self.armed = false;
                // An event in progress ends here, and no frame kept from before goes out later.
                self.post_event_left = 0;
                self.status.set_event_active(false);
                self.pre_event.clear(&mut self.spares, &self.pool);
                info!("trigger pressed: disarmed, motion is not sent until the next press");
                self.texts.disarmed.clone()
            }
        };
        self.text_message(MessageKind::Event, &text, self.presses, unix_now(), None);
        Ok(())
    }

    /// Takes what a running node can of a new configuration, all of it or,
    /// when the camera or the detector cannot take their part, nothing.
    fn reload(&mut self, new: Config, source: &mut dyn FrameSource) {
        let plan = match reload::plan(&self.config, &new) {
            Ok(plan) => plan,
            Err(e) => return error!("reload refused, the node keeps its configuration: {e:#}"),
        };
        if !plan.restart.is_empty() {
            warn!("reload: a restart takes {} (systemctl restart camnode); until then it stays as it is", plan.restart.join(", "));
        }
        if plan.changed.is_empty() {
            return info!("reload: nothing to change");
        }
        let config = plan.config;
        // Disarmed by a press, a node whose presses no longer arm would stay so.
        let rearm = !self.armed && config.gpio.trigger_mode != TriggerMode::Arm;
        let detector = if config.motion != self.config.motion || rearm {
            let (width, height) = self.size;
            match MotionDetector::new(&config.motion, width, height) {
                Ok(detector) => Some(detector),
                Err(e) => return error!("reload refused, the node keeps its configuration: [motion]: {e:#}"),
            }
        } else {
            None
        };
        if let Err(e) = source.retune(&config.capture) {
            return error!("reload refused, the node keeps its configuration: {e:#}");
        }
        if let Err(e) = self.encoder.set_quality(config.encode.quality) {
            return error!("reload refused, the node keeps its configuration: [encode] quality: {e:#}");
        }
        if let Some(detector) = detector {
            // A new detector learns the scene afresh: an event in progress ends here.
            if self.detector.report().state == MotionState::Moving {
                self.status.set_event_active(self.burst_left > 0);
                self.text_message(MessageKind::Event, &self.texts.still.clone(), self.stats.frames, unix_now(), None);
            }
            self.detector = detector;
            self.post_event_left = 0;
        }
        if rearm {
            self.armed = true;
            info!("reload: [gpio] trigger_mode is no longer \"arm\": motion is sent again");
        }
        if config.encode.send != SendPolicy::Motion {
            self.pre_event.clear(&mut self.spares, &self.pool);
        }
        self.wait_for_room = waits_for_room(&config.capture, source.is_live());
        self.config = config;
        info!("reloaded: {}", plan.changed.join(", "));
    }

    fn send_image(&mut self, captured: &mut Captured, motion: Option<(f32, &[BoundingBox])>) -> Result<()> {
        let mut message = self.image_message(&captured.frame(), motion);
        message.durable = self.durable();
        self.hand_to_encoder(captured, message)?;
        self.stats.encoded += 1;
        Ok(())
    }

    /// An image message for `frame`, its payload still to be encoded.
    fn image_message(&self, frame: &Frame, motion: Option<(f32, &[BoundingBox])>) -> Message {
        let shape = [frame.height, frame.width, 3];
        let raw = self.config.encode.format == Format::Raw;
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
        let (header_buf, payload) = self.take_buffers();
        Message::new(MessageKind::Image, &header, header_buf, payload)
    }

    /// Images of an event must arrive; with `[spool] keep = "all"`, every image must.
    fn durable(&self) -> bool {
        self.in_event || self.config.spool.keep == SpoolKeep::All
    }

    /// Hands a frame and its message to the encoder, which gives the
    /// message back in turn (see `release`).
    fn hand_to_encoder(&mut self, captured: &mut Captured, message: Message) -> Result<()> {
        self.encoder.encode(captured, message, &mut self.spares)?;
        self.handed_to_encoder += 1;
        self.release();
        Ok(())
    }

    /// Queues a message that needs no encoding behind those with the encoder.
    fn pass(&mut self, message: Message) {
        self.encoder.pass(message);
        self.handed_to_encoder += 1;
    }

    fn event(&mut self, text: &str, frame: &Frame, score: f32) {
        self.text_message(MessageKind::Event, text, frame.seq, frame.timestamp, Some(score));
    }

    fn notice(&mut self, text: &str, seq: u64) {
        self.text_message(MessageKind::Notice, text, seq, unix_now(), None);
    }

    /// `NODE|Heartbeat`, with the node's health in its header.
    fn heartbeat(&mut self, source_dropped: u64) {
        let counts = health::Counts {
            frames: self.stats.frames,
            dropped: self.stats.dropped + source_dropped,
            spool: self.sender.as_ref().and_then(Sender::spool_usage),
        };
        let health = self.health.sample(counts);
        self.text_message_with(MessageKind::Notice, &self.texts.heartbeat.clone(), self.stats.frames, unix_now(), None, Some(&health));
    }

    fn text_message(&mut self, kind: MessageKind, text: &str, seq: u64, ts: f64, score: Option<f32>) {
        self.text_message_with(kind, text, seq, ts, score, None);
    }

    /// A text message; `health`'s keys go into its header beside the usual ones.
    fn text_message_with(&mut self, kind: MessageKind, text: &str, seq: u64, ts: f64, score: Option<f32>, health: Option<&health::Health>) {
        let (header_buf, mut payload) = self.take_buffers();
        payload.extend_from_slice(&self.placeholder);
        let raw = self.config.encode.format == Format::Raw;
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
        let message = match health {
            Some(health) => Message::with_keys(kind, &header, health, header_buf, payload),
            None => Message::new(kind, &header, header_buf, payload),
        };
        self.pass(message);
        self.release();
    }

    /// Gives `slot` a buffer again if a stage kept the frame it held.
    fn restock(&mut self, slot: &mut FrameBuf) -> Result<()> {
        if slot.data.heap_capacity() == 0 {
            self.spare_ready()?;
            *slot = self.spares.take();
        }
        Ok(())
    }

    /// Past the limit of frame buffers, waits for one that an encoder
    /// worker is about to give back rather than make another. With nothing
    /// being encoded (a trigger burst while the ring is full), one more is
    /// made: sending goes first.
    fn spare_ready(&mut self) -> Result<()> {
        while self.spares.must_wait() && self.encoder.wait_one(&mut self.spares)? {}
        Ok(())
    }

    /// Header and payload buffers for a message, the payload with room for
    /// any image of this run, so that no buffer grows later, whichever
    /// message it carries next.
    fn take_buffers(&self) -> Buffers {
        let (header, mut payload) = self.pool.take();
        payload.reserve(self.payload_room);
        (header, payload)
    }

    /// Offers every message whose turn has come, in capture order; frames
    /// encoded ahead go to the ring instead.
    fn release(&mut self) {
        while let Some(message) = self.encoder.next_ready(&mut self.spares) {
            let ticket = self.back_from_encoder;
            self.back_from_encoder += 1;
            if self.pre_event.claims(ticket) {
                self.pre_event.file_encoded(message, &self.pool);
            } else {
                self.offer(message);
            }
        }
    }

    /// Hands a message to the sender. A source without a clock waits for
    /// room; otherwise, on a full queue, the sender spools event messages
    /// and anything else is dropped, counted and logged.
    fn offer(&mut self, mut message: Message) {
        if self.wait_for_room {
            loop {
                let Some(sender) = &self.sender else { return };
                match sender.offer_until(message, Instant::now() + ROOM_CHECK) {
                    Ok(()) => return,
                    Err(back) => message = back,
                }
                if self.quit_requested() {
                    break;
                }
            }
        }
        let Some(sender) = &self.sender else { return };
        if let Err(message) = sender.offer(message) {
            self.stats.dropped += 1;
            self.status.note_drop();
            if self.stats.dropped.is_power_of_two() {
                warn!("send queue full: dropped {} ({} dropped so far)", message.kind.with_article(), self.stats.dropped);
            } else {
                debug!("send queue full: dropped {}", message.kind.with_article());
            }
            self.pool.give(message.header, message.payload);
        }
    }

    /// Takes what came on the control channel while the loop was busy
    /// elsewhere, keeping it for the loop; true once a quit is among it.
    fn quit_requested(&mut self) -> bool {
        loop {
            match self.controls.try_recv() {
                Ok(control) => self.deferred.insert(0, control),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.deferred.insert(0, Control::Quit),
            }
        }
        self.deferred.contains(&Control::Quit)
    }

    fn finish_sending(&mut self, how: Shutdown) {
        if let Some(sender) = self.sender.take() {
            let report = sender.finish(how);
            if report.unsent > 0 {
                warn!("{} messages were not delivered before exit", report.unsent);
            }
            if report.spool.waiting > 0 {
                info!("{} messages wait in the spool for the hub", report.spool.waiting);
            }
            self.stats.spool = report.spool;
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

/// What a detector-only run measured besides the per-frame reports.
#[derive(Clone, Debug, Default)]
pub struct DetectSummary {
    pub frames: u64,
    pub width: usize,
    pub height: usize,
    pub events: u64,
    /// CPU time spent in `MotionDetector::process` per frame: mean, median
    /// and 99th percentile.
    pub mean_us: f64,
    pub median_us: f64,
    pub p99_us: f64,
}

/// Runs only the detector over a source: what `camnode detect` prints. `each`
/// sees the detector after every frame, for its report and debug images.
pub fn detect_frames(config: &Config, mut each: impl FnMut(u64, &MotionDetector) -> Result<()>) -> Result<DetectSummary> {
    let mut source = capture::open(&config.capture)
        .with_context(|| format!("cannot open source \"{}\"", config.capture.source))?;
    let (width, height) = source.size();
    let mut detector = MotionDetector::new(&config.motion, width, height)?;
    let mut summary = DetectSummary { width, height, ..Default::default() };
    let mut nanos = Vec::new();
    while let Some(frame) = source.next_frame()? {
        if config.capture.frames > 0 && summary.frames >= config.capture.frames {
            break;
        }
        let started = thread_cpu_time();
        let event = detector.process(&frame).event;
        nanos.push((thread_cpu_time() - started).as_nanos() as u64);
        summary.events += (event == Some(MotionEvent::Started)) as u64;
        each(summary.frames, &detector)?;
        summary.frames += 1;
    }
    if !nanos.is_empty() {
        summary.mean_us = nanos.iter().sum::<u64>() as f64 / nanos.len() as f64 / 1e3;
        nanos.sort_unstable();
        summary.median_us = nanos[nanos.len() / 2] as f64 / 1e3;
        summary.p99_us = nanos[(nanos.len() - 1) * 99 / 100] as f64 / 1e3;
    }
    Ok(summary)
}

/// Time between frames for sources that do not keep their own pace.
fn pace_of(capture: &CaptureConfig, live: bool) -> Option<Duration> {
    match capture.rate {
        _ if live => None,
        Some(Rate::Max) => None,
        Some(Rate::Fps(fps)) => Some(Duration::from_secs_f64(1.0 / fps)),
        None => Some(Duration::from_secs_f64(1.0 / DEFAULT_FILE_FPS)),
    }
}

/// Whether the source waits for room in the send queue rather than drop:
/// one with no clock of its own at `--rate max`.
fn waits_for_room(capture: &CaptureConfig, live: bool) -> bool {
    capture.rate == Some(Rate::Max) && !live
}

fn heartbeat_of(node: &NodeConfig) -> Option<Duration> {
    (node.heartbeat > 0.0).then(|| Duration::from_secs_f64(node.heartbeat))
}

/// Sends a state to systemd; failing to is worth a line in the log, not an exit.
fn tell_systemd(systemd: &Notifier, state: Notify) {
    if let Err(e) = systemd.notify(state) {
        warn!("{e:#}");
    }
}
