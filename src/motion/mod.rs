//! Motion detection on a downscaled luma plane.
//!
//! The detector decides what gets encoded and sent, so everything it needs
//! lives here. It only reads the Y plane, shrunk once per frame to a grid of
//! cells about 128 wide ([`grid`]), which keeps it cheap on a Pi Zero; every
//! later step costs the same whatever the camera's resolution. Per frame:
//!
//! 1. **Light** ([`light`]): the background is relit to the current frame's
//!    illumination with a tone curve and a smooth gain field estimated from
//!    medians over the watched area. Clouds, dusk, auto-exposure, lamps and
//!    IR switches change the whole picture; people change a small part of
//!    it, which medians ignore. A sudden jump of the light (a switch) is not
//!    trusted to the model: the background is relearnt from that frame,
//!    except under the objects being followed, so the detector is blind for
//!    one frame and never reports what the model could not explain.
//! 2. **Noise**: the sensor noise of a cell is measured every frame as the
//!    median absolute residual (robust to the moving part), so a cell changes
//!    when it differs from the background by `noise_factor` times the noise,
//!    and never by less than `pixel_threshold`. Each cell also learns how
//!    much it flickers by itself (leaves, water, a flag) and raises its own
//!    threshold: from residuals clipped to a few times its current spread,
//!    so a person passing teaches it little and foliage that keeps moving
//!    teaches it fast, faster still when the cell flips between brighter and
//!    darker or keeps switching on and off, which objects do not do.
//! 3. **Blobs** ([`blobs`]): changed cells are grouped. A blob is a moving
//!    object when it has a seed (a cell well above threshold), has cells that
//!    changed since the last two frames (so a stopped object, or the ghost
//!    of one that left, stops counting at once), and changes coherently
//!    (leaves and speckle change neighbouring cells in opposite directions).
//!    It counts once seen for `min_blob_frames` frames in a row near where it
//!    was, and when it covers `min_area_percent` of the watched area: small
//!    enough for a person far away. Small blobs must also overlap themselves
//!    from frame to frame, persist three times as long and travel: rain,
//!    speckle and a twig waving on the spot do none of these.
//! 4. **Learning**: the background follows the scene at `background_alpha`
//!    per frame, four times slower under moving objects so that a slow walker
//!    is not absorbed. A change of most of the picture at once
//!    (`light_reset_percent`) can only be light the model missed, and is
//!    relearnt like a light jump.
//! 5. **Events** ([`hysteresis`]): `min_motion_frames` moving frames start an
//!    event, `min_still_frames` still ones end it.
//!
//! The report carries a score (the largest object that passed every test
//! but the size, in percent of the watched area) against its threshold
//! (`min_area_percent`), so that the score reaches the threshold exactly when
//! the frame shows motion, and the boxes of the accepted objects. It also
//! says for how many frames the detector has been following what it sees:
//! a small object is accepted only after several frames, and the frames
//! from when it was first seen are what the pipeline sends before the
//! event's start. All buffers are sized in
//! [`MotionDetector::new`]; `process` allocates nothing.

mod blobs;
mod config;
mod debug;
mod grid;
mod hysteresis;
mod light;
mod mask;
pub mod plot;

use std::fmt;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::frame::Frame;
use blobs::{flags, Blobs, Verdict};
pub use config::{MotionConfig, RoiRect};
use grid::LumaGrid;
pub use hysteresis::Hysteresis;
use light::Relight;
use mask::Pgm;

