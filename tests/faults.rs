//! Fault tests of store-and-forward: the real `camnode` binary against hubs
//! and links that fail, each in one way, on loopback or in network
//! namespaces the test makes itself.
//!
//! Every scenario keeps the books the same way. A reference run of the same
//! scene against a healthy hub says which event messages (motion events and
//! the moving, pre- and post-event frames) the node captures: the synthetic
//! scene and the detector are deterministic, so a faulty run captures the
//! same ones. At the end every one of them must have been acknowledged by a
//! hub or still be in the spool, or, where the spool's cap or a full disk is
//! the point of the test, have been evicted, counted. Nothing else may
//! arrive (nothing invented, nothing damaged), and peak memory must stay
//! within a bound of the reference run's.
//!
//! Times are kept short so the whole file runs in about a minute: the hub
//! that is "down at start, up a minute later" comes up after a few seconds of
//! spooling, which exercises the same path as a minute does.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use camnode::transport::wire::{parse_header, OutHeader};
use camnode::transport::{BufferPool, Message, MessageKind, Spool};
use support::proxy::Proxy;
use support::{camnode, free_port, read_json, read_jsonl, Proc};

/// An event message, whichever run and node sent it: its sequence number and
/// its text after the node name ("Cam|jpg", "Cam|motion|moving").
type Id = (u64, String);

/// One message as a hub or the spool has it.
#[derive(Clone, Debug)]
struct Got {
    node: String,
    seq: u64,
    msg: String,
}

impl Got {
    fn from_parts(header: &[u8], payload: &[u8]) -> Got {
        let header = parse_header(header).unwrap_or_else(|e| panic!("a hub received a damaged header: {e}"));
        if header.msg.ends_with("|jpg") {
            turbojpeg::decompress(payload, turbojpeg::PixelFormat::GRAY)
                .unwrap_or_else(|e| panic!("{} (seq {:?}) is not a whole JPEG: {e}", header.msg, header.seq));
        }
        Got {
            node: header.node.unwrap_or_default(),
            seq: header.seq.unwrap_or_default(),
            msg: header.msg,
        }
    }

    /// Images and motion events: what the spool must not lose.
    fn is_event_message(&self) -> bool {
        self.msg.ends_with("|jpg") || self.msg.contains("|motion|")
    }

    fn id(&self) -> Id {
        let text = self.msg.split_once(' ').map_or(self.msg.as_str(), |(_, rest)| rest);
        (self.seq, text.to_string())
    }
}

/// The event message ids of `node` among `got`.
fn ids<'a>(got: impl IntoIterator<Item = &'a Got>, node: &str) -> BTreeSet<Id> {
    got.into_iter().filter(|g| g.node == node && g.is_event_message()).map(Got::id).collect()
}

/// How a test hub answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Records, then replies OK: imagezmq's hub.
    Healthy,
    /// Accepts requests and never replies (a ROUTER socket: it keeps
    /// accepting the node's new connections, as a hung hub process does).
    Silent,
    /// Replies, but never OK: text, binary, empty and two-frame replies.
    Garbage,
    /// Replies OK after this long.
    Slow(Duration),
}

/// A hub in a thread of the test, on 127.0.0.1:`port`, recording everything
/// it receives before it replies, so that its record is exact.
struct TestHub {
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestHub {
    fn start(port: u16, behaviour: Behaviour) -> TestHub {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let context = zmq::Context::new();
        let socket = context.socket(if behaviour == Behaviour::Silent { zmq::ROUTER } else { zmq::REP }).unwrap();
        socket.set_linger(0).unwrap();
        // A hub restarted on the same port right after the last one closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = socket.bind(&format!("tcp://127.0.0.1:{port}")) {
            assert!(Instant::now() < deadline, "cannot bind a test hub to port {port}: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let (record, stopped) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let _context = context;
            let garbage: [&[&[u8]]; 4] = [&[b"NO"], &[&[0xff, 0x00, 0x13]], &[b""], &[b"OK", b"and more"]];
            let mut replies = 0;
            while !stopped.load(Ordering::SeqCst) {
                if socket.poll(zmq::POLLIN, 50).unwrap() == 0 {
                    continue;
                }
                let parts = socket.recv_multipart(0).unwrap();
                // A ROUTER sees [peer, empty, header, payload]; a REP [header, payload].
                let (header, payload) = (&parts[parts.len() - 2], &parts[parts.len() - 1]);
                if let Behaviour::Slow(delay) = behaviour {
                    // The slowness is the fault under test.
                    std::thread::sleep(delay);
                }
                record.lock().unwrap().push(Got::from_parts(header, payload));
                match behaviour {
                    Behaviour::Healthy | Behaviour::Slow(_) => socket.send(&b"OK"[..], 0).unwrap(),
                    Behaviour::Garbage => {
                        socket.send_multipart(garbage[replies % garbage.len()].iter().copied(), 0).unwrap();
                        replies += 1;
                    }
                    Behaviour::Silent => {}
                }
            }
        });
        TestHub { got, stop, thread: Some(thread) }
    }

