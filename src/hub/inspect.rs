//! The first thing the hub does with a message: decide, without side
//! effects, whether it is an imagezmq message and what it is. Everything
//! here takes untrusted bytes from the network, so nothing may panic, grow
//! without bound or reach a log or a path unescaped: [`inspect`] turns two
//! frames into an [`Incoming`] or a reason, [`quote`] cuts untrusted text for
//! log lines, and [`file_stem`] makes a message text a safe file name. These
//! are what `scripts/fuzz.sh` feeds random and mutated input.

use std::fmt;

use bytes::Bytes;

use super::observe::Kind;
use crate::transport::wire::{parse_header, Header};

/// A message that passed the checks, ready for the store.
#[derive(Clone, Debug)]
pub struct Incoming {
    pub kind: Kind,
    pub header: Header,
    /// Header and payload as the node sent them: workers get exactly these.
    pub raw_header: Bytes,
    pub payload: Bytes,
    /// The header's `node`, else `msg`'s first word.
    pub node: String,
    /// `msg`'s second word for images and events.
    pub view: Option<String>,
    /// From the JPEG header or the array shape.
    pub width: Option<usize>,
    pub height: Option<usize>,
}

impl Incoming {
    /// Images go to workers, PUSH and JetStream; other messages are stored and published only.
    pub fn is_image(&self) -> bool {
        matches!(self.kind, Kind::Jpeg | Kind::Array)
    }

    /// The id a repeat is recognised by: node, boot, sequence number and text.
    pub fn id(&self) -> Option<(String, u64, u64, String)> {
        let (Some(node), Some(seq)) = (&self.header.node, self.header.seq) else { return None };
        Some((node.clone(), self.header.boot.unwrap_or(0), seq, self.header.msg.clone()))
    }
}

/// Checks one message's frames; `Err` says what is wrong, for one warning.
pub fn inspect(frames: Vec<Bytes>) -> Result<Incoming, String> {
    let count = frames.len();
    let Ok([raw_header, payload]) = <[Bytes; 2]>::try_from(frames) else {
        return Err(format!("it has {count} frames: imagezmq messages have 2 (JSON header, payload)"));
    };
    let header = parse_header(&raw_header)?;
    let msg = &header.msg;
    let first = msg.split('|').next().unwrap_or("");
    let node = header.node.clone().unwrap_or_else(|| first.split(' ').next().unwrap_or("").to_string());
    let mut incoming = Incoming {
        kind: Kind::Text,
        node,
        view: first.split_once(' ').map(|(_, view)| view.to_string()),
        width: None,
        height: None,
        raw_header,
        payload,
        header,
    };
    let header = &incoming.header;
    if header.msg.ends_with("|jpg") {
        let info = read_jpeg_header(&incoming.payload).map_err(|e| format!("{} is not a valid JPEG: {e}", quote(&header.msg)))?;
        (incoming.width, incoming.height, incoming.kind) = (Some(info.width), Some(info.height), Kind::Jpeg);
    } else if let (Some(dtype), Some(shape)) = (&header.dtype, &header.shape) {
        let expected = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if dtype != "uint8" || expected != Some(incoming.payload.len()) {
            return Err(format!(
                "{}: an array of dtype {} and shape {} does not match its {} bytes",
                quote(&header.msg),
                quote(dtype),
                quote(&format!("{shape:?}")),
                incoming.payload.len()
            ));
        }
        if shape.len() == 3 {
            (incoming.height, incoming.width) = (Some(shape[0]), Some(shape[1]));
        }
        incoming.kind = Kind::Array;
    } else if header.msg.contains("|motion|") || header.msg.contains("|trigger|") {
        incoming.kind = Kind::Event;
    } else if header.msg.ends_with("|Heartbeat") {
        incoming.kind = Kind::Heartbeat;
    } else {
        incoming.view = None;
    }
    if incoming.kind == Kind::Heartbeat {
        incoming.view = None;
    }
    Ok(incoming)
}

/// A JPEG's header, with a decompressor kept per thread: making one per
/// message costs more than reading the header.
fn read_jpeg_header(jpeg: &[u8]) -> turbojpeg::Result<turbojpeg::DecompressHeader> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<turbojpeg::Decompressor>> = const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(turbojpeg::Decompressor::new()?);
        }
        cell.as_mut().expect("made above").read_header(jpeg)
    })
}

/// Characters of untrusted text a log line shows.
const QUOTED_CHARS: usize = 200;