/// How fast a cell learns its own flicker, per frame.
const FLICKER_RATE: f32 = 1.0 / 32.0;
/// A cell's threshold is at least this many times its own flicker (as a standard deviation).
const FLICKER_FACTOR: f32 = 3.0;
/// Flicker learning clips each residual to this many times the cell's spread.
const FLICKER_CLIP: f32 = 4.0;
/// A seed differs by this many times the cell's threshold.
const SEED_FACTOR: f32 = 1.5;
/// Blobs whose neighbouring cells change alike less often than this flicker.
const MIN_COHERENCE: f32 = 0.8;
/// A cell that changed in the opposite direction from the last frame is
/// flickering, not covered by an object: it learns its flicker this much faster.
const FLIP_SPEEDUP: f32 = 8.0;
/// Cells under accepted objects learn flicker this much slower, so that a
/// person waving on the spot is learnt only if they keep at it.
const OBJECT_FLICKER_SLOWDOWN: f32 = 4.0;
/// A frame whose light compensation moved the background by more than this
/// share on average is a light jump (a switch, not clouds or dusk, which
/// take a few percent per frame at most): the background is relearnt from
/// it, so the detector is blind for this one frame and never reports
/// whatever the compensation could not model.
const LIGHT_JUMP: f32 = 0.10;
/// Moving objects need at least this many cells that changed against the
/// recent frames; one such cell in a fading ghost is noise.
const MIN_MOVING_CELLS: u32 = 2;
/// At least 1 in this many cells of a small moving object changed the same
/// way in the last frame too: an object overlaps itself from frame to frame,
/// the speckle of leaves and rain mostly does not.
const STEADY_SHARE: u32 = 4;
/// Blobs smaller than this many times the minimum area count as small, and
/// must be seen moving for this many times `min_blob_frames`.
const SMALL_BLOB_FACTOR: u32 = 8;
const SMALL_BLOB_PERSISTENCE: u32 = 3;
/// Cells a small object must have travelled since it was first seen.
const SMALL_BLOB_TRAVEL: u16 = 2;
/// A cell where changes started more often than this per frame, lately, is
/// flickering (leaves, water, rain streaks): an object crossing a cell
/// changes it once, foliage turns it on and off again and again. Such a
/// cell needs twice the difference to count.
const TOGGLING: f32 = 0.15;
const TOGGLE_RATE: f32 = 1.0 / 16.0;
/// How fast the noise estimate follows the measured noise, per frame.
const NOISE_RATE: f32 = 0.1;
/// Share of `background_alpha` at which moving objects are learnt.
const OBJECT_ALPHA_SHARE: f32 = 0.25;
/// |residual| histogram for the noise: 8 buckets per luma level, up to 32 levels.
const NOISE_BUCKETS_PER_LEVEL: f32 = 8.0;
const NOISE_BUCKETS: usize = 256;
/// Boxes reported per frame, largest first.
pub const MAX_BOXES: usize = 16;

/// Whether the scene is in a motion event, after hysteresis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MotionState {
    #[default]
    Still,
    Moving,
}

impl fmt::Display for MotionState {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            MotionState::Still => "still",
            MotionState::Moving => "moving",
        })
    }
}

/// A state change, reported on the frame where it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MotionEvent {
    Started,
    Ended,
}

/// A region that changed, in full-frame pixel coordinates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoundingBox {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Serialize for BoundingBox {
    /// `[x, y, w, h]`, compact in every message header.
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        [self.x, self.y, self.width, self.height].serialize(s)
    }
}

/// What the detector says about one frame. Reused across frames, so the
/// steady state allocates nothing.
#[derive(Clone, Debug, Default)]
pub struct MotionReport {
    /// Size of the largest moving object that passed every test but the
    /// size, in percent of the watched area.
    pub score: f32,
    /// The score at or above which a frame counts as moving (`min_area_percent`).
    pub threshold: f32,
    /// This frame alone shows motion (before hysteresis).
    pub active: bool,
    /// The event state after hysteresis.
    pub state: MotionState,
    /// Set on the frame where an event starts or ends.
    pub event: Option<MotionEvent>,
    /// Moving objects, largest first, in full-frame pixels.
    pub boxes: Vec<BoundingBox>,
    /// The light changed beyond compensation and the background was relearnt.
    pub light_jump: bool,
    /// Frames in a row, this one included, in which the longest-followed
    /// accepted object has been seen, first as a candidate (0: none is
    /// accepted). On the frame that starts an event, the `seen_for - 1`
    /// frames before it already showed what started it.
    pub seen_for: u32,
    /// The same for every object followed, candidates included: frames
    /// older than this cannot show anything that may still become an event.
    pub followed_for: u32,
}

