//! A wake-up signal another thread can send to a thread that waits in
//! `zmq::poll`: a Linux eventfd, which the poll watches beside its ZeroMQ
//! sockets. Used where work arrives from plain Rust threads (the store's
//! replies to the frontend, images for the dispatcher), so neither side
//! needs a ZeroMQ socket per producer nor a polling timer.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

#[derive(Debug)]
pub struct Wake(OwnedFd);

impl Wake {
    pub fn new() -> io::Result<Wake> {
        // SAFETY: eventfd(2) returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is new and ours alone.
        Ok(Wake(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the waiting thread (or its next wait). Safe from any thread.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd; it can only fail when the
        // counter is near overflow, and then a wake-up is pending anyway.
        unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears pending wake-ups; call when the poll says this is readable.
    pub fn clear(&self) {
        let mut count: u64 = 0;
        // SAFETY: an 8-byte read into our u64; EAGAIN when nothing is pending.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
    }

    /// The item for `zmq::poll`.
    pub fn poll_item(&self) -> zmq::PollItem<'static> {
        zmq::PollItem::from_fd(self.0.as_raw_fd(), zmq::POLLIN)
    }
}
