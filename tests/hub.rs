//! `camnode hub` as a broker, end to end with real peers: the real binary,
//! real imagezmq programs as workers and subscribers (tests/python), and
//! real camnode nodes. A worker killed with SIGKILL, a worker that hangs,
//! backpressure when every worker is busy, a slow subscriber beside a fast
//! one and a subscription prefix, PUSH to a PULL peer, nodes failing over
//! between two hubs, and CURVE on the frontend and the PUB socket. Every test checks the promise behind `OK`: every
//! image acknowledged to a node is processed by a worker.
//!
//! Images carry a tag, "NODE SEQ" in a JPEG comment segment, which the
//! Python workers and subscribers print, so a test knows exactly which
//! image went where.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use support::images::*;
use support::*;

/// `camnode -v hub` on a free port, stopping `idle` seconds after the last message.
fn hub(dir: &Path, idle: &str, args: &[&str]) -> (Proc, String, PathBuf) {
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let summary = dir.join(format!("hub-{}.json", free_port()));
    let proc = Proc::spawn(
        "camnode hub",
        camnode().args(["-v", "hub", "--bind", &address, "--idle", idle]).args(args).arg("--summary-json").arg(&summary),
    );
    (proc, address, summary)
}

#[test]
fn a_worker_killed_with_sigkill_loses_no_acknowledged_image() {
    let dir = tempfile::tempdir().unwrap();
    let one = worker(dir.path(), "one", &["--delay", "0.01"]);
    let two = worker(dir.path(), "two", &["--delay", "0.01"]);
    let workers = format!("{},{}", one.address, two.address);
    let (mut hub, address, summary) = hub(dir.path(), "1", &["--workers", &workers, "--worker-timeout", "5"]);
    let jpeg = scene_jpeg(320, 240);
    let sender = {
        let (address, jpeg) = (address.clone(), jpeg.clone());
        std::thread::spawn(move || send_images(&address, "yard", 300, &jpeg))
    };
    // Killed while images flow: it holds one, others wait in the hub's queue.
    wait_for_records(&[&two], 20);
    two.proc.signal(libc::SIGKILL);
    let acked = sender.join().unwrap();
    assert!(hub.wait(LIMIT).success());
    assert_all_processed(&acked, &processed(&[&one, &two]));
    let summary = read_json(&summary);
    assert_eq!(summary["unprocessed"], 0, "{summary}");
    assert!(summary["processed"].as_u64().unwrap() >= 300, "{summary}");
}

#[test]
fn a_hung_worker_is_taken_out_and_its_image_goes_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let hung = worker(dir.path(), "hung", &["--hang-after", "3"]);
    let good = worker(dir.path(), "good", &[]);
    let workers = format!("{},{}", hung.address, good.address);
    let (mut hub, address, summary) = hub(dir.path(), "1", &["--workers", &workers, "--worker-timeout", "0.5"]);
    let acked = send_images(&address, "gate", 40, &scene_jpeg(160, 120));
    expect_line(&hung.lines, "HANGING", LIMIT);
    assert!(hub.wait(LIMIT).success());
    assert_all_processed(&acked, &processed(&[&hung, &good]));
    let summary = read_json(&summary);
    assert_eq!(summary["unprocessed"], 0, "{summary}");
}

#[test]
fn when_every_worker_is_busy_the_hub_stops_acknowledging_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let delay = 0.2;
    let slow = worker(dir.path(), "slow", &["--delay", &delay.to_string()]);
    // A queue of 1 MB holds a few of these images, one is with the worker.
    let jpeg = scene_jpeg(768, 576);
    let fits = (1 << 20) / jpeg.len() as u64 + 2;
    let count = fits + 8;
    let (mut hub, address, summary) = hub(dir.path(), "1", &["--workers", &slow.address, "--queue-mb", "1", "--max-message-mb", "1"]);
    let started = Instant::now();
    let acked = send_images(&address, "dock", count, &jpeg);
    let took = started.elapsed().as_secs_f64();
    // The replies past the queue's room came only as the worker freed it.
    let floor = (count - fits) as f64 * delay;
    assert!(took >= floor * 0.9, "{count} images of {} bytes acknowledged in {took:.2} s, before the worker could take them ({floor:.2} s)", jpeg.len());
    assert!(hub.wait(LIMIT).success());
    assert_all_processed(&acked, &processed(&[&slow]));
    assert_eq!(read_json(&summary)["unprocessed"], 0);
}

