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
    /// REQ: the hub address to connect to (default "tcp://127.0.0.1:5555"),
    /// or several, "A,B" or ["A", "B"]: when one is silent the node moves to
    /// the next, and back to the first after `failback` seconds.
    /// PUB: the address to bind (default "tcp://*:5555"), or several.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "one_or_list")]
    pub hub: Option<String>,
    /// REQ with several hubs: seconds on a later hub before trying the first again (default 60).
    pub failback: f64,
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
        TransportConfig { mode: Mode::Req, hub: None, failback: 60.0, queue: 16, reply_timeout: 3.0, pub_hwm: 8, linger: 1.0, drain_timeout: 10.0 }
    }
}

impl TransportConfig {
    /// The addresses to connect (REQ, in order of preference) or bind
    /// (PUB), with the mode's default.
    pub fn addresses(&self) -> Vec<String> {
        match &self.hub {
            Some(list) => list.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect(),
            None => vec![match self.mode {
                Mode::Req => "tcp://127.0.0.1:5555".into(),
                Mode::Pub => "tcp://*:5555".into(),
            }],
        }
    }

    pub(crate) fn check(&self, check: &mut Checker) {
        check.range("transport", "queue", self.queue as f64, 1.0, 10000.0);
        check.range("transport", "reply_timeout", self.reply_timeout, 0.05, 600.0);
        check.range("transport", "pub_hwm", self.pub_hwm as f64, 1.0, 100000.0);
        check.range("transport", "linger", self.linger, 0.0, 60.0);
        check.range("transport", "drain_timeout", self.drain_timeout, 0.0, 3600.0);
        check.range("transport", "failback", self.failback, 1.0, 86400.0);
        let addresses = self.addresses();
        if addresses.is_empty() {
            check.fail("transport", "hub", "\"\"", "use a ZeroMQ address such as \"tcp://hub.local:5555\", or several: \"tcp://a:5555,tcp://b:5555\"");
        }
        for address in addresses {
            if !["tcp://", "ipc://", "inproc://"].iter().any(|p| address.starts_with(p)) {
                check.fail("transport", "hub", &format!("{address:?}"), "use a ZeroMQ address such as \"tcp://hub.local:5555\"");
            }
        }
    }
}

/// `hub` as one string ("A" or "A,B") or a list of strings, kept as "A,B".
fn one_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrList {
        One(String),
        List(Vec<String>),
    }
    Ok(Some(match OneOrList::deserialize(d)? {
        OneOrList::One(one) => one,
        OneOrList::List(list) => list.join(","),
    }))
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
