//! Frames kept back: the frames before an event, and during an event the
//! frames in which nothing moved, which go out only if motion resumes.
//!
//! The newest few are kept raw (not encoded), because most of them are
//! never sent: in a still scene they are overwritten frame after frame and
//! cost no encoding at all. But the detector follows a small or far-away
//! object for several frames before it counts it, and the frames from its
//! first appearance are the ones a user wants to see. So a frame that
//! leaves the raw frames while the detector follows something it may yet
//! accept is encoded ahead (the pipeline hands it to the encoder and files
//! the JPEG here) and kept encoded, a tenth of its raw size: a deep history
//! for little memory, paid for in encoding only while something is being
//! followed. When an event starts, the kept frames from its object's first
//! appearance go out ahead of it; older ones, and all of them when nothing
//! is followed, are forgotten.
//!
//! Raw buffers come from and go back to the pipeline's [`Spares`], encoded
//! ones to its [`BufferPool`], and every queue here is sized once, so once
//! every buffer has held a frame nothing is allocated again.

use std::collections::VecDeque;

use crate::frame::{Captured, FrameBuf, Spares};
use crate::transport::{BufferPool, Message};

/// Frames kept raw at most, when more are kept. A raw frame takes 3 MB at
/// 1080p, so only the frames of a large object before its event (which
/// starts on the object's fourth frame) are.
const RAW_FRAMES: usize = 3;

/// A kept frame.
pub enum Kept {
    Encoded(Message),
    Raw(FrameBuf),
}

/// The kept frames, in two parts: the older encoded, the newer raw.
pub struct FrameRing {
    /// The newest frames, oldest first.
    raw: VecDeque<FrameBuf>,
    raw_capacity: usize,
    /// Older frames, encoded, oldest first, with their sequence numbers.
    encoded: VecDeque<(u64, Message)>,
    encoded_capacity: usize,
    /// The frames with the encoder on their way to `encoded`, in the order
    /// they come back: the encoder's ticket for each, and its sequence
    /// number (none once the ring was cleared: given back when it comes).
    encoding: VecDeque<(u64, Option<u64>)>,
    /// Encoded frames forgotten unsent so far.
    forgotten: u64,
}

impl FrameRing {
    /// Keeps up to `frames` frames: the newest `RAW_FRAMES` of them raw and
    /// the rest encoded when `encode_ahead` (JPEG), all raw otherwise.
    /// `encoder_messages` is the most messages the encoder holds at once,
    /// and so the most frames on their way back from it.
    pub fn new(frames: usize, encode_ahead: bool, encoder_messages: usize) -> Self {
        let raw_capacity = if encode_ahead { frames.min(RAW_FRAMES) } else { frames };
        let encoded_capacity = frames - raw_capacity;
        FrameRing {
            raw_capacity,
            raw: VecDeque::with_capacity(raw_capacity),
            encoded_capacity,
            encoded: VecDeque::with_capacity(encoded_capacity),
            encoding: VecDeque::with_capacity(if encoded_capacity > 0 { encoder_messages } else { 0 }),
            forgotten: 0,
        }
    }

    /// The most frames kept raw: frame buffers the pipeline stocks for.
    pub fn raw_capacity(&self) -> usize {
        self.raw_capacity
    }

    /// The most frames kept encoded: payload buffers the pipeline stocks for.
    pub fn encoded_capacity(&self) -> usize {
        self.encoded_capacity
    }