/// The motion detector: feed it every frame in order.
pub struct MotionDetector {
    config: MotionConfig,
    grid: LumaGrid,
    /// Cells inside the ROI and the mask.
    watched: Vec<bool>,
    watched_cells: usize,
    min_blob_cells: u32,
    background: Vec<f32>,
    /// The residuals of the previous frame and the one before. This frame's
    /// residual minus one of them is what changed since, with the light
    /// already taken out (each was measured against a relit background).
    past_residuals: [Vec<f32>; 2],
    /// Per cell, the variance of its residual when nothing moves there.
    flicker: Vec<f32>,
    /// Sensor noise of one cell (a standard deviation), followed over frames;
    /// negative until the first measurement.
    noise: f32,
    light: Relight,
    /// This frame's residual (luma minus relit background) and thresholds.
    residual: Vec<f32>,
    threshold: Vec<f32>,
    cell_flags: Vec<u8>,
    /// Last frame's flags, to see cells flip between brighter and darker.
    last_flags: Vec<u8>,
    blobs: Blobs,
    /// Per cell, how often a change started there lately (per frame).
    toggles: Vec<f32>,
    noise_hist: Vec<u32>,
    /// Indices of accepted blobs, for ordering the boxes.
    accepted: Vec<u32>,
    primed: bool,
    hysteresis: Hysteresis,
    report: MotionReport,
}

impl MotionDetector {
    /// A detector for frames of `width` x `height`.
    pub fn new(config: &MotionConfig, width: usize, height: usize) -> Result<Self> {
        let grid = LumaGrid::new(width, height, config.grid_width);
        let (gw, gh) = (grid.width, grid.height);
        let mask = match &config.mask_file {
            Some(path) => Some(Pgm::read(path).with_context(|| {
                format!(
                    "[motion] mask_file = {:?}: save it as a greyscale PGM (P5 or P2), white where motion counts",
                    path.display().to_string()
                )
            })?),
            None => None,
        };
        let watched = mask::watched_cells(&config.roi_mask(gw, gh), mask.as_ref(), gw, gh, grid.cell, (width, height));
        let watched_cells = watched.iter().filter(|&&w| w).count();
        anyhow::ensure!(
            watched_cells > 0,
            "[motion] roi and mask_file leave no part of the {width}x{height} frame to watch; widen the roi or whiten the mask"
        );
        let min_blob_cells = ((config.min_area_percent / 100.0 * watched_cells as f32).ceil() as u32).max(1);
        let cells = gw * gh;
        Ok(MotionDetector {
            config: config.clone(),
            watched,
            watched_cells,
            min_blob_cells,
            background: vec![0.0; cells],
            past_residuals: [vec![0.0; cells], vec![0.0; cells]],
            flicker: vec![0.0; cells],
            noise: -1.0,
            light: Relight::new(gw, gh),
            residual: vec![0.0; cells],
            threshold: vec![0.0; cells],
            cell_flags: vec![0; cells],
            last_flags: vec![0; cells],
            blobs: Blobs::new(gw, gh),
            toggles: vec![0.0; cells],
            noise_hist: vec![0; NOISE_BUCKETS],
            accepted: Vec::with_capacity(cells),
            grid,
            primed: false,
            hysteresis: Hysteresis::new(config.min_motion_frames, config.min_still_frames),
            report: MotionReport { boxes: Vec::with_capacity(MAX_BOXES), ..MotionReport::default() },
        })
    }

