//! Recycled byte buffers for message headers and payloads, so the steady
//! state of the pipeline allocates nothing: buffers travel to the sender
//! thread inside messages and come back here after they went out.

use std::sync::{Arc, Mutex};

/// A shared stack of spare buffer pairs, a header's and a payload's. They
/// go and come back in pairs, under one lock: the sender thread returns
/// buffers while the main loop takes them, and with single buffers the loop
/// could take a header's small buffer as a payload between the sender's two
/// returns and have to grow it. The stack is sized once, and its capacity
/// is the most pairs it keeps: growing it when a burst returns more than
/// ever before would be an allocation in the steady state, and pairs past
/// it are freed, so a burst does not pin memory.
#[derive(Clone, Debug)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Buffers>>>,
}

/// A header buffer and a payload buffer.
pub type Buffers = (Vec<u8>, Vec<u8>);

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool { spare: Arc::new(Mutex::new(Vec::with_capacity(MAX_SPARE))) }
    }
}

/// Pairs kept at most by a default pool.
const MAX_SPARE: usize = 32;

impl BufferPool {
    /// A pool with the buffers of `messages` messages made now, each a
    /// header with `header_room` bytes and a payload with `payload_room`:
    /// a pipeline stocks as many as it can ever have out at once, so that
    /// no buffer is made later, when a rare pile-up (a pre-event burst into
    /// a full send queue) first needs it. Reserved, not written, the room
    /// costs address space only.
    pub fn stocked(messages: usize, header_room: usize, payload_room: usize) -> Self {
        let mut spare = Vec::with_capacity(messages.max(MAX_SPARE));
        spare.extend((0..messages).map(|_| (Vec::with_capacity(header_room), Vec::with_capacity(payload_room))));
        BufferPool { spare: Arc::new(Mutex::new(spare)) }
    }

    /// Empty header and payload buffers, recycled when a pair is available.
    pub fn take(&self) -> Buffers {
        self.spare.lock().map(|mut s| s.pop()).ok().flatten().unwrap_or_default()
    }

    /// Returns a message's header and payload buffers for reuse.
    pub fn give(&self, mut header: Vec<u8>, mut payload: Vec<u8>) {
        header.clear();
        payload.clear();
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < spare.capacity() {
                spare.push((header, payload));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_in_their_roles_with_their_capacity() {
        let pool = BufferPool::stocked(2, 16, 1000);
        let (mut header, mut payload) = pool.take();
        assert!(header.capacity() >= 16 && payload.capacity() >= 1000);
        header.extend_from_slice(&[1; 10]);
        payload.extend_from_slice(&[2; 500]);
        let (header_at, payload_at) = (header.as_ptr(), payload.as_ptr());
        pool.give(header, payload);
        let (header, payload) = pool.take();
        assert!(header.is_empty() && payload.is_empty());
        assert_eq!((header.as_ptr(), payload.as_ptr()), (header_at, payload_at));
    }
}
