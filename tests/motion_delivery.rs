//! Which frames of a motion event reach the hub: the real `camnode run`
//! sends a generated scene to `camnode hub`. A small object, followed for
//! several frames before the detector counts it, must arrive from the frame
//! it appeared; a larger one that pauses must arrive with its pause (held
//! back until it moves on); neither the leaves waving beside them nor the
//! still frames around them may.

mod support;

use std::io::Write;
use std::time::Duration;

use support::*;

const W: usize = 320;
const H: usize = 240;
const FRAMES: usize = 240;
const LIMIT: Duration = Duration::from_secs(60);

/// An object that crosses the yard at 2 pixels a frame: in view from frame
/// `appears` until `gone`, standing still in the frames of `pause`.
struct Crossing {
    appears: usize,
    gone: usize,
    pause: std::ops::Range<usize>,
    size: (usize, usize),
    y: usize,
}

/// A small object (6x8 pixels, 0.06 % of the frame), then a larger one
/// (24x40, 1.25 %) that stops for two frames.
const CROSSINGS: [Crossing; 2] = [
    Crossing { appears: 40, gone: 110, pause: 0..0, size: (6, 8), y: 150 },
    Crossing { appears: 140, gone: 210, pause: 170..172, size: (24, 40), y: 120 },
];

impl Crossing {
    /// The pixels the object covers in frame `t`: columns and rows.
    fn covers(&self, t: usize) -> Option<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let moved = (self.appears..t).filter(|s| !self.pause.contains(s)).count();
        let left = 40 + 2 * moved;
        (self.appears..self.gone).contains(&t).then(|| (left..left + self.size.0, self.y..self.y + self.size.1))
    }
}

/// A still textured yard with sensor noise, a waving bush and the crossings.
fn write_scene(path: &std::path::Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(out, "YUV4MPEG2 W{W} H{H} F10:1 Ip A1:1 C420jpeg").unwrap();
    let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let chroma = vec![128u8; W * H / 2];
    for t in 0..FRAMES {
        let sway = (next() % 3) as usize;
        let objects: Vec<_> = CROSSINGS.iter().filter_map(|c| c.covers(t)).collect();
        let mut luma = Vec::with_capacity(W * H);
        for i in 0..W * H {
            let (x, y) = (i % W, i / W);
            let mut v = 60 + 100 * y / H + if (x / 16 + y / 8) % 2 == 0 { 15 } else { 0 };
            if (220..280).contains(&x) && (20..60).contains(&y) {
                v = if ((x + sway) / 3 + (y / 4) * 7) % 5 < 2 { 70 } else { 120 };
            }
            if objects.iter().any(|(columns, rows)| columns.contains(&x) && rows.contains(&y)) {
                v = 30;
            }
            luma.push((v + (next() % 7) as usize).saturating_sub(3).min(255) as u8);
        }
        out.write_all(b"FRAME\n").unwrap();
        out.write_all(&luma).unwrap();
        out.write_all(&chroma).unwrap();
    }
}

#[test]
fn a_small_object_arrives_from_the_frame_it_appeared() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("scene.y4m");
    write_scene(&scene);
    let (port, jsonl) = (free_port(), dir.path().join("hub.jsonl"));
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode().args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}"), "--jsonl"]).arg(&jsonl),
    );
    let node = run_to_end(
        "camnode run",
        camnode()
            .args(["run", "--source", &format!("y4m:{}", scene.display()), "--rate", "max", "--heartbeat", "0"])
            .args(["--hub", &format!("tcp://127.0.0.1:{port}")]),
        LIMIT,
    );
    assert!(node.status.success(), "{}", String::from_utf8_lossy(&node.stderr));
    // The node exits only once the hub acknowledged everything.
    assert!(hub.stop(LIMIT).success());

    let messages = read_jsonl(&jsonl);
    let events: Vec<usize> = messages
        .iter()
        .filter(|m| m["msg"].as_str().unwrap().ends_with("|motion|moving"))
        .map(|m| m["seq"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(events.len(), 2, "one event per crossing, at frames {events:?}");
    // Frames spooled while the send queue was full arrive later: sort.
    let mut images: Vec<usize> = messages.iter().filter(|m| m["kind"] == "jpg").map(|m| m["seq"].as_u64().unwrap() as usize).collect();
    images.sort_unstable();
    for (crossing, &started) in CROSSINGS.iter().zip(&events) {
        assert!(started > crossing.appears + 2, "the event started at {started}, before the object was followed for long");
        let missing: Vec<usize> = (crossing.appears..crossing.gone).filter(|t| !images.contains(t)).collect();
        assert!(missing.is_empty(), "frames showing the object from {} that did not arrive: {missing:?}", crossing.appears);
    }
    // One frame before an object appeared, two after it left, at most.
    let shown = |t: usize| CROSSINGS.iter().any(|c| (c.appears.saturating_sub(1)..=c.gone + 2).contains(&t));
    let extra: Vec<usize> = images.iter().copied().filter(|&t| !shown(t)).collect();
    assert!(extra.is_empty(), "frames without an object arrived: {extra:?}");
}
