//! The `[motion]` config block, with its defaults beside the fields.

use serde::{Deserialize, Serialize};

use crate::config::Checker;

/// Settings of the motion detector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotionConfig {
    /// Width of the luma grid the detector works on, in cells (default 128).
    pub grid_width: usize,
    /// How fast the background follows the scene, 0..1 per frame (default 0.5, imagenode's).
    pub background_alpha: f32,
    /// Luma difference from the background that marks a cell as changed, 1..255 (default 5).
    pub pixel_threshold: u8,
    /// Share of the ROI that must change for a frame to count as moving, in percent (default 3).
    pub min_area_percent: f32,
    /// Moving frames in a row that start an event (default 3).
    pub min_motion_frames: u32,
    /// Still frames in a row that end an event (default 3).
    pub min_still_frames: u32,
    /// Frames before an event's start that are sent with it, kept raw until
    /// the event is confirmed (default 3, so the frames that confirmed it are not lost).
    pub pre_event_frames: usize,
    /// Frames sent after an event ends (default 0).
    pub post_event_frames: u32,
    /// Regions of interest as fractions of the frame, `[x, y, w, h]`; empty means the whole frame.
    pub roi: Vec<RoiRect>,
}

/// A rectangle in fractions of the frame: `[x, y, width, height]`, each 0..1.
pub type RoiRect = [f32; 4];

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            grid_width: 128,
            background_alpha: 0.5,
            pixel_threshold: 5,
            min_area_percent: 3.0,
            min_motion_frames: 3,
            min_still_frames: 3,
            pre_event_frames: 3,
            post_event_frames: 0,
            roi: Vec::new(),
        }
    }
}

impl MotionConfig {
    pub(crate) fn check(&self, check: &mut Checker) {
        check.range("motion", "grid_width", self.grid_width as f64, 8.0, 1024.0);
        check.range("motion", "background_alpha", self.background_alpha as f64, 0.001, 1.0);
        check.range("motion", "pixel_threshold", self.pixel_threshold as f64, 1.0, 255.0);
        check.range("motion", "min_area_percent", self.min_area_percent as f64, 0.0, 100.0);
        check.range("motion", "min_motion_frames", self.min_motion_frames as f64, 1.0, 1000.0);
        check.range("motion", "min_still_frames", self.min_still_frames as f64, 1.0, 100000.0);
        check.range("motion", "pre_event_frames", self.pre_event_frames as f64, 0.0, 300.0);
        check.range("motion", "post_event_frames", self.post_event_frames as f64, 0.0, 100000.0);
        for rect in &self.roi {
            let [x, y, w, h] = *rect;
            let inside = [x, y, w, h].iter().all(|v| (0.0..=1.0).contains(v)) && w > 0.0 && h > 0.0;
            if !inside || x + w > 1.0001 || y + h > 1.0001 {
                check.fail("motion", "roi", &format!("{rect:?}"), "each rectangle is [x, y, w, h] in fractions of the frame, inside 0..1, e.g. [0.0, 0.5, 1.0, 0.5] for the lower half");
            }
        }
    }

    /// Which cells of a `grid_w` x `grid_h` grid lie in the ROI.
    pub fn roi_mask(&self, grid_w: usize, grid_h: usize) -> Vec<bool> {
        if self.roi.is_empty() {
            return vec![true; grid_w * grid_h];
        }
        let mut mask = vec![false; grid_w * grid_h];
        for [x, y, w, h] in &self.roi {
            let to_cells = |start: f32, len: f32, n: usize| {
                let a = (start * n as f32).floor() as usize;
                let b = ((start + len) * n as f32).ceil() as usize;
                a.min(n)..b.min(n)
            };
            for gy in to_cells(*y, *h, grid_h) {
                for gx in to_cells(*x, *w, grid_w) {
                    mask[gy * grid_w + gx] = true;
                }
            }
        }
        mask
    }
}
