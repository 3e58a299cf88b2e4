//! The `[motion]` config block, with its defaults beside the fields.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::Checker;

/// Settings of the motion detector. The defaults are what the evaluation in
/// `eval/` measures; most cameras need nothing else than an ROI or a mask.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MotionConfig {
    /// Width of the luma grid the detector works on, in cells of at least 4x4 pixels (default 128).
    pub grid_width: usize,
    /// How fast the background follows the scene, 0..1 per frame (default 0.05).
    pub background_alpha: f32,
    /// Smallest luma difference from the background that marks a cell as
    /// changed, 1..255; the detector raises it with the measured noise (default 3).
    pub pixel_threshold: u8,
    /// A cell changes when it differs from the background by this many times
    /// the measured sensor noise (default 4).
    pub noise_factor: f32,
    /// Smallest moving object that counts, in percent of the watched area (default 0.05).
    pub min_area_percent: f32,
    /// Frames in a row an object must be seen moving before it counts; 1
    /// reacts at once, more ignores rain and insects (default 2).
    pub min_blob_frames: u32,
    /// Share of the watched area, in percent, that may change at once before
    /// the detector takes it for a jump of the light that it could not
    /// compensate and relearns the background instead of reporting motion (default 60).
    pub light_reset_percent: f32,
    /// Moving frames in a row that start an event (default 3).
    pub min_motion_frames: u32,
    /// Still frames in a row that end an event: the quiet time, or event gap (default 3).
    pub min_still_frames: u32,
    /// The most frames before an event's start that are sent with it: those
    /// from just before the detector first saw what started it, which for a
    /// small or far-away object can be several frames before it counted.
    /// The newest 3 are kept raw, older ones JPEG-encoded while the detector
    /// follows something (with `format = "raw"` all are kept raw) (default 10).
    pub pre_event_frames: usize,
    /// Frames sent after an event ends (default 0).
    pub post_event_frames: u32,
    /// Regions of interest as fractions of the frame, `[x, y, w, h]`; empty means the whole frame.
    pub roi: Vec<RoiRect>,
    /// A PGM image (any size, stretched over the frame): white areas are
    /// watched, black ones ignored, as Motion's mask_file (default: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_file: Option<PathBuf>,
}

/// A rectangle in fractions of the frame: `[x, y, width, height]`, each 0..1.
pub type RoiRect = [f32; 4];

impl Default for MotionConfig {
    fn default() -> Self {
        MotionConfig {
            grid_width: 128,
            background_alpha: 0.05,
            pixel_threshold: 3,
            noise_factor: 4.0,
            min_area_percent: 0.05,
            min_blob_frames: 2,
            light_reset_percent: 60.0,
            min_motion_frames: 3,
            min_still_frames: 3,
            pre_event_frames: 10,
            post_event_frames: 0,
            roi: Vec::new(),
            mask_file: None,
        }
    }
}

impl MotionConfig {
    pub(crate) fn check(&self, check: &mut Checker) {
        check.range("motion", "grid_width", self.grid_width as f64, 8.0, 1024.0);
        check.range("motion", "background_alpha", self.background_alpha as f64, 0.001, 1.0);
        check.range("motion", "pixel_threshold", self.pixel_threshold as f64, 1.0, 255.0);
        check.range("motion", "noise_factor", self.noise_factor as f64, 1.0, 20.0);
        check.range("motion", "min_area_percent", self.min_area_percent as f64, 0.0, 100.0);
        check.range("motion", "min_blob_frames", self.min_blob_frames as f64, 1.0, 100.0);
        check.range("motion", "light_reset_percent", self.light_reset_percent as f64, 10.0, 100.0);
        check.range("motion", "min_motion_frames", self.min_motion_frames as f64, 1.0, 1000.0);
        check.range("motion", "min_still_frames", self.min_still_frames as f64, 1.0, 100000.0);
        check.range("motion", "pre_event_frames", self.pre_event_frames as f64, 0.0, 300.0);
        check.range("motion", "post_event_frames", self.post_event_frames as f64, 0.0, 100000.0);
        for rect in &self.roi {
            let [x, y, w, h] = *rect;
            let inside = [x, y, w, h].iter().all(|v| (0.0..=1.0).contains(v)) && w > 0.0 && h > 0.0;
            if !inside || x + w > 1.0001 || y + h > 1.0001 {
                check.fail(
                    "motion",
                    "roi",
                    &format!("{rect:?}"),
                    "each rectangle is [x, y, w, h] in fractions of the frame, inside 0..1, e.g. [0.0, 0.5, 1.0, 0.5] for the lower half",
                );
            }
        }
        if let Some(path) = &self.mask_file {
            if !path.is_file() {
                check.fail(
                    "motion",
                    "mask_file",
                    &format!("{:?}", path.display().to_string()),
                    "no such file: give the path of a PGM image, white where motion counts and black where it does not",
                );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_roi_rectangles_add_up() {
        let config = MotionConfig { roi: vec![[0.0, 0.0, 0.25, 0.5], [0.75, 0.5, 0.25, 0.5]], ..Default::default() };
        let mask = config.roi_mask(4, 2);
        assert_eq!(mask, [true, false, false, false, false, false, false, true]);
    }

    #[test]
    fn bad_values_are_reported_with_the_key() {
        let origin = crate::settings::ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        let config = MotionConfig { noise_factor: 0.0, mask_file: Some("/nonexistent/mask.pgm".into()), ..Default::default() };
        config.check(&mut check);
        let err = check.finish().unwrap_err().to_string();
        assert!(err.contains("[motion] noise_factor = 0"), "{err}");
        assert!(err.contains("[motion] mask_file = \"/nonexistent/mask.pgm\"") && err.contains("PGM"), "{err}");
    }
}
