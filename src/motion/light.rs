//! Illumination compensation: relights the background to the current frame
//! before anything is compared, so light changes never look like motion.
//!
//! Light changes reach the camera as a change of every pixel at once: a
//! cloud, dusk, the auto-exposure stepping, a lamp switched on, the IR cut
//! filter flipping. A person changes a small, compact part of the frame. So
//! the light is estimated from robust statistics over the whole watched area,
//! which a few moving objects cannot sway, in two steps:
//!
//! 1. A tone curve: cells are binned by their background level, and the median
//!    change of each bin says how that level came out in this frame. Linear
//!    interpolation between the bins' medians follows gain, offset, gamma and
//!    clipping alike (an IR switch changes the tone curve, not just the gain).
//! 2. A gain field: what the tone curve leaves is measured as a median ratio
//!    in a few large blocks and interpolated bilinearly (extrapolated at the
//!    edges), which follows light that falls from one side, such as a lamp.
//!    Blocks are large so that an object must cover half of one to move its
//!    median; a far-away person is nowhere near that.
//!
//! Medians come from fixed histograms over every other cell of every other
//! row (a quarter of the grid is thousands of cells, plenty for a median),
//! so estimating costs a fraction of a pass over the grid and no allocation.

/// Background levels per tone bin: 16 bins of 16 levels.
const TONE_SHIFT: u32 = 4;
const TONE_BINS: usize = 256 >> TONE_SHIFT;
/// Differences from -256 to 255 luma levels, one level per bucket.
const DIFF_BUCKETS: usize = 512;
/// Ratios from 0.5 to 2.0 in 512 buckets (about 0.003 per bucket).
const RATIO_BUCKETS: usize = 512;
const RATIO_MIN: f32 = 0.5;
const RATIO_MAX: f32 = 2.0;
/// Keeps ratios of dark cells from exploding: a 3-level wobble at level 5
/// is noise, not a doubling of the light.
const RATIO_BIAS: f32 = 8.0;
/// Blocks of the gain field, across and down.
const BLOCK_COLS: usize = 4;
const BLOCK_ROWS: usize = 3;
/// Fewest cells whose median is trusted, for a tone bin or a block.
const MIN_SAMPLES: u32 = 16;

pub(super) struct Relight {
    width: usize,
    height: usize,
    diff_hist: Vec<u32>,
    level_hist: Vec<u32>,
    ratio_hist: Vec<u32>,
    /// Tone offset for each background level 0..255.
    tone: [f32; 256],
    /// Gain of each block, then of each cell.
    block_gain: [f32; BLOCK_COLS * BLOCK_ROWS],
    gain: Vec<f32>,
    /// Each row of blocks interpolated across the grid's columns.
    across: Vec<f32>,
    /// For each grid column (row): the left (top) block of its interpolation
    /// pair and the weight of the right (bottom) one, beyond 0..1 at the edges.
    cols: Vec<(usize, f32)>,
    rows: Vec<(usize, f32)>,
    block_of: Vec<u8>,
    /// Every other cell of every other row: the cells the light is measured on.
    samples: Vec<u32>,
    /// Those of them in use this frame.
    used: Vec<u32>,
    step: f32,
}

impl Relight {
    pub fn new(width: usize, height: usize) -> Self {
        let axis = |n: usize, blocks: usize| -> Vec<(usize, f32)> {
            (0..n)
                .map(|i| {
                    // Position in block units, 0 at the first block's centre.
                    let f = (i as f32 + 0.5) * blocks as f32 / n as f32 - 0.5;
                    let left = (f.floor().max(0.0) as usize).min(blocks - 2);
                    (left, f - left as f32)
                })
                .collect()
        };
        let block_of = (0..width * height)
            .map(|i| ((i / width) * BLOCK_ROWS / height * BLOCK_COLS + (i % width) * BLOCK_COLS / width) as u8)
            .collect();
        Relight {
            width,
            height,
            diff_hist: vec![0; TONE_BINS * DIFF_BUCKETS],
            level_hist: vec![0; 256],
            ratio_hist: vec![0; BLOCK_COLS * BLOCK_ROWS * RATIO_BUCKETS],
            tone: [0.0; 256],
            block_gain: [1.0; BLOCK_COLS * BLOCK_ROWS],
            gain: vec![1.0; width * height],
            across: vec![1.0; width * BLOCK_ROWS],
            cols: axis(width, BLOCK_COLS),
            rows: axis(height, BLOCK_ROWS),
            block_of,
            samples: (0..height).step_by(2).flat_map(|y| (0..width).step_by(2).map(move |x| (y * width + x) as u32)).collect(),
            used: Vec::with_capacity(width.div_ceil(2) * height.div_ceil(2)),
            step: 0.0,
        }
    }

