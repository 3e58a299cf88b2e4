//! Recycled byte buffers for message headers and payloads, so the steady
//! state of the pipeline allocates nothing: buffers travel to the sender
//! thread inside messages and come back here after they went out.

use std::sync::{Arc, Mutex};

/// A shared stack of spare buffers. The stack is sized once, and its
/// capacity is the most buffers it keeps: growing it when a burst returns
/// more than ever before would be an allocation in the steady state, and
/// buffers past it are freed, so a burst does not pin memory.
#[derive(Clone, Debug)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Default for BufferPool {
    fn default() -> Self {
        BufferPool { spare: Arc::new(Mutex::new(Vec::with_capacity(MAX_SPARE))) }
    }
}

/// Buffers kept at most by a default pool.
const MAX_SPARE: usize = 64;

impl BufferPool {
    /// A pool with the buffers of `messages` messages made now, each a
    /// header with `header_room` bytes and a payload with `payload_room`:
    /// a pipeline stocks as many as it can ever have out at once, so that
    /// no buffer is made later, when a rare pile-up (a pre-event burst into
    /// a full send queue) first needs it. Reserved, not written, the room
    /// costs address space only.
    pub fn stocked(messages: usize, header_room: usize, payload_room: usize) -> Self {
        let mut spare = Vec::with_capacity((2 * messages).max(MAX_SPARE));
        for _ in 0..messages {
            // Taken payload first, then header (see `Pipeline::send_image`).
            spare.push(Vec::with_capacity(header_room));
            spare.push(Vec::with_capacity(payload_room));
        }
        BufferPool { spare: Arc::new(Mutex::new(spare)) }
    }

    /// An empty buffer, recycled when one is available.
    pub fn take(&self) -> Vec<u8> {
        self.spare.lock().map(|mut s| s.pop()).ok().flatten().unwrap_or_default()
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < spare.capacity() {
                spare.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_with_their_capacity() {
        let pool = BufferPool::default();
        let mut buf = pool.take();
        buf.extend_from_slice(&[1; 1000]);
        let ptr = buf.as_ptr();
        pool.give(buf);
        let again = pool.take();
        assert!(again.is_empty() && again.capacity() >= 1000);
        assert_eq!(again.as_ptr(), ptr);
    }
}