/// A subscriber of tests/python/subscriber.py, connected.
fn subscriber(args: &[&str]) -> (Proc, Receiver<String>) {
    let mut proc = Proc::spawn(
        "subscriber",
        Command::new(python()).arg(repo_root().join("tests/python/subscriber.py")).args(args).stdout(Stdio::piped()),
    );
    let lines = line_channel(proc.stdout());
    expect_line(&lines, "CONNECTED", LIMIT);
    (proc, lines)
}

/// Tags a subscriber printed until it went idle.
fn got(lines: &Receiver<String>) -> Vec<String> {
    let mut tags = Vec::new();
    loop {
        let line = lines.recv_timeout(LIMIT).expect("a subscriber neither received nor went idle");
        if line == "IDLE" {
            return tags;
        }
        if let Some(rest) = line.strip_prefix("GOT ") {
            tags.push(rest.split(' ').skip(1).collect::<Vec<_>>().join(" "));
        }
    }
}

#[test]
fn a_slow_subscriber_loses_frames_alone_and_a_prefix_selects_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let publish = format!("tcp://127.0.0.1:{}", free_port());
    // Idle long enough for the subscribers to start before the first message.
    // Room for 50 frames per subscriber: a moment's stall of the fast one
    // (a busy machine) loses nothing, the slow one still falls far behind.
    let (mut hub, address, _) = hub(dir.path(), "30", &["--publish", &publish, "--publish-hwm", "50"]);
    let (_fast, fast) = subscriber(&["--connect", &publish, "--idle", "3"]);
    // What a viewer that wants recent frames does: little buffering on its side.
    let (_slow, slow) = subscriber(&["--connect", &publish, "--idle", "3", "--delay", "0.1", "--rcvhwm", "2", "--rcvbuf", "65536"]);
    let (_picky, picky) = subscriber(&["--connect", &publish, "--idle", "3", "--prefix", r#"{"msg": "west "#]);
    // Two cameras at 100 fps each, 20 kB frames.
    let (jpeg, pace) = (scene_jpeg(320, 240), Duration::from_millis(10));
    let west = {
        let (address, jpeg) = (address.clone(), jpeg.clone());
        std::thread::spawn(move || send_paced(&address, "west", 100, &jpeg, pace))
    };
    let east = send_paced(&address, "east", 100, &jpeg, pace);
    let west = west.join().unwrap();
    assert!(hub.stop(LIMIT).success());
    let (fast, slow, picky) = (got(&fast), got(&slow), got(&picky));
    let sent: HashSet<String> = east.iter().chain(&west).cloned().collect();
    assert_eq!(fast.iter().cloned().collect::<HashSet<_>>(), sent, "the fast subscriber missed images");
    assert!(slow.len() < 150 && !slow.is_empty(), "the slow subscriber got {} of 200", slow.len());
    assert_eq!(picky.iter().cloned().collect::<HashSet<_>>(), west.iter().cloned().collect(), "the prefix selected other nodes' images");
}

#[test]
fn push_hands_each_image_to_one_pull_peer() {
    let dir = tempfile::tempdir().unwrap();
    let push = format!("tcp://127.0.0.1:{}", free_port());
    let (mut hub, address, summary) = hub(dir.path(), "30", &["--push", &push]);
    let (_a, a) = subscriber(&["--connect", &push, "--pull", "--idle", "2"]);
    let (_b, b) = subscriber(&["--connect", &push, "--pull", "--idle", "2"]);
    let acked = send_images(&address, "dock", 60, &scene_jpeg(160, 120));
    assert!(hub.stop(LIMIT).success());
    let (a, b) = (got(&a), got(&b));
    assert!(!a.is_empty() && !b.is_empty(), "one PULL peer got nothing: {} and {}", a.len(), b.len());
    let mut all: Vec<String> = a.into_iter().chain(b).collect();
    all.sort();
    let mut expected = acked.clone();
    expected.sort();
    assert_eq!(all, expected, "every image to exactly one PULL peer");
    assert_eq!(read_json(&summary)["pushed"], 60);
}

#[test]
fn nodes_fail_over_between_two_hubs_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let (first_port, second_port) = (free_port(), free_port());
    let first = format!("tcp://127.0.0.1:{first_port}");
    let second = format!("tcp://127.0.0.1:{second_port}");
    let start_hub = |address: &str, name: &str| {
        let mut proc = Proc::spawn(
            name,
            camnode().args(["hub", "--bind", address, "--jsonl", "-"]).arg("--save").arg(dir.path().join(name)).stdout(Stdio::piped()),
        );
        let lines = line_channel(proc.stdout());
        (proc, lines)
    };
    let (mut a, a_lines) = start_hub(&first, "a");
    let (mut b, b_lines) = start_hub(&second, "b");
    let config = dir.path().join("node.toml");
    std::fs::write(&config, "[transport]\nreply_timeout = 0.5\nfailback = 2\n[node]\nheartbeat = 0\n").unwrap();
    let node = |name: &str| {
        let stats = dir.path().join(format!("{name}.json"));
        let mut command = camnode();
        command
            .args(["run", "--source", "synthetic:160x120", "--rate", "30", "--frames", "300", "--send", "all", "--name", name])
            .args(["--hub", &format!("{first},{second}")])
            .arg("--config")
            .arg(&config)
            .arg("--stats-json")
            .arg(&stats);
        (Proc::spawn(name, &mut command), stats)
    };
    let (mut n1, n1_stats) = node("n1");
    let (mut n2, n2_stats) = node("n2");
    let mut received: Vec<serde_json::Value> = Vec::new();
    let from_both = |received: &[serde_json::Value], since: usize| {
        ["n1", "n2"].iter().all(|n| received[since..].iter().filter(|m| m["node"] == *n && m["kind"] == "jpg").count() >= 10)
    };
    let since = received.len();
    take_until(&a_lines, &mut received, |r| from_both(r, since), "the first hub to get images from both nodes");
    // Gone: its REQ nodes hear nothing more and move to the second hub.
    assert!(a.stop(LIMIT).success());
    received.extend(a_lines.iter().map(|l| serde_json::from_str(&l).unwrap()));
    let since = received.len();
    take_until(&b_lines, &mut received, |r| from_both(r, since), "the second hub to get images after the first stopped");
    // The first hub comes back on its address; after failback the nodes return to it.
    let (mut a2, a2_lines) = start_hub(&first, "a2");
    let since = received.len();
    take_until(&a2_lines, &mut received, |r| from_both(r, since), "the nodes to come back to the first hub");
    assert!(n1.wait(LIMIT).success() && n2.wait(LIMIT).success());
    assert!(a2.stop(LIMIT).success() && b.stop(LIMIT).success());
    received.extend(a2_lines.iter().chain(b_lines.iter()).map(|l| serde_json::from_str(&l).unwrap()));
    // Everything a node counted as delivered reached one of the hubs.
    for (name, stats) in [("n1", n1_stats), ("n2", n2_stats)] {
        let sent = read_json(&stats)["sent"].as_u64().unwrap();
        // An event shares its frame's sequence number: a message is its number and text.
        let unique: HashSet<(u64, &str)> =
            received.iter().filter(|m| m["node"] == name).map(|m| (m["seq"].as_u64().unwrap(), m["msg"].as_str().unwrap())).collect();
        assert!(sent >= 150, "{name} delivered only {sent} messages");
        assert!(unique.len() as u64 >= sent, "{name}: {sent} delivered, {} reached a hub", unique.len());
    }
}