/// Untrusted text for a log line: quoted and escaped (no line breaks or
/// terminal controls get through), cut after 200 characters with the full
/// length said.
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

pub struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(QUOTED_CHARS) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}... ({} bytes in all)", &self.0[..cut], self.0.len()),
        }
    }
}

/// Bytes of a message text kept in a file name: with the time stamp and
/// the hash, names stay far below the usual 255-byte limit.
const STEM_BYTES: usize = 120;

/// A message text as a file name stem: `"garage Cam|jpg"` -> `garage-Cam`.
/// Separators and path characters become `-`, control characters (NUL
/// included) `_`; a text too long for a file name is cut and gets a hash of
/// the whole, so two long names stay apart. Never empty, never `.` or `..`.
pub fn file_stem(msg: &str) -> String {
    let text = msg.strip_suffix("|jpg").unwrap_or(msg);
    let mut stem: String = text
        .chars()
        .map(|c| match c {
            ' ' | '/' | '|' | '\\' => '-',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    if stem.len() > STEM_BYTES {
        let mut cut = STEM_BYTES;
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        stem.truncate(cut);
        stem.push_str(&format!("~{:08x}", crc32fast::hash(text.as_bytes())));
    }
    if stem.is_empty() || stem.chars().all(|c| c == '.') {
        stem.insert(0, '_');
    }
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(header: &str, payload: &[u8]) -> Vec<Bytes> {
        vec![Bytes::copy_from_slice(header.as_bytes()), Bytes::copy_from_slice(payload)]
    }

    #[test]
    fn kinds_node_and_view_come_from_the_text() {
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let m = inspect(frames(r#"{"msg": "yard Cam|jpg"}"#, &jpeg)).unwrap();
        assert_eq!((m.kind, m.node.as_str(), m.view.as_deref(), m.width), (Kind::Jpeg, "yard", Some("Cam"), Some(8)));
        let m = inspect(frames(r#"{"msg": "yard|Heartbeat", "node": "y2"}"#, b"")).unwrap();
        assert_eq!((m.kind, m.node.as_str(), m.view), (Kind::Heartbeat, "y2", None));
        let m = inspect(frames(r#"{"msg": "yard Cam|motion|moving"}"#, b"")).unwrap();
        assert_eq!((m.kind, m.view.as_deref()), (Kind::Event, Some("Cam")));
        let m = inspect(frames(r#"{"msg": "n v|image", "dtype": "uint8", "shape": [2, 3, 3]}"#, &[0; 18])).unwrap();
        assert_eq!((m.kind, m.width, m.height), (Kind::Array, Some(3), Some(2)));
    }

    #[test]
    fn malformed_messages_say_what_is_wrong() {
        let cases: [(Vec<Bytes>, &str); 5] = [
            (vec![Bytes::from_static(b"x")], "1 frames: imagezmq messages have 2"),
            (frames("not json", b""), "not imagezmq JSON"),
            (frames(r#"{"msg": "n v|jpg"}"#, b"\xff\xd8garbage"), "not a valid JPEG"),
            (frames(r#"{"msg": "n v|image", "dtype": "float64", "shape": [1]}"#, &[0; 8]), "does not match"),
            (frames(r#"{"msg": "n v|image", "dtype": "uint8", "shape": [4294967296, 4294967296, 3]}"#, &[0; 8]), "does not match"),
        ];
        for (frames, expected) in cases {
            let err = inspect(frames).unwrap_err();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn quoting_cuts_long_text_and_escapes_line_breaks() {
        let long = "a\n".repeat(50_000);
        let shown = quote(&long).to_string();
        assert!(shown.len() < 500 && !shown.contains('\n') && shown.ends_with("(100000 bytes in all)"), "{shown}");
        assert_eq!(quote("é|x").to_string(), "\"é|x\"");
    }

    #[test]
    fn file_stems_are_safe_short_and_distinct() {
        assert_eq!(file_stem("garage Cam|jpg"), "garage-Cam");
        assert_eq!(file_stem("../../etc/passwd x|jpg"), "..-..-etc-passwd-x");
        assert_eq!(file_stem("a\0b c|jpg"), "a_b-c");
        assert_eq!(file_stem(".."), "_..");
        let (one, two) = (format!("{} Cam|jpg", "n".repeat(300)), format!("{} Cam|jpg", "n".repeat(301)));
        assert!(file_stem(&one).len() < 140 && file_stem(&one) != file_stem(&two));
        assert!(file_stem(&"é".repeat(200)).len() <= 140);
    }
}
