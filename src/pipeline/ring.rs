//! The pre-event ring: the last few frames before an event, kept raw (not
//! encoded) because most of them are never sent. When an event is confirmed
//! they are encoded and sent ahead of it; otherwise they are overwritten.
//! Buffers circulate between the ring and a spare list, so once every one
//! has held a frame nothing is allocated again.

use std::collections::VecDeque;

use crate::frame::{Frame, FrameBuf};

pub struct FrameRing {
    capacity: usize,
    frames: VecDeque<FrameBuf>,
    /// Buffers handed back after sending, reused by `push`.
    spare: Vec<FrameBuf>,
}

impl FrameRing {
    pub fn new(capacity: usize) -> Self {
        FrameRing { capacity, frames: VecDeque::with_capacity(capacity), spare: Vec::with_capacity(capacity) }
    }

    /// Keeps a copy of `frame`, forgetting the oldest when full.
    pub fn push(&mut self, frame: &Frame) {
        if self.capacity == 0 {
            return;
        }
        let mut buf = if self.frames.len() == self.capacity {
            self.frames.pop_front().unwrap_or_default()
        } else {
            self.spare.pop().unwrap_or_default()
        };
        buf.copy_from(frame);
        self.frames.push_back(buf);
    }

    /// Takes the oldest kept frame; hand it back with [`FrameRing::recycle`].
    pub fn pop_oldest(&mut self) -> Option<FrameBuf> {
        self.frames.pop_front()
    }

    /// Forgets every kept frame.
    pub fn clear(&mut self) {
        self.spare.extend(self.frames.drain(..));
    }

    /// Returns a taken buffer for reuse.
    pub fn recycle(&mut self, buf: FrameBuf) {
        self.spare.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_frames_in_order() {
        let mut ring = FrameRing::new(2);
        let mut buf = FrameBuf::new(4, 4);
        for seq in 0..5 {
            buf.seq = seq;
            ring.push(&buf.as_frame());
        }
        let kept: Vec<u64> = std::iter::from_fn(|| ring.pop_oldest()).map(|f| f.seq).collect();
        assert_eq!(kept, vec![3, 4]);
        assert!(ring.pop_oldest().is_none());
    }

    #[test]
    fn cleared_buffers_are_reused() {
        let mut ring = FrameRing::new(2);
        ring.push(&FrameBuf::new(4, 4).as_frame());
        let ptr = ring.frames[0].data.as_ptr();
        ring.clear();
        assert!(ring.pop_oldest().is_none());
        ring.push(&FrameBuf::new(4, 4).as_frame());
        assert_eq!(ring.frames[0].data.as_ptr(), ptr);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = FrameRing::new(0);
        ring.push(&FrameBuf::new(4, 4).as_frame());
        assert!(ring.pop_oldest().is_none());
    }
}
