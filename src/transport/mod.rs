//! Getting messages to the hub: the imagezmq wire format, the sender
//! thread that owns the ZeroMQ socket so that capture never waits on the
//! network, the on-disk spool that keeps event messages while the hub
//! cannot take them, and CURVE security for the links.

mod config;
mod pool;
mod sender;
pub mod security;
pub mod spool;
pub mod wire;

pub use config::{Mode, TransportConfig};
pub use pool::{BufferPool, Buffers};
pub use sender::{probe, Sender, SenderReport, Shutdown};
pub use spool::{Spool, SpoolConfig, SpoolCounts, SpoolKeep};
pub use wire::{Header, Message, MessageKind};
