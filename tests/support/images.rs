//! Images for the hub's tests, and the peers around them: a REQ node in
//! the test process that sends tagged JPEGs ("NODE SEQ" in a comment segment
//! after SOI, which tests/python/worker.py and subscriber.py print), the
//! Python imagezmq workers, and the check that every acknowledged image was
//! processed.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::*;

/// How long any one wait in these tests may last.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A JPEG of the synthetic scene at this size (tens of kilobytes at 768x576).
pub fn scene_jpeg(width: usize, height: usize) -> Vec<u8> {
    use camnode::capture::FrameSource;
    let mut scene = camnode::capture::Synthetic::new(width, height, 7);
    let frame = scene.next_frame().unwrap().unwrap();
    let mut out = Vec::new();
    camnode::encode::Encoder::new(camnode::encode::Format::Jpg, 95).unwrap().encode(&frame, &mut out).unwrap();
    out
}

/// `jpeg` with "TAG" as a comment segment right after SOI.
pub fn tagged(jpeg: &[u8], tag: &str) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xFE]);
    out.extend_from_slice(&((tag.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(tag.as_bytes());
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// A REQ node in the test: sends tagged images one at a time, as a camnode
/// node does, and returns the tags the hub acknowledged.
pub fn send_images(address: &str, node: &str, count: u64, jpeg: &[u8]) -> Vec<String> {
    send_paced(address, node, count, jpeg, Duration::ZERO)
}

/// [`send_images`] with `pace` between the sends, as a camera's frame rate.
pub fn send_paced(address: &str, node: &str, count: u64, jpeg: &[u8], pace: Duration) -> Vec<String> {
    let context = zmq::Context::new();
    let socket = context.socket(zmq::REQ).unwrap();
    socket.set_linger(0).unwrap();
    socket.set_rcvtimeo(LIMIT.as_millis() as i32).unwrap();
    socket.connect(address).unwrap();
    let mut acked = Vec::new();
    for seq in 1..=count {
        let tag = format!("{node} {seq}");
        let header = format!(r#"{{"msg": "{node} Cam|jpg", "node": "{node}", "boot": 1, "seq": {seq}, "ts": {}}}"#, camnode::frame::unix_now());
        let payload = tagged(jpeg, &tag);
        // As a node does: "ERROR: not stored" means send it again.
        for attempt in 1.. {
            socket.send_multipart([header.as_bytes(), &payload[..]], 0).unwrap();
            let reply = socket.recv_bytes(0).unwrap_or_else(|e| panic!("no reply from the hub to {tag}: {e}"));
            if reply == b"OK" {
                break;
            }
            assert!(attempt < 300 && reply.starts_with(b"ERROR"), "{tag}: {}", String::from_utf8_lossy(&reply));
            std::thread::sleep(Duration::from_millis(200));
        }
        acked.push(tag);
        std::thread::sleep(pace);
    }
    acked
}

/// A Python imagezmq worker (tests/python/worker.py) on a free port.
pub struct Worker {
    pub proc: Proc,
    pub lines: Receiver<String>,
    pub address: String,
    pub out: PathBuf,
}

pub fn worker(dir: &Path, name: &str, args: &[&str]) -> Worker {
    let out = dir.join(format!("{name}.txt"));
    let mut proc = Proc::spawn(
        name,
        Command::new(python()).arg(repo_root().join("tests/python/worker.py")).args(args).arg("--out").arg(&out).stdout(Stdio::piped()),
    );
    let lines = line_channel(proc.stdout());
    let ready = expect_line(&lines, "READY", LIMIT);
    let address = ready.split_whitespace().nth(1).unwrap().to_string();
    Worker { proc, lines, address, out }
}

/// Tags of the images the workers answered, from their record files.
pub fn processed(workers: &[&Worker]) -> Vec<String> {
    let mut tags = Vec::new();
    for worker in workers {
        let text = std::fs::read_to_string(&worker.out).unwrap_or_default();
        tags.extend(text.lines().map(|l| l.split(' ').skip(1).take(2).collect::<Vec<_>>().join(" ")));
    }
    tags
}

pub fn assert_all_processed(acked: &[String], processed: &[String]) {
    let done: HashSet<&String> = processed.iter().collect();
    let missing: Vec<&String> = acked.iter().filter(|t| !done.contains(t)).collect();
    assert!(missing.is_empty(), "{} acknowledged images were never processed: {:?}", missing.len(), &missing[..missing.len().min(10)]);
}

/// Waits until the workers together have answered `n` images (their
/// record files have the lines: they announce nothing else per image).
pub fn wait_for_records(workers: &[&Worker], n: usize) {
    let deadline = Instant::now() + LIMIT;
    while processed(workers).len() < n {
        assert!(Instant::now() < deadline, "the workers answered fewer than {n} images in {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
