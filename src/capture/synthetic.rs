//! A deterministic test scene that needs no files: a textured background with
//! sensor-like noise, alternating still periods and periods in which a dark
//! object walks across the frame. The same seed gives the same frames, and
//! [`Synthetic::object_visible`] says which frames have motion, so tests can
//! check the detector against the truth.

use anyhow::Result;

use super::FrameSource;
use crate::frame::{chroma_size, unix_now, Frame, FrameBuf};

/// Frames per cycle: a still period, then the object crosses the frame.
const STILL_FRAMES: u64 = 60;
const MOVING_FRAMES: u64 = 60;
/// Peak-to-peak sensor noise in luma steps.
const NOISE: u32 = 6;

pub struct Synthetic {
    background: FrameBuf,
    frame: FrameBuf,
    seq: u64,
    rng: u64,
}

impl Synthetic {
    pub fn new(width: usize, height: usize, seed: u64) -> Self {
        let mut background = FrameBuf::new(width, height);
        let (cw, _) = chroma_size(width, height);
        let (y, u, v) = background.planes_mut();
        for (i, p) in y.iter_mut().enumerate() {
            let (x, row) = (i % width, i / width);
            // A sky-to-ground gradient with bricks: enough texture that a
            // moving object changes the picture, as in a real scene.
            let brick = if (row / 12 + x / 24) % 2 == 0 { 14 } else { 0 };
            *p = (60 + row * 100 / height + brick) as u8;
        }
        for (i, (pu, pv)) in u.iter_mut().zip(v.iter_mut()).enumerate() {
            let x = i % cw;
            *pu = (118 + x * 10 / cw) as u8;
            *pv = 134;
        }
        // `frame` is allocated by the first `next_frame`: a pipeline that has
        // frames drawn into its own buffers never needs it.
        Synthetic { frame: FrameBuf::default(), background, seq: 0, rng: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1 }
    }

    /// True while the moving object is in frame `seq`.
    pub fn object_visible(seq: u64) -> bool {
        seq % (STILL_FRAMES + MOVING_FRAMES) >= STILL_FRAMES
    }

    /// The object's box `(x, y, w, h)` in frame `seq`, if visible.
    fn object_box(&self, seq: u64) -> Option<(usize, usize, usize, usize)> {
        if !Self::object_visible(seq) {
            return None;
        }
        let (w, h) = (self.background.width, self.background.height);
        let step = seq % (STILL_FRAMES + MOVING_FRAMES) - STILL_FRAMES;
        let (ow, oh) = ((w / 10).max(2) & !1, (h / 3).max(2) & !1);
        let x = (step as usize * (w - ow)) / (MOVING_FRAMES as usize - 1);
        Some((x & !1, (h / 2) & !1, ow, oh.min(h / 2)))
    }

    /// Draws the next frame into `buf`.
    fn make(&mut self, buf: &mut FrameBuf) {
        let seq = self.seq;
        self.seq += 1;
        let object = self.object_box(seq);
        let width = self.background.width;
        buf.resize(width, self.background.height);
        buf.data.copy_from_slice(&self.background.data);
        let luma_len = width * self.background.height;
        let mut i = 0;
        while i < luma_len {
            let mut bits = self.next_noise();
            for p in &mut buf.data[i..(i + 8).min(luma_len)] {
                let noise = (bits & 0xff) as u32 * (NOISE + 1) / 256;
                *p = (*p as u32 + noise).saturating_sub(NOISE / 2).min(255) as u8;
                bits >>= 8;
            }
            i += 8;
        }
        if let Some((x, y, w, h)) = object {
            let (cw, _) = chroma_size(width, self.background.height);
            let (luma, u, v) = buf.planes_mut();
            for row in y..y + h {
                luma[row * width + x..row * width + x + w].fill(24);
            }
            for row in y / 2..(y + h) / 2 {
                u[row * cw + x / 2..row * cw + (x + w) / 2].fill(150);
                v[row * cw + x / 2..row * cw + (x + w) / 2].fill(100);
            }
        }
        buf.seq = seq;
        buf.timestamp = unix_now();
    }

    fn next_noise(&mut self) -> u64 {
        // xorshift64: cheap, deterministic, good enough for sensor noise.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

impl FrameSource for Synthetic {
    fn size(&self) -> (usize, usize) {
        (self.background.width, self.background.height)
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let mut frame = std::mem::take(&mut self.frame);
        self.make(&mut frame);
        self.frame = frame;
        Ok(Some(self.frame.as_frame()))
    }

    fn next_frame_into(&mut self, buf: &mut FrameBuf) -> Option<Result<bool>> {
        self.make(buf);
        Some(Ok(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_frames_and_noise_changes_each_frame() {
        let mut a = Synthetic::new(64, 48, 7);
        let mut b = Synthetic::new(64, 48, 7);
        let fa = a.next_frame().unwrap().unwrap().y.data.to_vec();
        let fb = b.next_frame().unwrap().unwrap().y.data.to_vec();
        assert_eq!(fa, fb);
        let fa2 = a.next_frame().unwrap().unwrap().y.data.to_vec();
        assert_ne!(fa, fa2, "sensor noise must differ between frames");
        let max_diff = fa.iter().zip(&fa2).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        assert!(max_diff <= NOISE as u8, "noise too strong: {max_diff}");
    }

    #[test]
    fn object_appears_only_in_moving_periods() {
        let mut scene = Synthetic::new(160, 120, 1);
        let mut dark_pixels = Vec::new();
        for _ in 0..(STILL_FRAMES + MOVING_FRAMES) {
            let frame = scene.next_frame().unwrap().unwrap();
            dark_pixels.push(frame.y.data.iter().filter(|&&p| p < 40).count());
        }
        assert!(dark_pixels[..STILL_FRAMES as usize].iter().all(|&n| n == 0));
        assert!(dark_pixels[STILL_FRAMES as usize..].iter().all(|&n| n > 100));
        assert!(Synthetic::object_visible(STILL_FRAMES) && !Synthetic::object_visible(0));
    }
}
