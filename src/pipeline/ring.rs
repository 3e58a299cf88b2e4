//! The pre-event ring: the last few frames before an event, kept raw (not
//! encoded) because most of them are never sent. When an event is confirmed
//! they are encoded and sent ahead of it; otherwise they are overwritten.
//! Buffers come from and go back to the pipeline's [`Spares`], so once
//! every one has held a frame nothing is allocated again.

use std::collections::VecDeque;

use crate::frame::{Captured, FrameBuf, Spares};

pub struct FrameRing {
    capacity: usize,
    frames: VecDeque<FrameBuf>,
}

impl FrameRing {
    pub fn new(capacity: usize) -> Self {
        FrameRing { capacity, frames: VecDeque::with_capacity(capacity) }
    }

    /// Keeps `frame` (an owned one's buffer, a copy of a lent one),
    /// forgetting the oldest when full.
    pub fn push(&mut self, frame: &mut Captured, spares: &mut Spares) {
        if self.capacity == 0 {
            return;
        }
        if self.frames.len() == self.capacity {
            if let Some(oldest) = self.frames.pop_front() {
                spares.give(oldest);
            }
        }
        self.frames.push_back(frame.keep(spares));
    }

    /// Takes the oldest kept frame.
    pub fn pop_oldest(&mut self) -> Option<FrameBuf> {
        self.frames.pop_front()
    }

    /// Forgets every kept frame.
    pub fn clear(&mut self, spares: &mut Spares) {
        for buf in self.frames.drain(..) {
            spares.give(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_frames_in_order() {
        let (mut ring, mut spares) = (FrameRing::new(2), Spares::new(4, 0));
        let mut buf = FrameBuf::new(4, 4);
        for seq in 0..5 {
            buf.seq = seq;
            ring.push(&mut Captured::Lent(buf.as_frame()), &mut spares);
        }
        let kept: Vec<u64> = std::iter::from_fn(|| ring.pop_oldest()).map(|f| f.seq).collect();
        assert_eq!(kept, vec![3, 4]);
        assert!(ring.pop_oldest().is_none());
    }

    #[test]
    fn owned_frames_are_kept_without_a_copy_and_buffers_go_round() {
        let (mut ring, mut spares) = (FrameRing::new(1), Spares::new(4, 0));
        let mut current = FrameBuf::new(4, 4);
        let first = current.data.as_ptr();
        ring.push(&mut Captured::Owned(&mut current), &mut spares);
        assert_eq!(ring.frames[0].data.as_ptr(), first);
        // The next frame is read into a new buffer and evicts the first,
        // whose buffer is then the spare the one after is read into.
        current = spares.take();
        current.resize(4, 4);
        ring.push(&mut Captured::Owned(&mut current), &mut spares);
        assert_eq!(spares.take().data.as_ptr(), first);
    }

    #[test]
    fn cleared_buffers_are_spares() {
        let (mut ring, mut spares) = (FrameRing::new(2), Spares::new(4, 0));
        ring.push(&mut Captured::Lent(FrameBuf::new(4, 4).as_frame()), &mut spares);
        let ptr = ring.frames[0].data.as_ptr();
        ring.clear(&mut spares);
        assert!(ring.pop_oldest().is_none());
        ring.push(&mut Captured::Lent(FrameBuf::new(4, 4).as_frame()), &mut spares);
        assert_eq!(ring.frames[0].data.as_ptr(), ptr);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = FrameRing::new(0);
        ring.push(&mut Captured::Lent(FrameBuf::new(4, 4).as_frame()), &mut Spares::new(4, 0));
        assert!(ring.pop_oldest().is_none());
    }
}
