//! Debug images of the detector's view of one frame, for tuning a camera:
//! what it sees, what it compares against, how far each cell is from its
//! threshold, and what it made of the changed cells.
//!
//! Written as PGM (readable by every image viewer and by Python without
//! extra packages), at grid resolution scaled up so a cell is visible.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::blobs::Verdict;
use super::MotionDetector;

/// Grey levels of the blob image.
const IGNORED: u8 = 0;
const QUIET: u8 = 40;
const REJECTED: u8 = 100;
const CANDIDATE: u8 = 180;
const ACCEPTED: u8 = 255;

impl MotionDetector {
    /// Writes `NAME-luma.pgm`, `NAME-background.pgm`, `NAME-difference.pgm`
    /// (128 is a cell exactly at its threshold) and `NAME-blobs.pgm` (black:
    /// not watched, dark grey: quiet, grey: changed but rejected, light
    /// grey: a moving object not yet counted, white: motion) into `dir`.
    pub fn write_debug_images(&self, dir: &Path, name: &str) -> Result<()> {
        let n = self.grid.width * self.grid.height;
        let level = |v: f32| v.round().clamp(0.0, 255.0) as u8;
        let luma: Vec<u8> = self.grid.cells.iter().map(|&v| level(v)).collect();
        let background: Vec<u8> = self.background.iter().map(|&v| level(v)).collect();
        let difference: Vec<u8> =
            (0..n).map(|i| if self.watched[i] { level(128.0 * self.residual[i].abs() / self.threshold[i].max(1e-3)) } else { 0 }).collect();
        let blobs: Vec<u8> = (0..n)
            .map(|i| match (self.watched[i], self.blobs.verdict_at(i)) {
                (false, _) => IGNORED,
                (true, None) => QUIET,
                (true, Some(Verdict::Rejected)) => REJECTED,
                (true, Some(Verdict::Candidate)) => CANDIDATE,
                (true, Some(Verdict::Accepted)) => ACCEPTED,
            })
            .collect();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create --debug-dir {}", dir.display()))?;
        for (kind, pixels) in [("luma", luma), ("background", background), ("difference", difference), ("blobs", blobs)] {
            let path = dir.join(format!("{name}-{kind}.pgm"));
            self.write_pgm(&path, &pixels).with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    fn write_pgm(&self, path: &Path, cells: &[u8]) -> Result<()> {
        let (w, h) = (self.grid.width, self.grid.height);
        // About 512 pixels wide, whole pixels per cell.
        let scale = (512 / w).max(1);
        let mut out = Vec::with_capacity(32 + w * h * scale * scale);
        write!(out, "P5\n{} {}\n255\n", w * scale, h * scale)?;
        for row in cells.chunks_exact(w) {
            for _ in 0..scale {
                for &v in row {
                    out.extend(std::iter::repeat(v).take(scale));
                }
            }
        }
        std::fs::write(path, out)?;
        Ok(())
    }
}
