//! The imagezmq 1.2 wire format: every message is two ZeroMQ frames, a JSON
//! header and a payload. imagezmq hubs read `msg` (and `dtype`/`shape` for
//! arrays) and ignore every other key, so camnode adds `node`, `seq`, `ts`,
//! `score` and `boxes` for hubs that want them.
//!
//! Texts follow imagenode/imagehub: `"NODE VIEW|jpg"` for JPEG images,
//! `"NODE VIEW|image"` for arrays, `"NODE VIEW|motion|moving"` and
//! `"...|still"` for events, `"NODE|Heartbeat"`, `"NODE|Restart|HOST|..."`.

use serde::{Deserialize, Serialize};

use crate::motion::BoundingBox;

/// What a message carries; decides whether it may be dropped or spooled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A frame image.
    Image,
    /// A state change (motion started or ended, trigger).
    Event,
    /// Liveness or restart notice.
    Notice,
}

impl MessageKind {
    /// "an image message", "an event message", "a notice message": for logs.
    pub fn with_article(self) -> &'static str {
        match self {
            MessageKind::Image => "an image message",
            MessageKind::Event => "an event message",
            MessageKind::Notice => "a notice message",
        }
    }
}

/// The JSON header as a node writes it. Fields borrow so that building a
/// header allocates nothing.
#[derive(Debug, Serialize)]
pub struct OutHeader<'a> {
    pub msg: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<&'a [usize]>,
    pub node: &'a str,
    /// Start time of the node process (Unix microseconds): with `seq` it
    /// names a message uniquely across restarts, for de-duplication.
    pub boot: u64,
    pub seq: u64,
    pub ts: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub boxes: &'a [BoundingBox],
}

/// The JSON header as a hub reads it: `msg` is the only key imagezmq
/// requires; the rest are camnode's.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Header {
    pub msg: String,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub shape: Option<Vec<usize>>,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub boot: Option<u64>,
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub ts: Option<f64>,
    #[serde(default)]
    pub score: Option<f32>,
}

/// A message ready for the socket: header bytes and payload bytes, both from
/// the [`BufferPool`](super::BufferPool).
#[derive(Debug)]
pub struct Message {
    pub kind: MessageKind,
    pub header: Vec<u8>,
    pub payload: Vec<u8>,
    /// Capture time, for latency accounting and the spool's order.
    pub ts: f64,
    /// Part of an event (the event message itself, or a motion, trigger,
    /// pre- or post-event frame): spooled rather than dropped when the hub
    /// cannot take it. Set for event messages; the pipeline sets it for images.
    pub durable: bool,
}

/// Bytes a header buffer gets up front: more than a header with the
/// detector's most boxes (`motion::MAX_BOXES`) takes.
pub const HEADER_ROOM: usize = 1024;

impl Message {
    /// Builds a message, writing the header JSON into `header` (reused).
    pub fn new(kind: MessageKind, header: &OutHeader, mut header_buf: Vec<u8>, payload: Vec<u8>) -> Message {
        header_buf.clear();
        // Headers differ in length from message to message (score, boxes);
        // with room for a long one, a recycled buffer never grows again.
        header_buf.reserve(HEADER_ROOM);
        serde_json::to_writer(&mut header_buf, header).expect("a header always serialises");
        Message { kind, header: header_buf, payload, ts: header.ts, durable: kind == MessageKind::Event }
    }

    /// Builds a message whose header carries more keys beside `header`'s
    /// (a heartbeat's health); imagezmq hubs ignore them.
    pub fn with_keys(kind: MessageKind, header: &OutHeader, keys: &impl Serialize, mut header_buf: Vec<u8>, payload: Vec<u8>) -> Message {
        #[derive(Serialize)]
        struct Joined<'a, K> {
            #[serde(flatten)]
            header: &'a OutHeader<'a>,
            #[serde(flatten)]
            keys: &'a K,
        }
        header_buf.clear();
        serde_json::to_writer(&mut header_buf, &Joined { header, keys }).expect("a header always serialises");
        Message { kind, header: header_buf, payload, ts: header.ts, durable: kind == MessageKind::Event }
    }
}

/// Parses a received header, with what was wrong when it is not imagezmq's.
pub fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    serde_json::from_slice(bytes).map_err(|e| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
        format!("header is not imagezmq JSON with a \"msg\" key ({e}): {shown:?}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_header_is_imagezmq_compatible() {
        let boxes = [BoundingBox { x: 1, y: 2, width: 3, height: 4 }];
        let header = OutHeader { msg: "garage Cam|jpg", dtype: None, shape: None, node: "garage", boot: 1, seq: 9, ts: 1.5, score: Some(4.5), boxes: &boxes };
        let msg = Message::new(MessageKind::Image, &header, Vec::new(), vec![0xFF, 0xD8]);
        let json: serde_json::Value = serde_json::from_slice(&msg.header).unwrap();
        assert_eq!(json["msg"], "garage Cam|jpg");
        assert!(json.get("dtype").is_none() && json.get("shape").is_none());
        assert_eq!(json["seq"], 9);
        assert_eq!(json["boxes"], serde_json::json!([[1, 2, 3, 4]]));
        let parsed = parse_header(&msg.header).unwrap();
        assert_eq!((parsed.msg.as_str(), parsed.seq, parsed.score), ("garage Cam|jpg", Some(9), Some(4.5)));
    }

    #[test]
    fn raw_header_has_dtype_and_shape() {
        let header = OutHeader { msg: "n v|image", dtype: Some("uint8"), shape: Some(&[480, 640, 3]), node: "n", boot: 1, seq: 0, ts: 0.0, score: None, boxes: &[] };
        let msg = Message::new(MessageKind::Image, &header, Vec::new(), Vec::new());
        let parsed = parse_header(&msg.header).unwrap();
        assert_eq!(parsed.dtype.as_deref(), Some("uint8"));
        assert_eq!(parsed.shape, Some(vec![480, 640, 3]));
    }

    #[test]
    fn extra_keys_sit_beside_msg() {
        let header = OutHeader { msg: "yard|Heartbeat", dtype: None, shape: None, node: "yard", boot: 1, seq: 3, ts: 2.0, score: None, boxes: &[] };
        let msg = Message::with_keys(MessageKind::Notice, &header, &serde_json::json!({"uptime_s": 5.5}), Vec::new(), Vec::new());
        let json: serde_json::Value = serde_json::from_slice(&msg.header).unwrap();
        assert_eq!((json["msg"].as_str(), json["seq"].as_u64(), json["uptime_s"].as_f64()), (Some("yard|Heartbeat"), Some(3), Some(5.5)));
        assert_eq!(parse_header(&msg.header).unwrap().msg, "yard|Heartbeat");
    }

    #[test]
    fn a_header_from_imagezmq_itself_parses() {
        let parsed = parse_header(br#"{"msg": "pi1 Cam|jpg"}"#).unwrap();
        assert_eq!(parsed.msg, "pi1 Cam|jpg");
        assert_eq!(parsed.seq, None);
        assert!(parse_header(b"OK").unwrap_err().contains("not imagezmq JSON"));
    }
}
