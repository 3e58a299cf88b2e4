//! What the hub's observers see: every message the hub has accepted
//! (parsed, checked, stored if it stores, not a repeat), once, in the order
//! it was accepted. The console, the metrics and MQTT are observers; so is
//! anything else that wants to watch the fleet without touching ingest.
//!
//! The rule for an observer: [`Observer::accepted`] runs on the ingest path,
//! so it must only record what it needs (a clone of the shared payload, a
//! counter) and return; anything slow (a browser, a broker) happens on the
//! observer's own threads, and a slow consumer loses old data rather than
//! holding the hub back.

use std::path::PathBuf;

use bytes::Bytes;

use crate::transport::wire::Header;

/// What an accepted message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A JPEG image (`NODE VIEW|jpg`).
    Jpeg,
    /// A raw BGR array (`NODE VIEW|image` with `dtype` and `shape`).
    Array,
    /// A motion or trigger event (`NODE VIEW|motion|moving`, `...|trigger|pressed`).
    Event,
    /// A heartbeat (`NODE|Heartbeat`).
    Heartbeat,
    /// Any other text: restarts, notices.
    Text,
}

/// One accepted message. Payload and header bytes are shared, not copied,
/// between the hub and its observers.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub kind: Kind,
    /// The header as parsed; `raw_header` keeps the keys it does not know
    /// (a heartbeat's health figures, for one).
    pub header: Header,
    pub raw_header: Bytes,
    pub payload: Bytes,
    /// The sending node: the header's `node`, else the first word of `msg`.
    pub node: String,
    /// The view (`msg`'s second word), for images and events; `None` for node-wide texts.
    pub view: Option<String>,
    /// When the hub accepted it, Unix seconds.
    pub received: f64,
    /// Where the store put it, if it stores images.
    pub stored: Option<PathBuf>,
}

/// Something that watches the messages a hub accepts.
pub trait Observer: Send + Sync {
    /// Called once per accepted message, on the ingest path: record and return.
    fn accepted(&self, message: &Accepted);
}