    /// Scores one frame and advances the event state.
    pub fn process(&mut self, frame: &Frame) -> &MotionReport {
        self.grid.sample(frame);
        if !self.primed {
            self.primed = true;
            self.relearn(false);
            return self.finish(false);
        }
        let light_jump = self.compensate_light();
        self.measure_noise();
        if self.mark_changed_cells() || light_jump {
            self.relearn(true);
            return self.finish(true);
        }
        let (min_frames, min_cells) = (self.config.min_blob_frames, self.min_blob_cells);
        self.blobs.label(&self.cell_flags);
        self.blobs.classify(|b| b.seeds > 0 && b.moving >= MIN_MOVING_CELLS.min(b.area) && b.coherence() >= MIN_COHERENCE);
        // A small object must overlap itself from the last frame, keep moving
        // for longer and get somewhere: speckle, rain and a waving twig don't.
        let solid = |b: &blobs::Blob| {
            b.area >= SMALL_BLOB_FACTOR * min_cells
                || (b.steady * STEADY_SHARE >= b.area && b.age >= SMALL_BLOB_PERSISTENCE * min_frames && b.travelled() >= SMALL_BLOB_TRAVEL)
        };
        self.blobs.accept(solid, min_frames, min_cells);
        self.learn();
        self.finish(false)
    }

    /// The report of the last processed frame.
    pub fn report(&self) -> &MotionReport {
        &self.report
    }

    /// Relights the background; true on a light jump.
    fn compensate_light(&mut self) -> bool {
        // Last frame's moving objects are left out of the light statistics.
        let (watched, blobs) = (&self.watched, &self.blobs);
        let steady = |i: usize| watched[i] && !matches!(blobs.verdict_at(i), Some(Verdict::Candidate | Verdict::Accepted));
        self.light.estimate(&self.grid.cells, &self.background, steady);
        self.light.apply(&mut self.background);
        self.light.step() > LIGHT_JUMP
    }

    fn measure_noise(&mut self) {
        for ((r, &l), &b) in self.residual.iter_mut().zip(&self.grid.cells).zip(&self.background) {
            *r = l - b;
        }
        // The same quarter of the cells as the light: plenty for a median.
        self.noise_hist.fill(0);
        let top = (NOISE_BUCKETS - 1) as f32;
        for &i in self.light.samples() {
            if self.watched[i as usize] {
                self.noise_hist[(self.residual[i as usize].abs() * NOISE_BUCKETS_PER_LEVEL).min(top) as usize] += 1;
            }
        }
        // For normal noise the median absolute deviation is 0.674 sigma.
        let measured = light::median(&self.noise_hist) / NOISE_BUCKETS_PER_LEVEL * 1.4826;
        self.noise = if self.noise < 0.0 { measured } else { self.noise + NOISE_RATE * (measured - self.noise) };
    }

    /// Sets the flags of every cell; true when so much changed that it can
    /// only be light the compensation could not follow.
    fn mark_changed_cells(&mut self) -> bool {
        let base = (self.config.pixel_threshold as f32).max(self.config.noise_factor * self.noise);
        // Thresholds first, in a loop of its own that vectorises.
        for ((t, &flicker), &toggles) in self.threshold.iter_mut().zip(&self.flicker).zip(&self.toggles) {
            let toggling = if toggles > TOGGLING { 2.0 } else { 1.0 };
            *t = base.max(FLICKER_FACTOR * flicker.sqrt()) * toggling;
        }
        let mut changed = 0;
        // Every per-cell slice cut to one length, so the loop needs no bounds checks.
        let n = self.residual.len();
        let (residual, threshold, watched) = (&self.residual[..n], &self.threshold[..n], &self.watched[..n]);
        let [newest, older] = &self.past_residuals;
        let (newest, older, last_flags, cell_flags) = (&newest[..n], &older[..n], &self.last_flags[..n], &mut self.cell_flags[..n]);
        for i in 0..n {
            let t = threshold[i];
            let r = residual[i];
            let mut f = 0;
            if watched[i] && r.abs() > t {
                changed += 1;
                f = flags::CHANGED;
                if r > 0.0 {
                    f |= flags::BRIGHTER;
                }
                if r.abs() > SEED_FACTOR * t {
                    f |= flags::SEED;
                }
                if (r - newest[i]).abs() > t || (r - older[i]).abs() > t {
                    f |= flags::MOVING;
                }
                let last = last_flags[i];
                if last & flags::CHANGED != 0 && (last ^ f) & flags::BRIGHTER == 0 {
                    f |= flags::STEADY;
                }
            }
            cell_flags[i] = f;
        }
        changed as f32 > self.config.light_reset_percent / 100.0 * self.watched_cells as f32
    }

