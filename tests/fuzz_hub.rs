//! Property tests of what the hub does with untrusted bytes: random and
//! mutated messages through the same functions the frontend, the store and
//! the publisher use (`inspect`, `file_stem`, `image_path`, `quote`,
//! `canonical_header`). Whatever arrives, nothing panics, a file name stays
//! one short, safe name inside the store, a log quote stays one line of
//! bounded length, and a published header starts with the text.
//!
//! CI runs a few hundred cases per property; `scripts/fuzz.sh` runs the
//! same properties with a fixed, much larger budget and reports what it
//! found.

use std::path::Path;

use bytes::Bytes;
use camnode::hub::fanout::canonical_header;
use camnode::hub::inspect::{file_stem, inspect, quote};
use camnode::hub::store::image_path;
use proptest::prelude::*;

/// A small valid JPEG to mutate.
fn jpeg() -> Vec<u8> {
    camnode::encode::placeholder_jpeg().unwrap()
}

/// Message texts: imagezmq-like ones, and anything at all (long, NUL, `/`, `..`, non-ASCII).
fn texts() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,12} [A-Za-z]{1,8}\\|(jpg|image|motion\\|moving|Heartbeat)",
        "\\PC{0,40}",
        any::<String>(),
        ("[./a-z\u{0}\\\\]{0,20}", 0usize..400).prop_map(|(s, n)| format!("{s}{} Cam|jpg", "n".repeat(n))),
    ]
}

/// JSON headers with a text, optional camnode keys, and odd dtypes and shapes.
fn headers() -> impl Strategy<Value = Vec<u8>> {
    (texts(), proptest::option::of(any::<u64>()), proptest::option::of("[a-z0-9]{0,8}"), proptest::option::of(prop::collection::vec(any::<u32>(), 0..4)))
        .prop_map(|(msg, seq, dtype, shape)| {
            let mut header = serde_json::json!({ "msg": msg, "node": "n", "boot": 1 });
            if let Some(seq) = seq {
                header["seq"] = seq.into();
            }
            if let Some(dtype) = dtype {
                header["dtype"] = dtype.into();
            }
            if let Some(shape) = shape {
                header["shape"] = shape.into();
            }
            serde_json::to_vec(&header).unwrap()
        })
}

/// Payloads: a JPEG flipped, cut or padded at random, or random bytes.
fn payloads() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<usize>(), any::<u8>(), any::<usize>()).prop_map(|(at, xor, cut)| {
            let mut j = jpeg();
            let n = j.len();
            j[at % n] ^= xor;
            j.truncate(1 + cut % n);
            j
        }),
        prop::collection::vec(any::<u8>(), 0..300),
        Just(jpeg()),
    ]
}

/// Frame lists: mostly two frames (header, payload), sometimes other counts or raw bytes.
fn frames() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        4 => (headers(), payloads()).prop_map(|(h, p)| vec![h, p]),
        1 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..4),
    ]
}

fn safe_stem(stem: &str) {
    assert!(!stem.is_empty() && stem != "." && stem != "..", "{stem:?}");
    assert!(!stem.contains(['/', '\0']) && !stem.chars().any(char::is_control), "{stem:?}");
    assert!(stem.len() <= 140, "{} bytes", stem.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256), ..ProptestConfig::default() })]

    #[test]
    fn any_message_is_inspected_without_panicking(frames in frames()) {
        let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
        if let Ok(m) = inspect(frames) {
            safe_stem(&file_stem(&m.header.msg));
            let path = image_path(Path::new("/store"), &m.header.msg, m.header.ts.unwrap_or(0.0));
            prop_assert!(path.starts_with("/store"));
            prop_assert_eq!(path.components().count(), 4, "{}", path.display());
            prop_assert!(path.file_name().unwrap().len() < 255);
            let published = canonical_header(&m.raw_header, &m.header.msg);
            let value: serde_json::Value = serde_json::from_slice(&published).unwrap();
            prop_assert!(published.starts_with(br#"{"msg": ""#), "{}", String::from_utf8_lossy(&published));
            prop_assert_eq!(value["msg"].as_str(), Some(m.header.msg.as_str()));
        }
    }

    #[test]
    fn any_text_is_quoted_on_one_bounded_line(text in any::<String>(), long in 0usize..5000) {
        let text = text.repeat(1 + long / 10);
        let shown = quote(&text).to_string();
        prop_assert!(!shown.contains(['\n', '\r']));
        // 200 characters, each escaped to at most 10 bytes (\u{10ffff}), and the note.
        prop_assert!(shown.len() <= 200 * 10 + 40, "{} bytes", shown.len());
    }

    #[test]
    fn any_name_becomes_one_safe_file_name(text in texts()) {
        safe_stem(&file_stem(&text));
    }
}
