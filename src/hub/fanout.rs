//! What the hub binds for consumers beside its workers: `--publish` (PUB,
//! every message to every subscriber, imagezmq format, so
//! `ImageHub(open_port=..., REQ_REP=False)` receives it) and `--push`
//! (PUSH, every image to one PULL peer in turn, the seed tutorial's
//! ventilator). Both live on the store's thread.
//!
//! PUB never waits: each subscriber has a queue of `publish_hwm` messages
//! and small socket buffers, and a subscriber that falls behind loses the
//! frames that do not fit, alone, while ingest and the other subscribers
//! go on. The frames it gets are at most a few messages old. ZeroMQ does
//! not report these per-subscriber drops, so they are not counted.
//!
//! Subscribers choose by prefix, as ZeroMQ subscriptions match the first
//! frame: the hub publishes every header starting `{"msg": "` followed by
//! the text, whatever spacing or key order the node used, so
//! `{"msg": "garage ` selects node garage's images and events and
//! `{"msg": "garage|` its node-wide texts.
//!
//! PUSH waits when no PULL peer can take more (none connected, or all
//! behind), which holds the store and so the frontend: fire and forget for
//! the hub, but nothing dropped. An image in a PULL peer's queue is gone if
//! that peer is killed: `--workers` is the way that loses nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use bytes::{BufMut, Bytes, BytesMut};

use super::status::{bump, HubStatus};
use crate::transport::security::Curve;

/// Socket buffer of PUB and PUSH, bytes: small, so that what a slow peer
/// has queued stays a few frames (the kernel's default grows to megabytes).
const SEND_BUFFER: i32 = 256 * 1024;

/// Images a PULL peer may have queued to it.
const PUSH_HWM: i32 = 4;

/// Binds a PUB or PUSH socket as the CURVE server when `[security]` is on.
fn bind(context: &zmq::Context, kind: zmq::SocketType, hwm: i32, curve: Option<&Curve>, address: &str, key: &str) -> Result<zmq::Socket> {
    let socket = context.socket(kind)?;
    socket.set_sndhwm(hwm)?;
    socket.set_sndbuf(SEND_BUFFER)?;
    socket.set_linger(0)?;
    if let Some(curve) = curve {
        curve.secure(context, &socket, address)?;
    }
    socket
        .bind(address)
        .with_context(|| format!("cannot bind --{key} {address:?}: is another program using the port? set [hub] {key}"))?;
    Ok(socket)
}

pub struct Publisher {
    socket: zmq::Socket,
}

impl Publisher {
    pub fn bind(context: &zmq::Context, address: &str, hwm: i32, curve: Option<&Curve>) -> Result<Publisher> {
        Ok(Publisher { socket: bind(context, zmq::PUB, hwm, curve, address, "publish")? })
    }

    /// Publishes one message; never waits.
    pub fn publish(&self, header: &[u8], payload: &[u8], status: &HubStatus) {
        let sent = self.socket.send(header, zmq::SNDMORE | zmq::DONTWAIT).and_then(|()| self.socket.send(payload, zmq::DONTWAIT));
        bump(if sent.is_ok() { &status.published } else { &status.publish_dropped });
    }
}

pub struct Pusher {
    socket: zmq::Socket,
}

/// How long one wait for a PULL peer lasts before the stop flag is read.
const PUSH_WAIT_MS: i32 = 100;

impl Pusher {
    pub fn bind(context: &zmq::Context, address: &str, curve: Option<&Curve>) -> Result<Pusher> {
        let socket = bind(context, zmq::PUSH, PUSH_HWM, curve, address, "push")?;
        socket.set_sndtimeo(PUSH_WAIT_MS)?;
        Ok(Pusher { socket })
    }

    /// Hands an image to a PULL peer, waiting for one that can take it;
    /// false if `stop` came first.
    pub fn push(&self, header: &[u8], payload: &[u8], stop: &AtomicBool, status: &HubStatus) -> bool {
        loop {
            match self.socket.send(header, zmq::SNDMORE) {
                Ok(()) => break,
                Err(zmq::Error::EAGAIN) | Err(zmq::Error::EINTR) if !stop.load(Ordering::Relaxed) => continue,
                Err(_) => return false,
            }
        }
        // The first frame is in: the second always follows (same pipe, no wait).
        let sent = self.socket.send(payload, 0).is_ok();
        if sent {
            bump(&status.pushed);
        }
        sent
    }
}

/// The header as published: starting `{"msg": "`, so that a subscription
/// prefix works whatever spacing or key order the node wrote.
pub fn canonical_header(raw: &Bytes, msg: &str) -> Bytes {
    const CANONICAL: &[u8] = br#"{"msg": ""#;
    const COMPACT: &[u8] = br#"{"msg":""#;
    if raw.starts_with(CANONICAL) {
        return raw.clone();
    }
    let mut out = BytesMut::with_capacity(raw.len() + 16);
    if raw.starts_with(COMPACT) {
        out.put_slice(CANONICAL);
        out.put_slice(&raw[COMPACT.len()..]);
        return out.freeze();
    }
    // Any other layout: msg first, the other keys after it as they were.
    let mut rest: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(raw).unwrap_or_default();
    rest.remove("msg");
    out.put_slice(br#"{"msg": "#);
    out.put_slice(serde_json::to_string(msg).unwrap_or_default().as_bytes());
    if !rest.is_empty() {
        let others = serde_json::to_string(&rest).unwrap_or_default();
        out.put_slice(b", ");
        out.put_slice(&others.as_bytes()[1..]);
    } else {
        out.put_slice(b"}");
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_headers_start_with_the_text_whatever_the_node_wrote() {
        let canonical = |raw: &str, msg: &str| String::from_utf8(canonical_header(&Bytes::copy_from_slice(raw.as_bytes()), msg).to_vec()).unwrap();
        assert_eq!(canonical(r#"{"msg": "pi Cam|jpg"}"#, "pi Cam|jpg"), r#"{"msg": "pi Cam|jpg"}"#);
        assert_eq!(canonical(r#"{"msg":"yard Cam|jpg","seq":3}"#, "yard Cam|jpg"), r#"{"msg": "yard Cam|jpg","seq":3}"#);
        let moved = canonical(r#"{ "seq": 3, "msg" : "a b|jpg" }"#, "a b|jpg");
        assert_eq!(moved, r#"{"msg": "a b|jpg", "seq":3}"#);
        let value: serde_json::Value = serde_json::from_str(&moved).unwrap();
        assert_eq!((value["msg"].as_str(), value["seq"].as_u64()), (Some("a b|jpg"), Some(3)));
        assert_eq!(canonical(r#"  {"msg": "x|Heartbeat"}"#, "x|Heartbeat"), r#"{"msg": "x|Heartbeat"}"#);
    }
}