    /// Background, flicker and past residuals learn from this frame.
    fn learn(&mut self) {
        let alpha = self.config.background_alpha;
        let noise_var = self.noise * self.noise;
        // Every per-cell slice cut to one length, so the loop needs no bounds checks.
        let n = self.grid.cells.len();
        let (residual, background) = (&self.residual[..n], &mut self.background[..n]);
        let [newest, older] = &mut self.past_residuals;
        let (newest, older) = (&mut newest[..n], &mut older[..n]);
        let (cell_flags, last_flags) = (&self.cell_flags[..n], &self.last_flags[..n]);
        let (toggles, flicker) = (&mut self.toggles[..n], &mut self.flicker[..n]);
        let verdicts = &self.blobs.verdicts()[..n];
        for i in 0..n {
            let verdict = verdicts[i];
            let on_object = matches!(verdict, Some(Verdict::Candidate | Verdict::Accepted));
            let rate = if on_object { alpha * OBJECT_ALPHA_SHARE } else { alpha };
            let r = residual[i];
            let learnt = rate * r;
            background[i] += learnt;
            // Past residuals stay relative to the background as it is now,
            // so that its slow learning never looks like motion.
            older[i] = newest[i] - learnt;
            newest[i] = r - learnt;
            let (now, last) = (cell_flags[i], last_flags[i]);
            let flipped = (now & last & flags::CHANGED != 0) && ((now ^ last) & flags::BRIGHTER != 0);
            let rate = match verdict {
                Some(Verdict::Accepted) => FLICKER_RATE / OBJECT_FLICKER_SLOWDOWN,
                _ if flipped => FLICKER_RATE * FLIP_SPEEDUP,
                _ => FLICKER_RATE,
            };
            let started = now & !last & flags::CHANGED != 0;
            toggles[i] += TOGGLE_RATE * (started as u32 as f32 - toggles[i]);
            let spread = flicker[i].max(noise_var);
            let r2 = (r * r).min(FLICKER_CLIP * FLICKER_CLIP * spread);
            flicker[i] += rate * (r2 - flicker[i]);
        }
        std::mem::swap(&mut self.cell_flags, &mut self.last_flags);
    }

    /// Takes the current frame as the background: all of it on the first
    /// frame, and after a light jump all but the cells under last frame's
    /// moving objects, which keep their relit background so that the objects
    /// stay visible instead of being learnt into it.
    fn relearn(&mut self, keep_objects: bool) {
        for (i, &luma) in self.grid.cells.iter().enumerate() {
            if keep_objects && matches!(self.blobs.verdict_at(i), Some(Verdict::Candidate | Verdict::Accepted)) {
                continue;
            }
            self.background[i] = luma;
            self.past_residuals[0][i] = 0.0;
            self.past_residuals[1][i] = 0.0;
            self.last_flags[i] = 0;
        }
        self.cell_flags.fill(0);
        self.residual.fill(0.0);
        self.blobs.forget();
    }