    /// Frames encoded ahead and forgotten unsent so far.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    fn forget(&mut self, message: Message, pool: &BufferPool) {
        self.forgotten += 1;
        pool.give(message.header, message.payload);
    }

    /// Keeps `frame` raw (an owned one's buffer, a copy of a lent one) and
    /// returns the oldest raw frame if it no longer fits, for the caller to
    /// send, encode ahead or give back. Keeps nothing without raw room.
    pub fn push(&mut self, frame: &mut Captured, spares: &mut Spares) -> Option<FrameBuf> {
        if self.raw_capacity == 0 {
            return None;
        }
        let leaving = if self.raw.len() == self.raw_capacity { self.raw.pop_front() } else { None };
        self.raw.push_back(frame.keep(spares));
        leaving
    }

    /// Whether frame `seq`, leaving the raw frames, is worth encoding ahead:
    /// there is room for encoded frames and it is not older than `oldest_useful`.
    pub fn wants(&self, seq: u64, oldest_useful: u64) -> bool {
        self.encoded_capacity > 0 && seq >= oldest_useful
    }

    /// Frame `seq` was handed to the encoder with `ticket`; its message
    /// comes back through [`Self::file_encoded`].
    pub fn encoding(&mut self, ticket: u64, seq: u64) {
        self.encoding.push_back((ticket, Some(seq)));
    }

    /// Frames handed to the encoder have not come back yet.
    pub fn awaits_encoded(&self) -> bool {
        !self.encoding.is_empty()
    }

    /// The message back from the encoder with `ticket` is a frame for this ring.
    pub fn claims(&self, ticket: u64) -> bool {
        self.encoding.front().is_some_and(|&(awaited, _)| awaited == ticket)
    }

    /// Files the frame back from the encoder that [`Self::claims`] said is
    /// next, forgetting the oldest encoded one if there is no room; one the
    /// ring no longer wants (it was cleared meanwhile) is given back.
    pub fn file_encoded(&mut self, message: Message, pool: &BufferPool) {
        let Some((_, Some(seq))) = self.encoding.pop_front() else {
            self.forget(message, pool);
            return;
        };
        if self.encoded.len() == self.encoded_capacity {
            if let Some((_, oldest)) = self.encoded.pop_front() {
                self.forget(oldest, pool);
            }
        }
        self.encoded.push_back((seq, message));
    }

    /// Forgets the frames older than `oldest_useful`.
    pub fn forget_before(&mut self, oldest_useful: u64, spares: &mut Spares, pool: &BufferPool) {
        while self.encoded.front().is_some_and(|(seq, _)| *seq < oldest_useful) {
            if let Some((_, message)) = self.encoded.pop_front() {
                self.forget(message, pool);
            }
        }
        while self.raw.front().is_some_and(|frame| frame.seq < oldest_useful) {
            if let Some(frame) = self.raw.pop_front() {
                spares.give(frame);
            }
        }
    }

    /// Takes the oldest kept frame: encoded ones first, they are older.
    pub fn pop_oldest(&mut self) -> Option<Kept> {
        match self.encoded.pop_front() {
            Some((_, message)) => Some(Kept::Encoded(message)),
            None => self.raw.pop_front().map(Kept::Raw),
        }
    }

    /// Forgets every kept frame, and those still with the encoder.
    pub fn clear(&mut self, spares: &mut Spares, pool: &BufferPool) {
        self.forget_before(u64::MAX, spares, pool);
        for (_, seq) in &mut self.encoding {
            *seq = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wire::OutHeader;
    use crate::transport::MessageKind;

    fn frame(seq: u64) -> FrameBuf {
        let mut buf = FrameBuf::new(4, 4);
        buf.seq = seq;
        buf
    }

    fn message(pool: &BufferPool, seq: u64) -> Message {
        let (header, payload) = pool.take();
        let header_fields = OutHeader { msg: "n v|jpg", dtype: None, shape: None, node: "n", boot: 1, seq, ts: 0.0, score: None, boxes: &[] };
        Message::new(MessageKind::Image, &header_fields, header, payload)
    }

    /// What the ring holds, oldest first: 'e' (encoded) or 'r' (raw), and
    /// the frame's sequence number.
    fn kept(ring: &mut FrameRing) -> Vec<(char, u64)> {
        std::iter::from_fn(|| ring.pop_oldest())
            .map(|kept| match kept {
                Kept::Encoded(m) => ('e', serde_json::from_slice::<serde_json::Value>(&m.header).unwrap()["seq"].as_u64().unwrap()),
                Kept::Raw(f) => ('r', f.seq),
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_frames_raw_and_hands_back_the_oldest() {
        let (mut ring, mut spares) = (FrameRing::new(2, false, 1), Spares::new(4, 0));
        let leaving: Vec<Option<u64>> = (0..4).map(|seq| ring.push(&mut Captured::Lent(frame(seq).as_frame()), &mut spares).map(|f| f.seq)).collect();
        assert_eq!(leaving, [None, None, Some(0), Some(1)]);
        assert_eq!(kept(&mut ring), [('r', 2), ('r', 3)]);
    }

    #[test]
    fn older_frames_are_kept_encoded_and_come_out_first() {
        let (mut ring, mut spares, pool) = (FrameRing::new(5, true, 1), Spares::new(4, 0), BufferPool::stocked(4, 64, 64));
        assert_eq!((ring.raw_capacity(), ring.encoded_capacity()), (3, 2));
        for seq in 0..6 {
            if let Some(leaving) = ring.push(&mut Captured::Lent(frame(seq).as_frame()), &mut spares) {
                assert!(ring.wants(leaving.seq, 0));
                let ticket = 10 + seq;
                ring.encoding(ticket, leaving.seq);
                assert!(ring.awaits_encoded() && ring.claims(ticket) && !ring.claims(ticket + 1));
                ring.file_encoded(message(&pool, leaving.seq), &pool);
            }
        }
        assert!(!ring.awaits_encoded());
        // Frames 0, 1 and 2 were encoded; there is room for two.
        assert_eq!(kept(&mut ring), [('e', 1), ('e', 2), ('r', 3), ('r', 4), ('r', 5)]);
    }

    #[test]
    fn frames_before_the_oldest_useful_are_forgotten_and_buffers_go_back() {
        let (mut ring, mut spares, pool) = (FrameRing::new(5, true, 1), Spares::new(4, 0), BufferPool::stocked(4, 64, 64));
        let mut payloads = Vec::new();
        for seq in 0..5 {
            if let Some(leaving) = ring.push(&mut Captured::Lent(frame(seq).as_frame()), &mut spares) {
                ring.encoding(seq, leaving.seq);
                let encoded = message(&pool, leaving.seq);
                payloads.push(encoded.payload.as_ptr());
                ring.file_encoded(encoded, &pool);
            }
        }
        assert!(!ring.wants(0, 1), "older than the oldest useful frame");
        // Frames 0 and 1 are encoded, 2, 3 and 4 raw: forget 0, 1 and 2.
        let raw_buffer = ring.raw[0].data.as_ptr();
        ring.forget_before(3, &mut spares, &pool);
        assert_eq!(ring.forgotten(), 2);
        assert_eq!(pool.take().1.as_ptr(), payloads[1], "an encoded frame's buffers went back to the pool");
        assert_eq!(spares.take().data.as_ptr(), raw_buffer, "a raw frame's buffer went back to the spares");
        assert_eq!(kept(&mut ring), [('r', 3), ('r', 4)]);
    }

    #[test]
    fn frames_encoded_after_a_clear_are_given_back() {
        let (mut ring, mut spares, pool) = (FrameRing::new(4, true, 1), Spares::new(4, 0), BufferPool::stocked(1, 64, 64));
        ring.encoding(3, 7);
        ring.clear(&mut spares, &pool);
        assert!(ring.claims(3), "the encoder's message is still the ring's, to be given back");
        let encoded = message(&pool, 7);
        let payload = encoded.payload.as_ptr();
        ring.file_encoded(encoded, &pool);
        assert!(!ring.awaits_encoded());
        assert!(ring.pop_oldest().is_none());
        assert_eq!(ring.forgotten(), 1);
        assert_eq!(pool.take().1.as_ptr(), payload);
    }

    #[test]
    fn owned_frames_are_kept_without_a_copy_and_buffers_go_round() {
        let (mut ring, mut spares) = (FrameRing::new(1, false, 1), Spares::new(4, 0));
        let mut current = FrameBuf::new(4, 4);
        let first = current.data.as_ptr();
        ring.push(&mut Captured::Owned(&mut current), &mut spares);
        assert_eq!(ring.raw[0].data.as_ptr(), first);
        // The next frame is read into a new buffer and pushes the first out,
        // whose buffer is then the spare the one after is read into.
        current = spares.take();
        current.resize(4, 4);
        let leaving = ring.push(&mut Captured::Owned(&mut current), &mut spares).unwrap();
        spares.give(leaving);
        assert_eq!(spares.take().data.as_ptr(), first);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let mut ring = FrameRing::new(0, true, 1);
        assert!(ring.push(&mut Captured::Lent(FrameBuf::new(4, 4).as_frame()), &mut Spares::new(4, 0)).is_none());
        assert!(ring.pop_oldest().is_none());
    }
}
