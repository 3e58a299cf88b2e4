//! Getting messages to the hub: the imagezmq wire format, and the sender
//! thread that owns the ZeroMQ socket so that capture never waits on the
//! network.

mod pool;
mod sender;
pub mod wire;

pub use pool::BufferPool;
pub use sender::{Sender, SenderReport};
pub use wire::{Header, Message, MessageKind};
