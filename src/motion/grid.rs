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
        let row = |top: usize, offset: usize| frame.y.row(top + offset, used);
        for (gy, out) in self.cells.chunks_exact_mut(self.width).enumerate() {
            let top = gy * self.cell;
            if gy + 1 < self.height {
                for &offset in offsets {
                    prefetch(row(top + self.cell, offset));
                }
            }
            let sums = &mut self.col_sums[..used];
            let row = |offset: usize| row(top, offset);
            // The first two rows in one pass: most cells read only two.
            let rest = match offsets {
                [first, second, rest @ ..] => {
                    for ((s, &p), &q) in sums.iter_mut().zip(row(*first)).zip(row(*second)) {
                        *s = p as u16 + q as u16;
                    }
                    rest
                }
                [first, rest @ ..] => {
                    for (s, &p) in sums.iter_mut().zip(row(*first)) {
                        *s = p as u16;
                    }
                    rest
                }
                [] => unreachable!("a cell reads at least one row"),
            };
            for &offset in rest {
                for (s, &p) in sums.iter_mut().zip(row(offset)) {
                    *s += p as u16;
                }
            }
            add_up_cells(sums, self.cell, out, scale);
        }
    }

    /// The frame-pixel rectangle `[x, y, w, h]` of cells `x0..=x1`, `y0..=y1`.
    pub fn to_frame_rect(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> [u32; 4] {
        let c = self.cell as u32;
        [x0 as u32 * c, y0 as u32 * c, (x1 - x0 + 1) as u32 * c, (y1 - y0 + 1) as u32 * c]
    }
}

/// Asks the CPU to start loading `bytes` into cache, one request per cache
/// line, without waiting for them. A fresh frame comes from memory, and the
/// sampled rows are short runs far apart, too short for the hardware
/// prefetcher to pick up before each run ends. Asking for the next grid
/// row's lines while this one is summed cut the detector's CPU time on
/// fresh 1080p frames by 9 to 14 % (`camnode detect --stats`, x86, 11 of
/// 11 paired runs); fetching two grid rows ahead gained less.
fn prefetch(bytes: &[u8]) {
    const LINE: usize = 64;
    for offset in (0..bytes.len()).step_by(LINE) {
        let line = bytes[offset..].as_ptr();
        // SAFETY: a prefetch is only a hint: it reads nothing into the
        // program and cannot fault, and `line` points into `bytes` anyway.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
        #[cfg(target_arch = "aarch64")]
        unsafe {
            std::arch::asm!("prfm pldl1keep, [{0}]", in(reg) line, options(nostack, readonly, preserves_flags));
        }
        #[cfg(target_arch = "arm")]
        unsafe {
            std::arch::asm!("pld [{0}]", in(reg) line, options(nostack, readonly, preserves_flags));
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64", target_arch = "arm")))]
        let _ = line;
    }
}

/// Each cell's share of `sums` (`cell` columns wide) added up and scaled.
/// A loop over a run-time number of columns compiles to a vector loop with
/// its set-up and tail for every cell, 80 instructions for 15 numbers; so
/// the cell sizes of common frame widths at the default grid (640: 5, 768:
/// 6, 1280: 10, 1536: 12, 1920 and 2028: 15, 2304: 18, 4056: 31, 4608: 36)
/// get a loop of fixed length, which the compiler unrolls.
fn add_up_cells(sums: &[u16], cell: usize, out: &mut [f32], scale: f32) {
    fn fixed<const N: usize>(sums: &[u16], out: &mut [f32], scale: f32) {
        for (cell, chunk) in out.iter_mut().zip(sums.chunks_exact(N)) {
            let chunk: &[u16; N] = chunk.try_into().expect("chunks_exact gives N");
            *cell = chunk.iter().fold(0u32, |total, &s| total + s as u32) as f32 * scale;
        }
    }
    match cell {
        4 => fixed::<4>(sums, out, scale),
        5 => fixed::<5>(sums, out, scale),
        6 => fixed::<6>(sums, out, scale),
        8 => fixed::<8>(sums, out, scale),
        10 => fixed::<10>(sums, out, scale),
        12 => fixed::<12>(sums, out, scale),
        15 => fixed::<15>(sums, out, scale),
        16 => fixed::<16>(sums, out, scale),
        18 => fixed::<18>(sums, out, scale),
        20 => fixed::<20>(sums, out, scale),
        30 => fixed::<30>(sums, out, scale),
        31 => fixed::<31>(sums, out, scale),
        36 => fixed::<36>(sums, out, scale),
        _ => {
            for (cell, chunk) in out.iter_mut().zip(sums.chunks_exact(cell)) {
                *cell = chunk.iter().map(|&s| s as u32).sum::<u32>() as f32 * scale;
            }
        }
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
    fn every_cell_size_adds_up_alike() {
        let sums: Vec<u16> = (0..40 * 41).map(|i| (i * 37 % 1021) as u16).collect();
        for cell in 1..=40 {
            let mut out = vec![0.0; 41];
            add_up_cells(&sums, cell, &mut out, 0.5);
            for (i, &got) in out.iter().enumerate().take(sums.len() / cell) {
                let want: u32 = sums[i * cell..(i + 1) * cell].iter().map(|&s| s as u32).sum();
                assert_eq!(got, want as f32 * 0.5, "cell size {cell}, cell {i}");
            }
        }
    }

    #[test]
    fn small_frames_keep_cells_of_at_least_four_pixels() {
        let grid = LumaGrid::new(320, 240, 128);
        assert_eq!((grid.cell, grid.width, grid.height), (4, 80, 60));
        let grid = LumaGrid::new(1920, 1080, 128);
        assert_eq!((grid.cell, grid.width, grid.height), (15, 128, 72));
    }
}
