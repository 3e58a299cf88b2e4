//! The luma plane averaged down to a small grid of square cells.
//!
//! Everything the detector does after this runs on the grid, so this is the
//! only code that touches full-resolution pixels, and the only part whose
//! cost grows with the frame size: its memory reads are most of the
//! detector's time. So it reads only a few evenly spaced rows of each cell
//! (whole rows, so the reads stay sequential and the sums vectorise): 4 rows
//! of small cells, 2 of cells 8 pixels or wider, which still average 30
//! pixels per 1080p cell and cut sensor noise by a factor of 5. Reading every
//! row of a 1080p frame would cost more than the whole rest of the detector.

use crate::frame::Frame;

/// Rows of each cell that are read: at most 4, and 2 of cells at least
/// `WIDE_CELL` pixels wide.
const SAMPLE_ROWS: usize = 4;
const WIDE_CELL: usize = 8;
/// Smallest cell side in pixels: smaller cells average too few pixels to
/// smooth sensor noise and the fine texture of leaves.
const MIN_CELL: usize = 4;

pub(super) struct LumaGrid {
    pub width: usize,
    pub height: usize,
    /// Side of a cell in frame pixels.
    pub cell: usize,
    /// Offsets of the sampled rows inside a cell.
    row_offsets: [usize; SAMPLE_ROWS],
    rows_per_cell: usize,
    /// Column sums of the sampled rows of one grid row (at most 4 x 255).
    col_sums: Vec<u16>,
    /// Mean luma of each cell, row by row.
    pub cells: Vec<f32>,
}

impl LumaGrid {
    /// A grid about `grid_width` cells wide for frames of this size.
    pub fn new(frame_width: usize, frame_height: usize, grid_width: usize) -> Self {
        let cell = (frame_width / grid_width.max(1)).max(MIN_CELL).min(frame_width.min(frame_height));
        let (width, height) = ((frame_width / cell).max(1), (frame_height / cell).max(1));
        let rows_per_cell = if cell >= WIDE_CELL { 2 } else { cell.min(SAMPLE_ROWS) };
        let mut row_offsets = [0; SAMPLE_ROWS];
        for (k, offset) in row_offsets.iter_mut().enumerate().take(rows_per_cell) {
            *offset = (2 * k + 1) * cell / (2 * rows_per_cell);
        }
        LumaGrid { width, height, cell, row_offsets, rows_per_cell, col_sums: vec![0; width * cell], cells: vec![0.0; width * height] }
    }

    /// Averages the sampled pixels of every cell of `frame`.
    pub fn sample(&mut self, frame: &Frame) {
        let used = self.width * self.cell;
        let scale = 1.0 / (self.rows_per_cell * self.cell) as f32;
        let offsets = &self.row_offsets[..self.rows_per_cell];
        for (gy, out) in self.cells.chunks_exact_mut(self.width).enumerate() {
            let top = gy * self.cell;
            let sums = &mut self.col_sums[..used];
            for (s, &p) in sums.iter_mut().zip(frame.y.row(top + offsets[0], used)) {
                *s = p as u16;
            }
            for &offset in &offsets[1..] {
                for (s, &p) in sums.iter_mut().zip(frame.y.row(top + offset, used)) {
                    *s += p as u16;
                }
            }
            for (cell, chunk) in out.iter_mut().zip(sums.chunks_exact(self.cell)) {
                *cell = chunk.iter().map(|&s| s as u32).sum::<u32>() as f32 * scale;
            }
        }
    }

    /// The frame-pixel rectangle `[x, y, w, h]` of cells `x0..=x1`, `y0..=y1`.
    pub fn to_frame_rect(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> [u32; 4] {
        let c = self.cell as u32;
        [x0 as u32 * c, y0 as u32 * c, (x1 - x0 + 1) as u32 * c, (y1 - y0 + 1) as u32 * c]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameBuf;

    #[test]
    fn cells_average_their_pixels_and_sizes_follow_the_frame() {
        let mut buf = FrameBuf::new(64, 32);
        let (y, _, _) = buf.planes_mut();
        // Left half 100, right half 200: a vertical edge on a cell boundary.
        for (i, p) in y.iter_mut().enumerate() {
            *p = if i % 64 < 32 { 100 } else { 200 };
        }
        let mut grid = LumaGrid::new(64, 32, 8);
        assert_eq!((grid.width, grid.height, grid.cell), (8, 4, 8));
        grid.sample(&buf.as_frame());
        assert!(grid.cells[..4].iter().all(|&c| c == 100.0) && grid.cells[4..8].iter().all(|&c| c == 200.0));
        assert_eq!(grid.to_frame_rect(1, 1, 2, 3), [8, 8, 16, 24]);
    }

    #[test]
    fn small_frames_keep_cells_of_at_least_four_pixels() {
        let grid = LumaGrid::new(320, 240, 128);
        assert_eq!((grid.cell, grid.width, grid.height), (4, 80, 60));
        let grid = LumaGrid::new(1920, 1080, 128);
        assert_eq!((grid.cell, grid.width, grid.height), (15, 128, 72));
    }
}