    fn finish(&mut self, light_jump: bool) -> &MotionReport {
        let report = &mut self.report;
        report.light_jump = light_jump;
        report.threshold = self.config.min_area_percent;
        report.boxes.clear();
        let mut largest = 0;
        self.accepted.clear();
        if !light_jump && self.primed {
            for (index, blob) in self.blobs.list.iter().enumerate() {
                if blob.credible {
                    largest = largest.max(blob.area);
                }
                if blob.verdict == Verdict::Accepted {
                    self.accepted.push(index as u32);
                }
            }
        }
        let blobs = &self.blobs.list;
        self.accepted.sort_unstable_by_key(|&i| std::cmp::Reverse(blobs[i as usize].area));
        for &i in self.accepted.iter().take(MAX_BOXES) {
            let b = &blobs[i as usize];
            let [x, y, width, height] = self.grid.to_frame_rect(b.x0 as usize, b.y0 as usize, b.x1 as usize, b.y1 as usize);
            report.boxes.push(BoundingBox { x, y, width, height });
        }
        report.score = 100.0 * largest as f32 / self.watched_cells as f32;
        report.active = !self.accepted.is_empty();
        report.seen_for = self.accepted.iter().map(|&i| blobs[i as usize].age).max().unwrap_or(0);
        report.followed_for = self.blobs.followed_for();
        report.event = self.hysteresis.update(report.active);
        report.state = self.hysteresis.state();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuf;

    const W: usize = 320;
    const H: usize = 240;

    /// A textured scene with sensor noise; `object` is an optional dark
    /// rectangle `(x, y, w, h)` and `gain` the light. With `waving`, a patch
    /// of foliage whose leaves shift at random every frame.
    struct Scene {
        buf: FrameBuf,
        rng: u64,
        waving: bool,
    }

    impl Scene {
        fn new() -> Self {
            Scene { buf: FrameBuf::new(W, H), rng: 0x2545_F491_4F6C_DD1D, waving: false }
        }

        fn frame(&mut self, object: Option<(usize, usize, usize, usize)>, gain: f32) -> Frame<'_> {
            let (y_plane, _, _) = self.buf.planes_mut();
            // Leaves 3 pixels wide in a 60x40 patch, shifted 0-2 pixels each frame.
            let sway = (self.rng % 3) as usize;
            for (i, p) in y_plane.iter_mut().enumerate() {
                let (x, y) = (i % W, i / W);
                let mut v = 60.0 + 100.0 * y as f32 / H as f32 + if (x / 16 + y / 8) % 2 == 0 { 15.0 } else { 0.0 };
                if self.waving && (220..280).contains(&x) && (20..60).contains(&y) {
                    v = if ((x + sway) / 3 + (y / 4) * 7) % 5 < 2 { 70.0 } else { 120.0 };
                }
                if let Some((ox, oy, ow, oh)) = object {
                    if (ox..ox + ow).contains(&x) && (oy..oy + oh).contains(&y) {
                        v = 30.0;
                    }
                }
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                let noise = (self.rng % 7) as f32 - 3.0;
                *p = (v * gain + noise).clamp(0.0, 255.0) as u8;
            }
            self.buf.as_frame()
        }
    }

    fn detector() -> MotionDetector {
        MotionDetector::new(&MotionConfig::default(), W, H).unwrap()
    }

