//! Recycled byte buffers for message headers and payloads, so the steady
//! state of the pipeline allocates nothing: buffers travel to the sender
//! thread inside messages and come back here after they went out.

use std::sync::{Arc, Mutex};

/// A shared stack of spare buffers.
#[derive(Clone, Debug)]
pub struct BufferPool {
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Default for BufferPool {
    /// The stack itself is sized once: growing it when a burst returns more
    /// buffers than ever before would be an allocation in the steady state.
    fn default() -> Self {
        BufferPool { spare: Arc::new(Mutex::new(Vec::with_capacity(MAX_SPARE))) }
    }
}

/// Buffers kept at most; more are freed, so a burst does not pin memory.
const MAX_SPARE: usize = 64;

impl BufferPool {
    /// An empty buffer, recycled when one is available.
    pub fn take(&self) -> Vec<u8> {
        self.spare.lock().map(|mut s| s.pop()).ok().flatten().unwrap_or_default()
    }

    /// Returns a buffer for reuse.
    pub fn give(&self, mut buf: Vec<u8>) {
        buf.clear();
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < MAX_SPARE {
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