    /// Estimates how the light changed from `background` to `luma`, using the
    /// cells for which `use_cell` is true.
    pub fn estimate(&mut self, luma: &[f32], background: &[f32], use_cell: impl Fn(usize) -> bool) {
        self.used.clear();
        let used = &mut self.used;
        used.extend(self.samples.iter().copied().filter(|&i| use_cell(i as usize)));
        self.estimate_tone(luma, background);
        self.estimate_field(luma, background);
        let relative_change = |i: usize| (self.relit(i, background[i]) - background[i]).abs() / (background[i].max(0.0) + RATIO_BIAS);
        let step: f32 = self.used.iter().map(|&i| relative_change(i as usize)).sum();
        self.step = step / self.used.len().max(1) as f32;
    }

    /// `value` (a background-like level from the previous frame's light) as
    /// it would look in the current frame's light.
    #[inline]
    pub fn relit(&self, i: usize, value: f32) -> f32 {
        self.relit_with_gain(value, self.gain[i])
    }

    #[inline]
    fn relit_with_gain(&self, value: f32, gain: f32) -> f32 {
        let toned = value + self.tone[tone_index(value)];
        // The sensor saturates: no light makes a level brighter than white.
        ((toned + RATIO_BIAS) * gain - RATIO_BIAS).clamp(0.0, 255.0)
    }

    /// The cells the light is measured on: every other cell of every other row.
    pub fn samples(&self) -> &[u32] {
        &self.samples
    }

    /// Relights a whole grid in place.
    pub fn apply(&self, grid: &mut [f32]) {
        for (v, &gain) in grid.iter_mut().zip(&self.gain) {
            *v = self.relit_with_gain(*v, gain);
        }
    }

    /// The mean relative change of the estimated light over the cells it
    /// was estimated from, which tells a light switch from a slow change.
    pub fn step(&self) -> f32 {
        self.step
    }

    fn estimate_tone(&mut self, luma: &[f32], background: &[f32]) {
        self.diff_hist.fill(0);
        self.level_hist.fill(0);
        for &i in &self.used {
            let (l, b) = (luma[i as usize], background[i as usize]);
            let level = b.clamp(0.0, 255.0) as usize;
            let bucket = (l - b + 256.0).clamp(0.0, (DIFF_BUCKETS - 1) as f32) as usize;
            self.diff_hist[(level >> TONE_SHIFT) * DIFF_BUCKETS + bucket] += 1;
            self.level_hist[level] += 1;
        }
        // (centre level, median offset) of each bin with enough cells.
        let mut knots = [(0.0f32, 0.0f32); TONE_BINS];
        let mut n = 0;
        for bin in 0..TONE_BINS {
            let levels = &self.level_hist[bin << TONE_SHIFT..(bin + 1) << TONE_SHIFT];
            if levels.iter().sum::<u32>() < MIN_SAMPLES {
                continue;
            }
            let centre = (bin << TONE_SHIFT) as f32 + median(levels);
            let offset = median(&self.diff_hist[bin * DIFF_BUCKETS..(bin + 1) * DIFF_BUCKETS]) - 256.0;
            knots[n] = (centre, offset);
            n += 1;
        }
        let knots = &knots[..n];
        for (level, out) in self.tone.iter_mut().enumerate() {
            // No level comes out darker than black or brighter than white.
            *out = interpolate(knots, level as f32).clamp(-(level as f32), 255.0 - level as f32);
        }
    }

    fn estimate_field(&mut self, luma: &[f32], background: &[f32]) {
        self.ratio_hist.fill(0);
        let scale = RATIO_BUCKETS as f32 / (RATIO_MAX - RATIO_MIN);
        for &i in &self.used {
            let (i, l, b) = (i as usize, luma[i as usize], background[i as usize]);
            let toned = b + self.tone[tone_index(b)];
            let ratio = (l + RATIO_BIAS) / (toned + RATIO_BIAS).max(1.0);
            let bucket = ((ratio - RATIO_MIN) * scale).clamp(0.0, (RATIO_BUCKETS - 1) as f32) as usize;
            self.ratio_hist[self.block_of[i] as usize * RATIO_BUCKETS + bucket] += 1;
        }
        for (block, gain) in self.block_gain.iter_mut().enumerate() {
            let hist = &self.ratio_hist[block * RATIO_BUCKETS..(block + 1) * RATIO_BUCKETS];
            // A block without enough cells (masked out) keeps the tone curve alone.
            *gain = if hist.iter().sum::<u32>() >= MIN_SAMPLES { RATIO_MIN + median(hist) / scale } else { 1.0 };
        }
        // Across first: each row of blocks interpolated at every grid column,
        // then down between two of those for every grid row.
        let g = &self.block_gain;
        for (by, across) in self.across.chunks_exact_mut(self.width).enumerate() {
            let at = |bx: usize| g[by * BLOCK_COLS + bx];
            for (out, &(left, wx)) in across.iter_mut().zip(&self.cols) {
                *out = at(left) + wx * (at(left + 1) - at(left));
            }
        }
        for (row, &(top, wy)) in self.gain.chunks_exact_mut(self.width).zip(&self.rows) {
            let upper_row = &self.across[top * self.width..(top + 1) * self.width];
            let lower_row = &self.across[(top + 1) * self.width..(top + 2) * self.width];
            for ((out, &upper), &lower) in row.iter_mut().zip(upper_row).zip(lower_row) {
                // Extrapolation can overshoot on a noisy edge block; no real
                // light field goes negative or multiplies by more than 4.
                *out = (upper + wy * (lower - upper)).clamp(0.25, 4.0);
            }
        }
        debug_assert_eq!(self.gain.len(), self.width * self.height);
    }
}