/// Reads a hub's `--jsonl -` lines into `received` until `done` holds for them.
fn take_until(lines: &Receiver<String>, received: &mut Vec<serde_json::Value>, done: impl Fn(&[serde_json::Value]) -> bool, what: &str) {
    let deadline = Instant::now() + LIMIT;
    while !done(received) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| panic!("waited {LIMIT:?} for {what}"));
        received.push(serde_json::from_str(&line).unwrap());
    }
}

/// The Z85 key of a `camnode keygen` certificate line `KIND-key = "..."`.
fn cert_key(path: &Path, kind: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{kind}-key"))).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn with_curve_the_frontend_and_publish_admit_only_listed_keys() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    std::fs::create_dir(&allowed).unwrap();
    for name in ["hub", "node", "viewer", "rogue"] {
        let out = run_to_end("camnode keygen", camnode().arg("keygen").arg(dir.path().join(name)), LIMIT);
        assert!(out.status.success());
    }
    for name in ["node", "viewer"] {
        std::fs::copy(dir.path().join(format!("{name}.key")), allowed.join(format!("{name}.key"))).unwrap();
    }
    let publish = format!("tcp://127.0.0.1:{}", free_port());
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &address, "--publish", &publish])
            .arg("--secret-cert")
            .arg(dir.path().join("hub.key_secret"))
            .arg("--allowed-dir")
            .arg(&allowed),
    );
    let hub_key = cert_key(&dir.path().join("hub.key"), "public");
    let context = zmq::Context::new();
    let curve_socket = |kind, name: &str| {
        let socket = context.socket(kind).unwrap();
        socket.set_linger(0).unwrap();
        socket.set_curve_serverkey(hub_key.as_bytes()).unwrap();
        socket.set_curve_publickey(cert_key(&dir.path().join(format!("{name}.key")), "public").as_bytes()).unwrap();
        socket.set_curve_secretkey(cert_key(&dir.path().join(format!("{name}.key_secret")), "secret").as_bytes()).unwrap();
        socket
    };
    let viewer = curve_socket(zmq::SUB, "viewer");
    viewer.set_subscribe(b"").unwrap();
    viewer.connect(&publish).unwrap();
    let rogue = curve_socket(zmq::SUB, "rogue");
    rogue.set_subscribe(b"").unwrap();
    rogue.connect(&publish).unwrap();
    let plain = context.socket(zmq::SUB).unwrap();
    plain.set_subscribe(b"").unwrap();
    plain.connect(&publish).unwrap();
    let node = curve_socket(zmq::REQ, "node");
    node.set_rcvtimeo(LIMIT.as_millis() as i32).unwrap();
    node.connect(&address).unwrap();
    let jpeg = scene_jpeg(160, 120);
    // Images until the admitted viewer has one (it may connect after the first).
    let mut seq = 0;
    loop {
        seq += 1;
        assert!(seq < 600, "the admitted viewer received nothing");
        let header = format!(r#"{{"msg": "yard Cam|jpg", "node": "yard", "boot": 1, "seq": {seq}}}"#);
        node.send_multipart([header.as_bytes(), &jpeg[..]], 0).unwrap();
        assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
        if viewer.poll(zmq::POLLIN, 100).unwrap() > 0 {
            break;
        }
    }
    assert!(viewer.recv_multipart(0).unwrap()[0].starts_with(br#"{"msg": "yard Cam|jpg""#));
    assert_eq!((rogue.poll(zmq::POLLIN, 0).unwrap(), plain.poll(zmq::POLLIN, 0).unwrap()), (0, 0), "an unlisted subscriber got images");
    // A node without CURVE gets no answer.
    let stranger = context.socket(zmq::REQ).unwrap();
    stranger.set_linger(0).unwrap();
    stranger.connect(&address).unwrap();
    stranger.send_multipart([&br#"{"msg": "x Cam|jpg"}"#[..], &jpeg[..]], 0).unwrap();
    assert_eq!(stranger.poll(zmq::POLLIN, 1000).unwrap(), 0, "the hub answered a node without CURVE");
    assert!(hub.stop(LIMIT).success());
}
