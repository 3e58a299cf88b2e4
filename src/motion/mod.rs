//! Motion detection on a downscaled luma plane.
//!
//! The detector decides what gets encoded and sent, so everything it needs
//! lives here: the downscaler, the background model, the per-frame score and
//! the event hysteresis. It only reads the Y plane, shrunk to a small grid
//! once per frame, which keeps it cheap on a Pi Zero.
//!
//! v1 (imagenode's algorithm on a grid): running-average background, a
//! difference threshold, the changed share of a rectangular ROI as the score,
//! and `min_motion_frames` / `min_still_frames` hysteresis.

mod config;
mod hysteresis;

use std::fmt;

use anyhow::Result;
use serde::Serialize;

use crate::frame::Frame;
pub use config::{MotionConfig, RoiRect};
pub use hysteresis::Hysteresis;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Changed share of the region of interest, in percent.
    pub score: f32,
    /// The score at or above which a frame counts as moving.
    pub threshold: f32,
    /// This frame alone shows motion (before hysteresis).
    pub active: bool,
    /// The event state after hysteresis.
    pub state: MotionState,
    /// Set on the frame where an event starts or ends.
    pub event: Option<MotionEvent>,
    /// Changed regions, in full-frame pixels.
    pub boxes: Vec<BoundingBox>,
}

/// The motion detector: feed it every frame in order.
pub struct MotionDetector {
    config: MotionConfig,
    grid: LumaGrid,
    background: Vec<f32>,
    /// Grid cells inside the ROI.
    roi_mask: Vec<bool>,
    roi_cells: usize,
    primed: bool,
    hysteresis: Hysteresis,
    report: MotionReport,
}

impl MotionDetector {
    /// A detector for frames of `width` x `height`.
    pub fn new(config: &MotionConfig, width: usize, height: usize) -> Result<Self> {
        let grid = LumaGrid::new(width, height, config.grid_width);
        let roi_mask = config.roi_mask(grid.width, grid.height);
        let roi_cells = roi_mask.iter().filter(|&&inside| inside).count();
        anyhow::ensure!(roi_cells > 0, "[motion] roi covers no part of the {width}x{height} frame; widen it");
        Ok(MotionDetector {
            config: config.clone(),
            background: vec![0.0; grid.width * grid.height],
            grid,
            roi_mask,
            roi_cells,
            primed: false,
            hysteresis: Hysteresis::new(config.min_motion_frames, config.min_still_frames),
            report: MotionReport::default(),
        })
    }

    /// Scores one frame and advances the event state.
    pub fn process(&mut self, frame: &Frame) -> &MotionReport {
        self.grid.sample(frame);
        let luma = &self.grid.cells;
        if !self.primed {
            for (bg, &v) in self.background.iter_mut().zip(luma) {
                *bg = v as f32;
            }
            self.primed = true;
        }
        let alpha = self.config.background_alpha;
        let threshold = self.config.pixel_threshold as f32;
        let mut changed = 0usize;
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for (i, (bg, &v)) in self.background.iter_mut().zip(luma).enumerate() {
            let v = v as f32;
            if self.roi_mask[i] && (v - *bg).abs() > threshold {
                changed += 1;
                let (x, y) = (i % self.grid.width, i / self.grid.width);
                (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            }
            *bg += alpha * (v - *bg);
        }
        let report = &mut self.report;
        report.score = 100.0 * changed as f32 / self.roi_cells as f32;
        report.threshold = self.config.min_area_percent;
        report.active = changed > 0 && report.score >= report.threshold;
        report.boxes.clear();
        if report.active {
            report.boxes.push(self.grid.to_frame_box(x0, y0, x1, y1));
        }
        report.event = self.hysteresis.update(report.active);
        report.state = self.hysteresis.state();
        report
    }
}

/// The luma plane averaged down to a small grid of cells.
struct LumaGrid {
    width: usize,
    height: usize,
    /// Frame pixels per cell, horizontally and vertically.
    cell_w: usize,
    cell_h: usize,
    cells: Vec<u8>,
    /// Per-cell sums of the grid row being built.
    row_sums: Vec<u32>,
}

impl LumaGrid {
    fn new(frame_width: usize, frame_height: usize, grid_width: usize) -> Self {
        let cell = (frame_width / grid_width.max(1)).max(1);
        let (width, height) = ((frame_width / cell).max(1), (frame_height / cell).max(1));
        LumaGrid { width, height, cell_w: cell, cell_h: cell, cells: vec![0; width * height], row_sums: vec![0; width] }
    }

    /// Averages each cell's pixels (rows summed, then divided once).
    fn sample(&mut self, frame: &Frame) {
        let area = (self.cell_w * self.cell_h) as u32;
        for gy in 0..self.height {
            let sums = &mut self.row_sums;
            sums.fill(0);
            for dy in 0..self.cell_h {
                let row = frame.y.row(gy * self.cell_h + dy, self.width * self.cell_w);
                for (sum, chunk) in sums.iter_mut().zip(row.chunks_exact(self.cell_w)) {
                    *sum += chunk.iter().map(|&p| p as u32).sum::<u32>();
                }
            }
            for (cell, sum) in self.cells[gy * self.width..(gy + 1) * self.width].iter_mut().zip(sums.iter()) {
                *cell = (sum / area) as u8;
            }
        }
    }

    fn to_frame_box(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> BoundingBox {
        BoundingBox {
            x: (x0 * self.cell_w) as u32,
            y: (y0 * self.cell_h) as u32,
            width: ((x1 - x0 + 1) * self.cell_w) as u32,
            height: ((y1 - y0 + 1) * self.cell_h) as u32,
        }
    }
}