    #[test]
    fn a_noisy_still_scene_never_moves() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        for _ in 0..150 {
            let report = detector.process(&scene.frame(None, 1.0));
            assert!(!report.active && report.boxes.is_empty(), "score {}", report.score);
        }
    }

    #[test]
    fn a_far_away_person_is_found_and_boxed() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        for _ in 0..20 {
            detector.process(&scene.frame(None, 1.0));
        }
        // 6x14 pixels: 0.11 % of the frame, walking 2 pixels a frame: a
        // small object, which counts only once followed for several frames.
        let mut first_seen = None;
        for step in 0..60 {
            let x = 40 + 2 * step;
            let report = detector.process(&scene.frame(Some((x, 120, 6, 14)), 1.0));
            assert_eq!(report.followed_for as usize, step + 1, "followed since it appeared, at step {step}");
            if report.active {
                if first_seen.is_none() {
                    // The frames before an event that show it: all since it appeared.
                    assert_eq!(report.seen_for as usize, step + 1);
                }
                first_seen.get_or_insert(step);
                let b = report.boxes[0];
                assert!(b.x <= x as u32 + 6 && b.x + b.width >= x as u32, "box {b:?} misses x = {x}");
                assert!(b.y <= 134 && b.y + b.height >= 120, "box {b:?}");
            }
            if step >= 10 {
                assert!(report.active, "lost the person at step {step}");
            }
        }
        assert!((3..=8).contains(&first_seen.unwrap()), "seen first at step {first_seen:?}");
        assert_eq!(detector.report().state, MotionState::Moving);
    }

    #[test]
    fn waving_leaves_are_never_accepted_nor_followed_for_long() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        scene.waving = true;
        for t in 0..300 {
            let report = detector.process(&scene.frame(None, 1.0));
            assert!(!report.active && report.seen_for == 0 && report.event.is_none(), "frame {t}: score {}", report.score);
            // Frames before it are kept as JPEGs in case an event starts.
            assert!(report.followed_for <= 4, "frame {t}: leaves followed for {} frames", report.followed_for);
        }
    }

    #[test]
    fn an_object_that_stops_stops_counting() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        for _ in 0..10 {
            detector.process(&scene.frame(None, 1.0));
        }
        for step in 0..30 {
            detector.process(&scene.frame(Some((40 + 3 * step, 100, 20, 50)), 1.0));
        }
        assert!(detector.report().active);
        let parked = Some((40 + 3 * 29, 100, 20, 50));
        let still: Vec<bool> = (0..20).map(|_| detector.process(&scene.frame(parked, 1.0)).active).collect();
        assert!(still[2..].iter().all(|&a| !a), "still reported after stopping: {still:?}");
    }

    #[test]
    fn a_light_switch_is_relearnt_and_motion_after_it_is_seen() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        for _ in 0..20 {
            detector.process(&scene.frame(None, 1.0));
        }
        let report = detector.process(&scene.frame(None, 0.5));
        assert!(report.light_jump && !report.active);
        for _ in 0..20 {
            let report = detector.process(&scene.frame(None, 0.5));
            assert!(!report.active && !report.light_jump);
        }
        let moving = (0..10).filter(|step| detector.process(&scene.frame(Some((60 + 4 * step, 80, 24, 60)), 0.5)).active).count();
        assert!(moving >= 8, "only {moving} of 10 frames moving after the switch");
    }

    #[test]
    fn slow_light_changes_are_followed() {
        let (mut scene, mut detector) = (Scene::new(), detector());
        // Down to 40 % over 200 frames and back, faster than most dusks.
        for t in 0..400 {
            let gain = 1.0 - 0.6 * (std::f32::consts::PI * t as f32 / 399.0).sin();
            let report = detector.process(&scene.frame(None, gain));
            assert!(!report.active && !report.light_jump, "frame {t}: score {}", report.score);
        }
    }

    #[test]
    fn motion_outside_the_roi_and_mask_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mask = dir.path().join("mask.pgm");
        // Black (ignored) left half, white right half, at a quarter of the frame size.
        let mut pgm = format!("P5\n{} {}\n255\n", W / 4, H / 4).into_bytes();
        pgm.extend((0..W / 4 * H / 4).map(|i| if i % (W / 4) < W / 8 { 0u8 } else { 255 }));
        std::fs::write(&mask, pgm).unwrap();
        let config = MotionConfig { mask_file: Some(mask), roi: vec![[0.0, 0.0, 1.0, 0.5]], ..Default::default() };
        let mut detector = MotionDetector::new(&config, W, H).unwrap();
        let mut scene = Scene::new();
        let mut ignored = |object: fn(usize) -> (usize, usize, usize, usize)| {
            (0..40).all(|step| !detector.process(&scene.frame(Some(object(step)), 1.0)).active)
        };
        assert!(ignored(|step| (20 + step, 20, 20, 40)), "moved in the masked left half");
        assert!(ignored(|step| (200 + step, 150, 20, 40)), "moved below the roi");
        assert!(!ignored(|step| (200 + 2 * step, 20, 20, 40)), "motion inside both was missed");
    }

    #[test]
    fn an_unreadable_mask_names_the_setting() {
        let config = MotionConfig { mask_file: Some("/nonexistent/mask.pgm".into()), ..Default::default() };
        let err = format!("{:#}", MotionDetector::new(&config, W, H).err().unwrap());
        assert!(err.contains("[motion] mask_file") && err.contains("/nonexistent/mask.pgm"), "{err}");
    }
}
