//! The `[transport]` config block: how messages reach the hub.

use serde::{Deserialize, Serialize};

use crate::settings::{from_str_via_serde, Checker};

/// `[transport]`: how messages reach the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// "req": connect to a hub and wait for its reply to each message (acknowledged;
    /// event frames the hub cannot take wait in the `[spool]`: for events that must arrive);
    /// "pub": bind and publish to any subscribed hub (live view, no acknowledgement, nothing spooled) (default "req").
    pub mode: Mode,
    /// REQ: the hub address to connect to (default "tcp://127.0.0.1:5555").
    /// PUB: the address to bind (default "tcp://*:5555").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Messages waiting for the network before new ones are dropped (default 16).
    pub queue: usize,
    /// REQ: seconds to wait for the hub's reply before reconnecting (default 3).
    pub reply_timeout: f64,
    /// PUB: messages ZeroMQ buffers per subscriber before dropping (default 8).
    pub pub_hwm: i32,
    /// Seconds at exit to finish sending what is queued: PUB at any exit,
    /// REQ after a signal, which caps it at 1.5 s (default 1).
    pub linger: f64,
    /// REQ: seconds at the natural end of a finite run (`frames`, end of a
    /// file) to keep delivering the queue and the spool before exiting (default 10).
    pub drain_timeout: f64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig { mode: Mode::Req, hub: None, queue: 16, reply_timeout: 3.0, pub_hwm: 8, linger: 1.0, drain_timeout: 10.0 }
    }
}

impl TransportConfig {
    /// The address to connect (REQ) or bind (PUB), with the mode's default.
    pub fn address(&self) -> String {
        self.hub.clone().unwrap_or_else(|| match self.mode {
            Mode::Req => "tcp://127.0.0.1:5555".into(),
            Mode::Pub => "tcp://*:5555".into(),
        })
    }

    pub(crate) fn check(&self, check: &mut Checker) {
        check.range("transport", "queue", self.queue as f64, 1.0, 10000.0);
        check.range("transport", "reply_timeout", self.reply_timeout, 0.05, 600.0);
        check.range("transport", "pub_hwm", self.pub_hwm as f64, 1.0, 100000.0);
        check.range("transport", "linger", self.linger, 0.0, 60.0);
        check.range("transport", "drain_timeout", self.drain_timeout, 0.0, 3600.0);
        let address = self.address();
        if !["tcp://", "ipc://", "inproc://"].iter().any(|p| address.starts_with(p)) {
            check.fail("transport", "hub", &format!("{address:?}"), "use a ZeroMQ address such as \"tcp://hub.local:5555\"");
        }
    }
}

/// ZeroMQ pattern between node and hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Req,
    Pub,
}

from_str_via_serde! {
    Mode => "mode": "req, pub",
}