/// The tone curve's entry for a level: levels are clamped to 0..=255 and
/// truncated, and a u8 index needs no bounds check into the 256 entries.
#[inline]
fn tone_index(value: f32) -> usize {
    value.clamp(0.0, 255.0) as u8 as usize
}

/// The median position in a histogram, in bucket units, interpolated inside
/// the bucket that holds it (so a spread of values gives sub-bucket precision).
pub(super) fn median(hist: &[u32]) -> f32 {
    let total: u32 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let half = total as f32 / 2.0;
    let mut below = 0u32;
    for (bucket, &count) in hist.iter().enumerate() {
        if count > 0 && (below + count) as f32 >= half {
            return bucket as f32 + (half - below as f32) / count as f32;
        }
        below += count;
    }
    hist.len() as f32
}

/// Piecewise-linear through `knots` (sorted by x). Beyond the end knots the
/// offset grows in proportion to the level, as it does for a change of gain,
/// which is the likeliest change at levels too rare to measure.
fn interpolate(knots: &[(f32, f32)], x: f32) -> f32 {
    let proportional = |(kx, ky): (f32, f32)| ky * (x + RATIO_BIAS) / (kx + RATIO_BIAS);
    match knots {
        [] => 0.0,
        [first, ..] if x <= first.0 => proportional(*first),
        [.., last] if x >= last.0 => proportional(*last),
        _ => {
            let k = knots.iter().position(|&(kx, _)| kx >= x).unwrap_or(knots.len() - 1).max(1);
            let ((x0, y0), (x1, y1)) = (knots[k - 1], knots[k]);
            y0 + (y1 - y0) * (x - x0) / (x1 - x0).max(1e-3)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A textured background on a 64x48 grid.
    fn scene() -> Vec<f32> {
        (0..64 * 48).map(|i| 30.0 + ((i * 37) % 200) as f32).collect()
    }

    /// The error of the relit background at the 99th percentile of cells:
    /// the rarest levels (too few cells to measure) may be off by more.
    fn error_p99(relight: &Relight, background: &[f32], frame: &[f32], skip: impl Fn(usize) -> bool) -> f32 {
        let mut errors: Vec<f32> = background
            .iter()
            .zip(frame)
            .enumerate()
            .filter(|&(i, _)| !skip(i))
            .map(|(i, (&b, &l))| (relight.relit(i, b) - l).abs())
            .collect();
        errors.sort_by(f32::total_cmp);
        errors[errors.len() * 99 / 100]
    }

    #[test]
    fn gain_gamma_and_side_light_are_followed() {
        let background = scene();
        // How a cell's level (at index i) comes out under the new light.
        type Change = fn(usize, f32) -> f32;
        let changes: [(&str, Change); 3] = [
            ("lights off", |_, v| v * 0.55),
            ("ir tone change", |_, v| 255.0 * (v * 0.9 / 255.0).powf(0.7)),
            // A cloud's edge or a lamp warming up: brighter on the left.
            ("light from the left", |i, v| v * (1.15 - 0.25 * (i % 64) as f32 / 63.0)),
        ];
        for (name, change) in changes {
            let frame: Vec<f32> = background.iter().enumerate().map(|(i, &v)| change(i, v).min(255.0)).collect();
            let mut relight = Relight::new(64, 48);
            relight.estimate(&frame, &background, |_| true);
            let error = error_p99(&relight, &background, &frame, |_| false);
            assert!(error < 3.0, "{name}: relit background is off by {error:.1} levels");
        }
    }

    #[test]
    fn a_person_does_not_move_the_light_estimate() {
        let background = scene();
        let person = |i: usize| (20..26).contains(&(i % 64)) && (10..30).contains(&(i / 64));
        let frame: Vec<f32> = background.iter().enumerate().map(|(i, &v)| if person(i) { 20.0 } else { v }).collect();
        let mut relight = Relight::new(64, 48);
        relight.estimate(&frame, &background, |_| true);
        assert!(error_p99(&relight, &background, &frame, person) < 1.0);
    }

    #[test]
    fn median_interpolates_inside_its_bucket() {
        assert_eq!(median(&[0, 4, 0]), 1.5);
        assert_eq!(median(&[2, 0, 2]), 1.0);
        assert_eq!(median(&[]), 0.0);
    }
}