    fn received(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// Closes the hub (as a crash would, with requests in flight lost) and
    /// returns what it received.
    fn stop(mut self) -> Vec<Got> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        std::mem::take(&mut *self.got.lock().unwrap())
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Settings every node here shares: no heartbeats (they are not event
/// messages), quick reply timeouts so that tests are short.
fn node_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!("[node]\nheartbeat = 0.0\n[transport]\nreply_timeout = 0.5\n{extra}");
    fs::write(&path, text).unwrap();
    path
}

/// A node run's command: `camnode -v run` with a config (the shared
/// settings, then `extra` in `[transport]`), a spool, a hub, stats in
/// `DIR/NAME.json` and its log in `DIR/NAME.log`.
fn node(dir: &Path, name: &str, spool: &Path, hub: &str, extra: &str, args: &[&str]) -> Command {
    let mut command = camnode();
    command
        .args(["-v", "run", "--name", name, "--hub", hub])
        .arg("--config")
        .arg(node_config(dir, name, extra))
        .arg("--spool")
        .arg(spool)
        .arg("--stats-json")
        .arg(dir.join(format!("{name}.json")))
        .args(args)
        .stderr(fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    command
}

/// What a healthy run captured: its event message ids and peak RSS (KiB).
type Reference = (BTreeSet<Id>, u64);

/// The reference of a source and frame count, run once per test binary.
fn reference(source: &str, frames: u64) -> Reference {
    static CACHE: OnceLock<Mutex<HashMap<(String, u64), Reference>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (source.to_string(), frames);
    if let Some(known) = cache.lock().unwrap().get(&key) {
        return known.clone();
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hub = TestHub::start(port, Behaviour::Healthy);
    let frames_arg = frames.to_string();
    let mut run = node(dir.path(), "ref", &dir.path().join("spool"), &format!("tcp://127.0.0.1:{port}"), "", &[
        "--source", source, "--rate", "max", "--frames", &frames_arg,
    ]);
    let status = Proc::spawn("reference node", &mut run).wait(Duration::from_secs(60));
    assert!(status.success(), "the reference run failed: {}", log(dir.path(), "ref"));
    let stats = read_json(&dir.path().join("ref.json"));
    let got = hub.stop();
    let ids = ids(&got, "ref");
    assert!(ids.iter().any(|(_, m)| m.ends_with("|motion|moving")) && ids.len() > 20, "the reference scene has no events: {ids:?}");
    let result = (ids, stats["max_rss_kb"].as_u64().unwrap());
    cache.lock().unwrap().insert(key, result.clone());
    result
}

fn log(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default()
}

/// What a spool directory holds, read back through camnode's own spool
/// (which also proves the files whole); damaged files are skipped.
fn spooled(dir: &Path) -> Vec<Got> {
    let spool = Spool::open(dir, 1024).unwrap();
    let pool = BufferPool::default();
    spool
        .keys()
        .into_iter()
        .filter_map(|key| spool.read(key, &pool).ok())
        .map(|m| Got::from_parts(&m.header, &m.payload))
        .collect()
}

fn spool_files(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |d| d.filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".msg"))).count())
}

/// Polls a condition on another process's state, failing after `limit`.
fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Peak RSS of a running process, KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Spooling must not make memory grow with the backlog: it lives on disk.
const RSS_MARGIN_KB: u64 = 24 * 1024;

fn assert_bounded_memory(scenario: &str, rss_kb: u64, reference_kb: u64) {
    eprintln!("{scenario}: peak RSS {rss_kb} KiB (healthy run: {reference_kb} KiB)");
    assert!(
        rss_kb <= reference_kb + RSS_MARGIN_KB,
        "{scenario}: peak RSS {rss_kb} KiB, more than the healthy run's {reference_kb} KiB + {RSS_MARGIN_KB} KiB"
    );
}

/// The books: every captured event message was acknowledged or is still
/// spooled, except exactly `evicted` of them; nothing else arrived.
fn assert_books(scenario: &str, expected: &BTreeSet<Id>, acked: &BTreeSet<Id>, spooled: &BTreeSet<Id>, evicted: u64) {
    let kept: BTreeSet<Id> = acked.union(spooled).cloned().collect();
    let missing: Vec<&Id> = expected.difference(&kept).collect();
    let invented: Vec<&Id> = kept.difference(expected).collect();
    eprintln!(
        "{scenario}: {} event messages captured: {} acknowledged, {} still spooled, {} evicted by design",
        expected.len(),
        acked.len(),
        spooled.difference(acked).count(),
        missing.len()
    );
    assert!(invented.is_empty(), "{scenario}: messages that were never captured arrived: {invented:?}");
    assert_eq!(missing.len() as u64, evicted, "{scenario}: lost {} event messages ({evicted} evicted, counted): {missing:?}", missing.len());
}

fn stats(dir: &Path, name: &str) -> serde_json::Value {
    read_json(&dir.join(format!("{name}.json")))
}

/// `camnode hub` on a port, writing what it accepts to a JSON-lines file.
fn camnode_hub(port: u16, jsonl: &Path) -> Proc {
    Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &format!("tcp://127.0.0.1:{port}")])
            .arg("--jsonl")
            .arg(jsonl)
            .stderr(Stdio::null()),
    )
}

fn hub_jsonl(path: &Path) -> Vec<Got> {
    read_jsonl(path)
        .iter()
        .map(|v| Got {
            node: v["node"].as_str().unwrap_or_default().to_string(),
            seq: v["seq"].as_u64().unwrap_or_default(),
            msg: v["msg"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// A time-lapse node (`send = "all"`, `[spool] keep = "all"`) whose hub is
/// down at start: every frame, not only those of events, waits in the spool
/// and reaches the hub once it is up.
#[test]
fn spool_keep_all_keeps_every_frame_through_an_outage() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let hub_addr = format!("tcp://127.0.0.1:{port}");
    let frames = 60;
    let mut node = Proc::spawn(
        "node",
        &mut node(dir.path(), "lapse", &spool, &hub_addr, "[spool]\nkeep = \"all\"\n", &[
            "--source", "synthetic:160x120", "--rate", "30", "--frames", &frames.to_string(), "--send", "all",
        ]),
    );
    // The synthetic scene starts still: these are frames no event covers.
    wait_until("20 frames are in the spool", Duration::from_secs(15), || spool_files(&spool) >= 20);
    let jsonl = dir.path().join("hub.jsonl");
    let mut hub = camnode_hub(port, &jsonl);
    assert!(node.wait(Duration::from_secs(40)).success(), "{}", log(dir.path(), "lapse"));
    hub.stop(Duration::from_secs(5));
    let images: BTreeSet<u64> =
        hub_jsonl(&jsonl).iter().filter(|g| g.node == "lapse" && g.msg.ends_with("|jpg")).map(|g| g.seq).collect();
    let stats = stats(dir.path(), "lapse");
    assert_eq!(images, (0..frames).collect::<BTreeSet<u64>>(), "images at the hub; node stats: {stats}");
    assert_eq!(spool_files(&spool), 0, "the spool drained");
}

#[test]
fn hub_down_at_start_then_up() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let hub_addr = format!("tcp://127.0.0.1:{port}");
    let (expected, reference_rss) = reference("synthetic:320x240", 300);
    let mut node = Proc::spawn("node", &mut node(dir.path(), "n", &spool, &hub_addr, "", &["--source", "synthetic:320x240", "--frames", "300"]));
    // Down long enough for a whole motion event to go to the spool.
    wait_until("the first event is in the spool", Duration::from_secs(15), || spool_files(&spool) >= 40);
    let jsonl = dir.path().join("hub.jsonl");
    let mut hub = camnode_hub(port, &jsonl);
    assert!(node.wait(Duration::from_secs(40)).success(), "{}", log(dir.path(), "n"));
    hub.stop(Duration::from_secs(5));
    let stats = stats(dir.path(), "n");
    let acked = ids(&hub_jsonl(&jsonl), "n");
    let left = ids(&spooled(&spool), "n");
    assert_books("hub down at start", &expected, &acked, &left, 0);
    let spool_counts = &stats["spool"];
    assert!(spool_counts["stored"].as_u64().unwrap() >= 40, "{spool_counts}");
    assert_eq!(spool_counts["delivered"], spool_counts["stored"], "the drain at the end delivers the whole spool");
    assert_eq!(spool_counts["waiting"], 0);
    assert_bounded_memory("hub down at start", stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

#[test]
fn hub_killed_and_restarted_mid_event() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let (expected, reference_rss) = reference("synthetic:320x240", 360);
    let mut node = Proc::spawn("node", &mut node(dir.path(), "n", &spool, &format!("tcp://127.0.0.1:{port}"), "", &[
        "--source", "synthetic:320x240", "--frames", "360",
    ]));
    let mut journals = Vec::new();
    for round in 0..4 {
        let jsonl = dir.path().join(format!("hub{round}.jsonl"));
        let mut hub = camnode_hub(port, &jsonl);
        // Frames flow only during events: this stops the hub in the middle of one.
        wait_until("the hub takes part of an event", Duration::from_secs(20), || lines(&jsonl) >= 12);
        // SIGTERM, not SIGKILL: `camnode hub` replies before it writes its
        // journal, so a SIGKILL between the two would lose a message that
        // the node rightly counts as delivered, and the books would be wrong
        // about the hub, not the node.
        hub.stop(Duration::from_secs(5));
        journals.push(jsonl);
        // Down until the node has noticed: it logs each outage once.
        wait_until("the node notices the hub is gone", Duration::from_secs(10), || log(dir.path(), "n").matches("did not reply").count() > round);
    }
    let jsonl = dir.path().join("hub-last.jsonl");
    let mut hub = camnode_hub(port, &jsonl);
    assert!(node.wait(Duration::from_secs(60)).success(), "{}", log(dir.path(), "n"));
    hub.stop(Duration::from_secs(5));
    journals.push(jsonl);
    let got: Vec<Got> = journals.iter().flat_map(|j| hub_jsonl(j)).collect();
    let stats = stats(dir.path(), "n");
    assert_books("hub restarted 4 times", &expected, &ids(&got, "n"), &ids(&spooled(&spool), "n"), 0);
    assert!(stats["spool"]["stored"].as_u64().unwrap() > 0 && stats["reconnects"].as_u64().unwrap() >= 4, "{stats}");
    assert_bounded_memory("hub restarts", stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

#[test]
fn hubs_that_never_reply_reply_garbage_or_crawl() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let (expected, reference_rss) = reference("synthetic:320x240", 420);
    let mut node = Proc::spawn("node", &mut node(dir.path(), "n", &spool, &format!("tcp://127.0.0.1:{port}"), "", &[
        "--source", "synthetic:320x240", "--frames", "420",
    ]));
    let silent = TestHub::start(port, Behaviour::Silent);
    wait_until("the silent hub's node spools an event", Duration::from_secs(15), || spool_files(&spool) >= 20);
    let silent = silent.stop();
    let garbage = TestHub::start(port, Behaviour::Garbage);
    wait_until("the node tries the garbage hub", Duration::from_secs(15), || garbage.received() >= 6);
    let garbage = garbage.stop();
    // 250 ms a reply is 4 messages a second against 30 frames: the queue fills and event frames spill to the spool.
    let slow = TestHub::start(port, Behaviour::Slow(Duration::from_millis(250)));
    wait_until("the slow hub takes some", Duration::from_secs(20), || slow.received() >= 12);
    let slow = slow.stop();
    let healthy = TestHub::start(port, Behaviour::Healthy);
    assert!(node.wait(Duration::from_secs(60)).success(), "{}", log(dir.path(), "n"));
    let healthy = healthy.stop();
    let stats = stats(dir.path(), "n");
    assert!(!silent.is_empty(), "the silent hub saw no request");
    assert!(garbage.len() >= 6);
    let acked: Vec<&Got> = slow.iter().chain(&healthy).collect();
    let garbage_ids = ids(&garbage, "n");
    let acked_ids = ids(acked.iter().copied(), "n");
    let left = ids(&spooled(&spool), "n");
    // A garbage reply is not an acknowledgement: everything the garbage hub saw was kept and went again.
    assert!(garbage_ids.iter().all(|id| acked_ids.contains(id) || left.contains(id)), "a message answered with garbage was dropped");
    assert_books("silent, garbage and slow hubs", &expected, &acked_ids, &left, 0);
    assert!(stats["spool"]["stored"].as_u64().unwrap() >= 20, "{stats}");
    // The node counted as delivered only what got an OK (a reply lost when a hub closed makes a repeat, never the reverse).
    assert!(stats["sent"].as_u64().unwrap() <= acked.len() as u64, "sent {} but only {} were acknowledged", stats["sent"], acked.len());
    assert_bounded_memory("silent, garbage and slow hubs", stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

#[test]
fn latency_stalls_and_cut_links_through_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let hub_port = free_port();
    let hub = TestHub::start(hub_port, Behaviour::Healthy);
    let proxy = Proxy::start(hub_port);
    let (expected, reference_rss) = reference("synthetic:320x240", 420);
    // 60 ms each way: every request takes over 120 ms, so at 30 fps the queue backs up into the spool.
    proxy.set_delay(Duration::from_millis(60));
    let mut node = Proc::spawn("node", &mut node(dir.path(), "n", &spool, &format!("tcp://127.0.0.1:{}", proxy.port), "", &[
        "--source", "synthetic:320x240", "--frames", "420",
    ]));
    wait_until("messages arrive through the slow link", Duration::from_secs(15), || hub.received() >= 10);
    // A link that passes nothing for longer than the reply timeout.
    proxy.set_stalled(true);
    wait_until("the node notices the stall", Duration::from_secs(10), || log(dir.path(), "n").contains("did not reply"));
    proxy.set_stalled(false);
    let before = hub.received();
    wait_until("delivery resumes after the stall", Duration::from_secs(10), || hub.received() > before + 5);
    // Connections cut under the node, then refused for a while.
    for _ in 0..3 {
        let before = hub.received();
        proxy.cut();
        wait_until("delivery resumes after a cut", Duration::from_secs(10), || hub.received() > before);
    }
    proxy.set_refuse(true);
    let accepted = proxy.accepted();
    proxy.cut();
    wait_until("the node retries against refusals", Duration::from_secs(10), || proxy.accepted() >= accepted + 2);
    proxy.set_refuse(false);
    proxy.set_delay(Duration::ZERO);
    assert!(node.wait(Duration::from_secs(60)).success(), "{}", log(dir.path(), "n"));
    let got = hub.stop();
    let stats = stats(dir.path(), "n");
    assert_books("latency, a stall, cuts and refusals", &expected, &ids(&got, "n"), &ids(&spooled(&spool), "n"), 0);
    assert!(stats["spool"]["stored"].as_u64().unwrap() >= 10 && stats["reconnects"].as_u64().unwrap() >= 1, "{stats}");
    assert_bounded_memory("proxy faults", stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

/// Runs a command, true if it succeeded; what it printed goes into `errors`.
fn try_run(errors: &mut String, args: &[impl AsRef<str>]) -> bool {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    match Command::new(args[0]).args(&args[1..]).output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            errors.push_str(&format!("`{}`: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
            false
        }
        Err(e) => {
            errors.push_str(&format!("`{}`: {e}", args.join(" ")));
            false
        }
    }
}

/// Three network namespaces: the node's and the hub's, joined through a
/// router between them, where the test degrades the link. Forwarded traffic
/// meets the router's queue as a real network does: on the node's own
/// interface TCP would throttle itself before the queue ever dropped.
struct Namespaces {
    node: String,
    router: String,
    hub: String,
    /// The router's interface towards the hub.
    link: String,
}

impl Namespaces {
    fn create(errors: &mut String) -> Option<Namespaces> {
        let tag = std::process::id() % 100_000;
        let ns = Namespaces {
            node: format!("cn-node-{tag}"),
            router: format!("cn-router-{tag}"),
            hub: format!("cn-hub-{tag}"),
            link: format!("cnb{tag}"),
        };
        let (node_if, router_in, hub_if) = (format!("cnn{tag}"), format!("cna{tag}"), format!("cnh{tag}"));
        let forward = "echo 1 > /proc/sys/net/ipv4/ip_forward";
        let steps: Vec<Vec<&str>> = vec![
            vec!["ip", "netns", "add", &ns.node],
            vec!["ip", "netns", "add", &ns.router],
            vec!["ip", "netns", "add", &ns.hub],
            vec!["ip", "link", "add", &node_if, "netns", &ns.node, "type", "veth", "peer", "name", &router_in, "netns", &ns.router],
            vec!["ip", "link", "add", &ns.link, "netns", &ns.router, "type", "veth", "peer", "name", &hub_if, "netns", &ns.hub],
            vec!["ip", "-n", &ns.node, "addr", "add", "10.208.1.1/24", "dev", &node_if],
            vec!["ip", "-n", &ns.router, "addr", "add", "10.208.1.2/24", "dev", &router_in],
            vec!["ip", "-n", &ns.router, "addr", "add", "10.208.2.2/24", "dev", &ns.link],
            vec!["ip", "-n", &ns.hub, "addr", "add", "10.208.2.1/24", "dev", &hub_if],
            vec!["ip", "-n", &ns.node, "link", "set", &node_if, "up"],
            vec!["ip", "-n", &ns.router, "link", "set", &router_in, "up"],
            vec!["ip", "-n", &ns.router, "link", "set", &ns.link, "up"],
            vec!["ip", "-n", &ns.hub, "link", "set", &hub_if, "up"],
            vec!["ip", "-n", &ns.node, "link", "set", "lo", "up"],
            vec!["ip", "-n", &ns.hub, "link", "set", "lo", "up"],
            vec!["ip", "-n", &ns.node, "route", "add", "default", "via", "10.208.1.2"],
            vec!["ip", "-n", &ns.hub, "route", "add", "default", "via", "10.208.2.2"],
            vec!["ip", "netns", "exec", &ns.router, "sh", "-c", forward],
        ];
        steps.iter().all(|step| try_run(errors, step)).then_some(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes its ends of the veth pairs, and so the pairs.
        for ns in [&self.node, &self.router, &self.hub] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn packet_loss_and_delay_between_network_namespaces() {
    let mut why = String::new();
    let Some(ns) = Namespaces::create(&mut why) else {
        eprintln!("SKIPPED packet_loss_and_delay_between_network_namespaces: cannot create network namespaces (needs root and iproute2): {why}");
        return;
    };
    let qdisc = |args: &[&'static str]| -> Vec<String> {
        ["ip", "netns", "exec", &ns.router, "tc", "qdisc", "add", "dev", &ns.link, "root"].iter().chain(args).map(|a| a.to_string()).collect()
    };
    // 10 % loss and 40 ms delay on the way to the hub.
    let scenario = if try_run(&mut why, &qdisc(&["netem", "delay", "40ms", "loss", "10%"])) {
        "netem loss and delay"
    } else {
        eprintln!(
            "SKIPPED the netem part of packet_loss_and_delay_between_network_namespaces: this kernel has no netem qdisc ({why}). \
             Running it with tbf instead: a 2 Mbit/s link whose queue holds three packets delays packets in the queue \
             and drops those past it, so the loss is real kernel packet loss (TCP retransmits), but bursty rather than random"
        );
        why.clear();
        assert!(try_run(&mut why, &qdisc(&["tbf", "rate", "2mbit", "burst", "3000", "limit", "4500"])), "neither netem nor tbf: {why}");
        "tbf loss and queueing delay"
    };
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (expected, reference_rss) = reference("synthetic:320x240", 300);
    let jsonl = dir.path().join("hub.jsonl");
    let mut hub = Proc::spawn(
        "camnode hub in its namespace",
        Command::new("ip")
            .args(["netns", "exec", &ns.hub, env!("CARGO_BIN_EXE_camnode"), "hub", "--bind", "tcp://10.208.2.1:5555", "--jsonl"])
            .arg(&jsonl)
            .stderr(Stdio::null()),
    );
    let run = node(dir.path(), "n", &spool, "tcp://10.208.2.1:5555", "", &["--source", "synthetic:320x240", "--frames", "300"]);
    let program = run.get_program().to_owned();
    let mut inside = Command::new("ip");
    inside.args(["netns", "exec", &ns.node]).arg(program).args(run.get_args()).stderr(fs::File::create(dir.path().join("n.log")).unwrap());
    let mut node = Proc::spawn("node in its namespace", &mut inside);
    assert!(node.wait(Duration::from_secs(60)).success(), "{}", log(dir.path(), "n"));
    hub.stop(Duration::from_secs(5));
    let stats = stats(dir.path(), "n");
    let shown = Command::new("ip").args(["netns", "exec", &ns.router, "tc", "-s", "qdisc", "show", "dev", &ns.link]).output().unwrap();
    let shown = String::from_utf8_lossy(&shown.stdout);
    let dropped: u64 = shown.split("dropped ").nth(1).and_then(|d| d.split(',').next()).and_then(|d| d.trim().parse().ok()).unwrap_or(0);
    eprintln!("{scenario}: the link dropped {dropped} packets; the node spooled {}", stats["spool"]["stored"]);
    assert!(dropped > 0, "the link lost nothing: {shown}");
    assert_books(scenario, &expected, &ids(&hub_jsonl(&jsonl), "n"), &ids(&spooled(&spool), "n"), 0);
    assert_bounded_memory(scenario, stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Tmpfs, String> {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(Tmpfs(path.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn spool_on_a_full_disk_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    // 384 KiB holds a few dozen frames of the ~130 event messages; without
    // the right to mount, the spool's own cap stands in for the small disk.
    let (disk, cap) = match Tmpfs::mount(&spool, "384k") {
        Ok(disk) => (Some(disk), "64"),
        Err(e) => {
            eprintln!("no tmpfs ({e}): a 1 MiB [spool] max_mb stands in for a full disk");
            (None, "1")
        }
    };
    let (expected, reference_rss) = reference("synthetic:320x240", 240);
    let extra = format!("drain_timeout = 0.0\n[spool]\nmax_mb = {cap}\n");
    // Nothing listens: every event message goes to the spool, which overflows.
    let mut run = node(dir.path(), "n", &spool, &format!("tcp://127.0.0.1:{}", free_port()), &extra, &[
        "--source", "synthetic:320x240", "--rate", "60", "--frames", "240",
    ]);
    let mut node_proc = Proc::spawn("node", &mut run);
    assert!(node_proc.wait(Duration::from_secs(30)).success(), "{}", log(dir.path(), "n"));
    let stats = stats(dir.path(), "n");
    let evicted = stats["spool"]["evicted"].as_u64().unwrap();
    assert!(evicted > 0, "the spool never ran out of room: {stats}");
    assert_eq!(stats["spool"]["failed"], 0, "a full disk must cost old messages, not new ones: {stats}");
    assert!(fs::read_dir(&spool).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")), "a failed write left a temporary file");
    if disk.is_some() {
        assert!(log(dir.path(), "n").contains("is on a full disk"), "the node never hit ENOSPC: {}", log(dir.path(), "n"));
    }
    // The next start delivers what survived.
    let port = free_port();
    let hub = TestHub::start(port, Behaviour::Healthy);
    let mut next = node(dir.path(), "after", &spool, &format!("tcp://127.0.0.1:{port}"), "", &["--source", "synthetic:320x240", "--rate", "max", "--frames", "10"]);
    assert!(Proc::spawn("next node", &mut next).wait(Duration::from_secs(30)).success(), "{}", log(dir.path(), "after"));
    let got = hub.stop();
    let delivered = ids(&got, "n");
    assert_books("spool on a full disk", &expected, &delivered, &BTreeSet::new(), evicted);
    // Oldest first: what survived is the end of the run, but for the one
    // message the sender held in flight (eviction spares it).
    let newest: BTreeSet<Id> = expected.iter().rev().take(delivered.len()).cloned().collect();
    assert!(delivered.difference(&newest).count() <= 1, "eviction was not oldest-first: kept {delivered:?}");
    assert_bounded_memory("full disk", stats["max_rss_kb"].as_u64().unwrap(), reference_rss);
}

/// A Y4M clip of `frames` frames, 160x120: 30 still, then a dark box
/// crossing; returns the file and the size of one frame's pixels.
fn clip(dir: &Path, frames: usize) -> (PathBuf, usize) {
    let (w, h) = (160, 120);
    let frame_len = w * h * 3 / 2;
    let path = dir.join("clip.y4m");
    let mut file = std::io::BufWriter::new(fs::File::create(&path).unwrap());
    writeln!(file, "YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg").unwrap();
    for i in 0..frames {
        let mut pixels = vec![128u8; frame_len];
        for (p, value) in pixels[..w * h].iter_mut().enumerate() {
            *value = (40 + (p / w) * 150 / h + if (p % w / 10 + p / w / 10) % 2 == 0 { 20 } else { 0 }) as u8;
        }
        if i >= 30 {
            let x0 = ((i - 30) * 8) % (w - 24);
            for y in 20..100 {
                pixels[y * w + x0..y * w + x0 + 24].fill(10);
            }
        }
        file.write_all(b"FRAME\n").unwrap();
        file.write_all(&pixels).unwrap();
    }
    file.flush().unwrap();
    (path, frame_len)
}

#[test]
fn the_source_failing_mid_event_loses_nothing_captured() {
    let dir = tempfile::tempdir().unwrap();
    let (full, frame_len) = clip(dir.path(), 100);
    let source = format!("y4m:{}", full.display());
    // The file breaks off in frame 60, in the middle of the event.
    let (expected, _) = reference(&source, 60);
    let bytes = fs::read(&full).unwrap();
    let header_len = bytes.iter().position(|&b| b == b'\n').unwrap() + 1;
    let cut = header_len + 60 * (6 + frame_len) + 6 + frame_len / 2;
    let truncated = dir.path().join("truncated.y4m");
    fs::write(&truncated, &bytes[..cut]).unwrap();
    // No hub listens: what the node captured must all be in its spool when it gives up.
    let nowhere = format!("tcp://127.0.0.1:{}", free_port());
    let extra = "drain_timeout = 1.0\n";
    let file_spool = dir.path().join("spool-file");
    let mut run = node(dir.path(), "file", &file_spool, &nowhere, extra, &["--source", &format!("y4m:{}", truncated.display()), "--rate", "max"]);
    let status = Proc::spawn("node on a truncated file", &mut run).wait(Duration::from_secs(30));
    let file_log = log(dir.path(), "file");
    assert!(!status.success() && file_log.contains("frame 60 is truncated"), "{file_log}");
    assert_books("a Y4M file cut mid-frame", &expected, &BTreeSet::new(), &ids(&spooled(&file_spool), "file"), 0);

    // The same frames from a pipe whose writer dies mid-frame, as a camera
    // process does: `i420:WxH:-` reads stdin.
    let pipe_spool = dir.path().join("spool-pipe");
    let mut run = node(dir.path(), "pipe", &pipe_spool, &nowhere, extra, &["--source", "i420:160x120:-"]);
    run.stdin(Stdio::piped());
    let mut node = Proc::spawn("node on a dying pipe", &mut run);
    {
        let mut stdin = node.child.as_mut().unwrap().stdin.take().unwrap();
        let mut at = header_len;
        for _ in 0..60 {
            stdin.write_all(&bytes[at + 6..at + 6 + frame_len]).unwrap();
            at += 6 + frame_len;
        }
        stdin.write_all(&bytes[at + 6..at + 6 + frame_len / 3]).unwrap();
    }
    let status = node.wait(Duration::from_secs(30));
    let pipe_log = log(dir.path(), "pipe");
    assert!(!status.success() && pipe_log.contains("frame 60 is truncated"), "{pipe_log}");
    assert_books("a camera pipe dying mid-frame", &expected, &BTreeSet::new(), &ids(&spooled(&pipe_spool), "pipe"), 0);
}

#[test]
fn kill_9_while_spooling_then_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let port = free_port();
    let hub_addr = format!("tcp://127.0.0.1:{port}");
    let queue = 6;
    let extra = format!("queue = {queue}\n");
    let (expected, reference_rss) = reference("synthetic:320x240", 600);
    let run = |name: &str| Proc::spawn(name, &mut node(dir.path(), name, &spool, &hub_addr, &extra, &["--source", "synthetic:320x240"]));

    // The hub takes the start of an event, then dies; the node spools until it is killed.
    let hub = TestHub::start(port, Behaviour::Healthy);
    let mut first = run("k1");
    wait_until("the hub takes part of an event", Duration::from_secs(15), || hub.received() >= 15);
    let acked_before_kill = hub.stop();
    let files = spool_files(&spool);
    wait_until("the node spools", Duration::from_secs(10), || spool_files(&spool) >= files + 15);
    let mut peak = peak_rss_kb(first.pid());
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(5));
    // A second run finds the spool, spools more on top, and is killed as well.
    let mut second = run("k2");
    let files = spool_files(&spool);
    wait_until("the second run spools", Duration::from_secs(15), || spool_files(&spool) >= files + 15);
    peak = peak.max(peak_rss_kb(second.pid()));
    second.signal(libc::SIGKILL);
    second.wait(Duration::from_secs(5));

    // What a power cut or bad storage can leave: a file damaged in place, one
    // cut short, a write that never got its final name. They are messages
    // of a node "planted" from long ago, so they sort first.
    plant_damage(&spool);
    let left = spooled(&spool);

    // Restart with the hub back: everything whole is delivered, nothing damaged.
    let hub = TestHub::start(port, Behaviour::Healthy);
    let mut last = node(dir.path(), "k3", &spool, &hub_addr, &extra, &["--source", "synthetic:320x240", "--rate", "max", "--frames", "20"]);
    assert!(Proc::spawn("k3", &mut last).wait(Duration::from_secs(60)).success(), "{}", log(dir.path(), "k3"));
    let after = hub.stop();
    let stats = stats(dir.path(), "k3");
    assert_eq!(stats["spool"]["corrupt"], 2, "{stats}");
    assert_eq!(stats["spool"]["waiting"], 0, "{stats}");
    for run_name in ["k1", "k2"] {
        let in_spool = ids(&left, run_name);
        let delivered = ids(&after, run_name);
        assert!(in_spool.is_subset(&delivered), "{run_name}: spooled messages were not delivered after the restart");
        // Only what sat in memory at the kill may be gone: the newest few.
        let acked_ids = ids(&acked_before_kill, run_name);
        let last_seq = acked_ids.union(&in_spool).map(|(seq, _)| *seq).max().unwrap();
        let captured: BTreeSet<Id> = expected.iter().filter(|(seq, _)| *seq <= last_seq).cloned().collect();
        let missing: Vec<&Id> = captured.difference(&acked_ids).filter(|id| !in_spool.contains(id)).collect();
        eprintln!(
            "kill -9 of {run_name}: {} event messages captured: {} acknowledged before the kill, {} spooled and delivered after the restart, {} lost from memory at the kill",
            captured.len(),
            acked_ids.len(),
            in_spool.len(),
            missing.len()
        );
        assert!(missing.len() <= queue + 1, "{run_name}: kill -9 lost more than the queue held: {missing:?}");
    }
    assert!(after.iter().all(|g| g.node != "planted"), "a damaged file was delivered");
    assert_bounded_memory("kill -9", peak, reference_rss);
}

/// Writes three messages of a node "planted" (boot 1, so they sort first)
/// into a spool through camnode's own writer, then damages them: one bit
/// flipped, one cut short, one left as an unfinished temporary file.
fn plant_damage(dir: &Path) {
    let spool = Spool::open(dir, 1024).unwrap();
    let pool = BufferPool::default();
    let jpeg = spool.read(spool.keys()[0], &pool).unwrap().payload;
    for seq in 1..=3 {
        let header = OutHeader { msg: "planted Cam|jpg", dtype: None, shape: None, node: "planted", boot: 1, seq, ts: seq as f64, score: None, boxes: &[] };
        let mut message = Message::new(MessageKind::Image, &header, Vec::new(), jpeg.clone());
        message.durable = true;
        spool.store(&message).unwrap();
    }
    drop(spool);
    let mut planted: Vec<PathBuf> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("0000000000000001-")).collect();
    planted.sort();
    assert_eq!(planted.len(), 3);
    let mut bytes = fs::read(&planted[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&planted[0], bytes).unwrap();
    let bytes = fs::read(&planted[1]).unwrap();
    fs::write(&planted[1], &bytes[..bytes.len() - 100]).unwrap();
    let name = planted[2].file_name().unwrap().to_string_lossy().to_string();
    fs::rename(&planted[2], dir.join(format!(".{name}.tmp"))).unwrap();
}

/// Lines a process has finished writing to a file (a partial last line does not count).
fn lines(path: &Path) -> usize {
    fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

#[test]
fn a_signal_during_an_outage_exits_within_2_s_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let (expected, _) = reference("synthetic:320x240", 600);
    // Nothing listens; the node is stopped in the middle of an event.
    let mut node = Proc::spawn("node", &mut node(dir.path(), "n", &spool, &format!("tcp://127.0.0.1:{}", free_port()), "", &["--source", "synthetic:320x240"]));
    wait_until("the node spools part of an event", Duration::from_secs(15), || spool_files(&spool) >= 20);
    let stopped = Instant::now();
    assert!(node.stop(Duration::from_secs(5)).success(), "{}", log(dir.path(), "n"));
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(2), "the node took {took:?} to exit after SIGTERM");
    // Unlike kill -9, a signal loses nothing: the queue went to the spool on the way out.
    let left = ids(&spooled(&spool), "n");
    let last_seq = left.iter().map(|(seq, _)| *seq).max().unwrap();
    let captured: BTreeSet<Id> = expected.iter().filter(|(seq, _)| *seq <= last_seq).cloned().collect();
    assert_books(&format!("SIGTERM in an outage (exit in {took:.2?})"), &captured, &BTreeSet::new(), &left, 0);
    assert_eq!(stats(dir.path(), "n")["spool"]["waiting"].as_u64().unwrap(), left.len() as u64);
}
