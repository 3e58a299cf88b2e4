//! CURVE security end to end, with the real `camnode` binary, key files made
//! by `camnode keygen`, and real peers on loopback: `camnode hub` in both
//! modes, the Python imagezmq hub secured with pyzmq's CURVE and
//! ThreadAuthenticator, peers with the wrong keys or none, and a tcpdump
//! capture of what crosses the wire.
//!
//! "Receives nothing" is never judged by waiting a while: each refused peer
//! runs beside an admitted one on the same socket, and the test waits for
//! the line that says the refused peer's handshake failed and for the
//! admitted peer's messages, then stops everything and counts.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// Key pairs from `camnode keygen`: "hub", "node" and "rogue" (known to
/// nobody), and the directories each binding side admits from: the hub
/// admits "node", the node (in PUB mode) admits "hub".
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        for name in ["hub", "node", "rogue"] {
            let out = run_to_end("camnode keygen", camnode().arg("keygen").arg(dir.path().join(name)), LIMIT);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        for (binder, admitted) in [("hub", "node"), ("node", "hub")] {
            let allowed = dir.path().join(format!("{binder}-allows"));
            fs::create_dir(&allowed).unwrap();
            fs::copy(dir.path().join(format!("{admitted}.key")), allowed.join(format!("{admitted}.key"))).unwrap();
        }
        Keys { dir }
    }

    fn secret(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key_secret"))
    }

    fn public(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    fn allowed_by(&self, binder: &str) -> PathBuf {
        self.dir.path().join(format!("{binder}-allows"))
    }

    /// Every key's Z85 text, public and secret, to prove none reaches a log.
    fn all_z85(&self) -> Vec<String> {
        ["hub", "node", "rogue"]
            .iter()
            .flat_map(|name| {
                fs::read_to_string(self.secret(name)).unwrap().lines().filter_map(|l| l.split('"').nth(1).map(String::from)).collect::<Vec<_>>()
            })
            .collect()
    }
}

/// A node configuration file: its name, transport, and `[security]` keys.
fn node_config(dir: &Path, name: &str, mode: &str, address: &str, security: &[(&str, PathBuf)]) -> PathBuf {
    // Short reply timeout and drain: a refused node gives up quickly, after
    // several handshake attempts.
    let mut text = format!(
        "[node]\nname = \"{name}\"\nheartbeat = 0\n[transport]\nmode = \"{mode}\"\nhub = \"{address}\"\nreply_timeout = 0.3\ndrain_timeout = 0.5\n"
    );
    if !security.is_empty() {
        text += "[security]\n";
        for (key, path) in security {
            text += &format!("{key} = {:?}\n", path.to_str().unwrap());
        }
    }
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// A process whose stderr (the log) is kept line by line for waiting and counting.
struct Logged {
    proc: Proc,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Logged {
    fn spawn(name: &str, command: &mut Command) -> Logged {
        let mut proc = Proc::spawn(name, command.stderr(Stdio::piped()));
        let stderr = proc.child.as_mut().unwrap().stderr.take().unwrap();
        Logged { lines: line_channel(std::io::BufReader::new(stderr)), proc, seen: Vec::new() }
    }

    /// Waits for a log line containing any of `needles`.
    fn wait_for(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let line = self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("{} logged no line containing any of {needles:?}; its log:\n{}", self.proc.name, self.seen.join("\n")));
            self.seen.push(line.clone());
            if needles.iter().any(|n| line.contains(n)) {
                return line;
            }
        }
    }

    /// Waits for the process to exit by itself (after SIGTERM if `stop`),
    /// asserts it succeeded, and returns its whole log.
    fn end(mut self, stop: bool) -> Vec<String> {
        if stop {
            self.proc.signal(libc::SIGTERM);
        }
        let status = self.proc.wait(LIMIT);
        self.seen.extend(self.lines.iter());
        assert!(status.success(), "{} failed: {status}; its log:\n{}", self.proc.name, self.seen.join("\n"));
        self.seen
    }
}

fn count(log: &[String], needle: &str) -> usize {
    log.iter().filter(|l| l.contains(needle)).count()
}

/// `camnode -vv run` on the synthetic scene, every frame sent; runs until
/// stopped, or for `frames` frames.
fn node(config: &Path, frames: u32, stats: Option<&Path>) -> Command {
    let mut command = camnode();
    command.args(["-vv", "run", "--source", "synthetic:160x120", "--rate", "30", "--send", "all", "--frames", &frames.to_string()]);
    command.arg("--config").arg(config);
    if let Some(stats) = stats {
        command.arg("--stats-json").arg(stats);
    }
    command
}

/// `camnode -vv hub` writing its summary to `summary`.
fn hub(summary: &Path) -> Command {
    let mut command = camnode();
    command.args(["-vv", "hub", "--summary-json"]).arg(summary);
    command
}

fn assert_no_key_in(keys: &Keys, logs: &[&[String]]) {
    for key in keys.all_z85() {
        for log in logs {
            assert!(!log.iter().any(|l| l.contains(&key)), "a key appeared in a log");
        }
    }
}

#[test]
fn keygen_writes_pyzmq_certificates_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let stem = dir.path().join("garage");
    let out = run_to_end("camnode keygen", camnode().arg("keygen").arg(&stem), LIMIT);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &str| fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("garage.key_secret"), 0o600);
    assert_eq!(mode("garage.key"), 0o644);
    // pyzmq reads both files and finds a matching pair (zmq.curve_public
    // derives the public key from the secret one).
    let check = "import sys, zmq, zmq.auth\n\
                 pub, none = zmq.auth.load_certificate(sys.argv[1] + '.key')\n\
                 pub2, sec = zmq.auth.load_certificate(sys.argv[1] + '.key_secret')\n\
                 assert none is None and pub == pub2 and zmq.curve_public(sec) == pub, 'not a key pair'\n\
                 print(len(pub), len(sec))";
    let py = run_to_end("python", Command::new(python()).args(["-c", check]).arg(&stem), LIMIT);
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    assert_eq!(String::from_utf8_lossy(&py.stdout).trim(), "40 40");
    let again = run_to_end("camnode keygen", camnode().arg("keygen").arg(&stem), LIMIT);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

#[test]
fn a_secret_key_open_to_others_stops_node_and_hub_with_the_chmod() {
    let keys = Keys::new();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(keys.secret("node"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(keys.secret("hub"), fs::Permissions::from_mode(0o640)).unwrap();
    let config = node_config(
        keys.dir.path(),
        "node",
        "req",
        "tcp://127.0.0.1:9",
        &[("secret_cert", keys.secret("node")), ("server_cert", keys.public("hub"))],
    );
    let run = run_to_end("camnode run", &mut node(&config, 5, None), LIMIT);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains(&format!("chmod 600 {}", keys.secret("node").display())), "{err}");
    let summary = keys.dir.path().join("summary.json");
    let hub = run_to_end(
        "camnode hub",
        hub(&summary)
            .args(["--bind", "tcp://127.0.0.1:9"])
            .arg("--secret-cert")
            .arg(keys.secret("hub"))
            .arg("--allowed-dir")
            .arg(keys.allowed_by("hub")),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&hub.stderr);
    assert!(!hub.status.success() && err.contains("mode 640") && err.contains("chmod 600"), "{err}");
}

#[test]
fn security_settings_are_checked_for_the_side_that_binds_or_connects() {
    let keys = Keys::new();
    // A REQ node connects: it needs server_cert, and allowed_dir is the hub's business.
    let config = node_config(
        keys.dir.path(),
        "node",
        "req",
        "tcp://127.0.0.1:9",
        &[("secret_cert", keys.secret("node")), ("allowed_dir", keys.allowed_by("node"))],
    );
    let out = run_to_end("camnode run", &mut node(&config, 5, None), LIMIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("[security] server_cert = (not set)") && err.contains("[security] allowed_dir = ") && err.contains("node.toml line"),
        "{err}"
    );
    // A SUB hub connects too: --allowed-dir makes no sense there.
    let summary = keys.dir.path().join("summary.json");
    let out = run_to_end(
        "camnode hub",
        hub(&summary)
            .args(["--connect", "tcp://127.0.0.1:9"])
            .arg("--secret-cert")
            .arg(keys.secret("hub"))
            .arg("--allowed-dir")
            .arg(keys.allowed_by("hub")),
        LIMIT,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("set by the flag --allowed-dir") && err.contains("server_cert = (not set)"), "{err}");
}

/// REQ: the hub is the CURVE server. One hub, four nodes at once: the one it
/// admits, one whose key it does not list, one that takes another key for
/// the hub's, and one without CURVE. Only the first one's messages arrive,
/// and each refusal is logged once however often the node retries.
#[test]
fn req_hub_admits_only_listed_nodes() {
    let keys = Keys::new();
    let dir = keys.dir.path();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let summary = dir.join("hub.json");
    let hub = Logged::spawn(
        "camnode hub",
        hub(&summary).args(["--bind", &address]).arg("--secret-cert").arg(keys.secret("hub")).arg("--allowed-dir").arg(keys.allowed_by("hub")),
    );
    let nodes: Vec<(&str, Vec<(&str, PathBuf)>)> = vec![
        ("good", vec![("secret_cert", keys.secret("node")), ("server_cert", keys.public("hub"))]),
        ("rogue", vec![("secret_cert", keys.secret("rogue")), ("server_cert", keys.public("hub"))]),
        ("wrongkey", vec![("secret_cert", keys.secret("node")), ("server_cert", keys.public("rogue"))]),
        ("plain", vec![]),
    ];
    let mut running = Vec::new();
    for (name, security) in &nodes {
        let config = node_config(dir, name, "req", &address, security);
        let stats = dir.join(format!("{name}-stats.json"));
        running.push((*name, stats.clone(), Logged::spawn(name, &mut node(&config, 30, Some(&stats)))));
    }
    let mut logs = Vec::new();
    for (name, stats, node) in running {
        let log = node.end(false);
        let stats = read_json(&stats);
        if name == "good" {
            assert!(stats["sent"].as_u64().unwrap() >= 25, "the admitted node delivered only {}", stats["sent"]);
        } else {
            assert_eq!(stats["sent"], 0, "{name} got replies from a hub that should refuse it");
            assert!(stats["reconnects"].as_u64().unwrap() >= 2, "{name} did not retry: {}", stats["reconnects"]);
        }
        logs.push((name, log));
    }
    let hub_log = hub.end(true);
    let received = read_json(&summary);
    let per_node = received["per_node"].as_object().unwrap();
    assert_eq!(per_node.keys().collect::<Vec<_>>(), ["good"], "{received}");
    assert!(received["images"].as_u64().unwrap() >= 25, "{received}");
    // Once each, though every refused node retried several times.
    assert_eq!(count(&hub_log, "CURVE peer node connected from 127.0.0.1"), 1, "{hub_log:#?}");
    assert_eq!(count(&hub_log, "refused a CURVE peer from 127.0.0.1"), 1, "{hub_log:#?}");
    assert_eq!(count(&hub_log, "with a server key that is not this side's"), 1, "{hub_log:#?}");
    assert_eq!(count(&hub_log, "a peer without CURVE"), 1, "{hub_log:#?}");
    let log_of = |name: &str| &logs.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(count(log_of("rogue"), "refused this side's CURVE key"), 1);
    assert_eq!(count(log_of("wrongkey"), "CURVE handshake with"), 1);
    let all: Vec<&[String]> = std::iter::once(&hub_log[..]).chain(logs.iter().map(|(_, l)| &l[..])).collect();
    assert_no_key_in(&keys, &all);
}

/// A hub without keys gets nothing from a CURVE node: the node never falls
/// back to plaintext.
#[test]
fn a_hub_without_keys_gets_nothing_from_a_curve_node() {
    let keys = Keys::new();
    let dir = keys.dir.path();
    let address = format!("tcp://127.0.0.1:{}", free_port());
    let summary = dir.join("hub.json");
    let plain_hub = Logged::spawn("plaintext hub", hub(&summary).args(["--bind", &address]));
    let config = node_config(dir, "node", "req", &address, &[("secret_cert", keys.secret("node")), ("server_cert", keys.public("hub"))]);
    let stats = dir.join("stats.json");
    let mut node = Logged::spawn("camnode run", &mut node(&config, 0, Some(&stats)));
    node.wait_for(&["does not use CURVE", "broke off"]);
    let node_log = node.end(true);
    plain_hub.end(true);
    assert_eq!(read_json(&stats)["sent"], 0);
    assert_eq!(read_json(&summary)["messages"], 0);
    assert_no_key_in(&keys, &[&node_log]);
}

/// PUB: the node is the CURVE server and serves only the hubs it lists. An
/// admitted hub, and beside it on the same node a hub it does not list, a
/// hub that takes another key for the node's, and a hub without CURVE.
#[test]
fn pub_node_serves_only_listed_hubs() {
    let keys = Keys::new();
    let dir = keys.dir.path();
    let port = free_port();
    let config = node_config(
        dir,
        "node",
        "pub",
        &format!("tcp://127.0.0.1:{port}"),
        &[("secret_cert", keys.secret("node")), ("allowed_dir", keys.allowed_by("node"))],
    );
    let mut node = Logged::spawn("camnode run", &mut node(&config, 0, None));
    let connect = format!("tcp://127.0.0.1:{port}");
    let sub = |name: &str, secret: Option<&str>, server: Option<&str>| {
        let mut command = hub(&dir.join(format!("{name}.json")));
        command.args(["--connect", &connect]);
        if let (Some(secret), Some(server)) = (secret, server) {
            command.arg("--secret-cert").arg(keys.secret(secret)).arg("--server-cert").arg(keys.public(server));
        }
        command
    };
    let good = Logged::spawn("admitted hub", sub("good", Some("hub"), Some("node")).args(["--count", "20"]));
    let mut rogue = Logged::spawn("rogue hub", &mut sub("rogue", Some("rogue"), Some("node")));
    let mut wrongkey = Logged::spawn("wrong-key hub", &mut sub("wrongkey", Some("hub"), Some("rogue")));
    let plain = Logged::spawn("plaintext hub", &mut sub("plain", None, None));
    rogue.wait_for(&["refused this side's CURVE key"]);
    wrongkey.wait_for(&["CURVE handshake with"]);
    node.wait_for(&["a peer without CURVE"]);
    // The admitted hub gets its 20 while the others keep trying.
    let good_log = good.end(false);
    let logs = [good_log, rogue.end(true), wrongkey.end(true), plain.end(true), node.end(true)];
    let images = |name: &str| read_json(&dir.join(format!("{name}.json")))["images"].as_u64().unwrap();
    // 20 messages: images, and a motion event or two.
    assert!(images("good") >= 15, "the admitted hub got {} images", images("good"));
    for name in ["rogue", "wrongkey", "plain"] {
        assert_eq!(images(name), 0, "the {name} hub received images");
    }
    let node_log = &logs[4];
    assert_eq!(count(node_log, "CURVE peer hub connected"), 1, "{node_log:#?}");
    assert_eq!(count(node_log, "refused a CURVE peer from 127.0.0.1"), 1, "{node_log:#?}");
    assert_eq!(count(node_log, "with a server key that is not this side's"), 1, "{node_log:#?}");
    assert_no_key_in(&keys, &logs.iter().map(|l| &l[..]).collect::<Vec<_>>());
}

/// Starts tests/python/curve_hub.py and returns it with its stdout lines.
fn python_curve_hub(args: &[&str], keys: &Keys, out: &Path) -> (Proc, Receiver<String>) {
    let mut hub = Proc::spawn(
        "python curve hub",
        Command::new(python())
            .arg(repo_root().join("tests/python/curve_hub.py"))
            .args(args)
            .arg("--secret-cert")
            .arg(keys.secret("hub"))
            .arg("--out")
            .arg(out)
            .stdout(Stdio::piped()),
    );
    let lines = line_channel(hub.stdout());
    (hub, lines)
}

fn python_images(out: &Path) -> Vec<serde_json::Value> {
    let summary = read_json(out);
    assert_eq!(summary["errors"], 0);
    summary["messages"].as_array().unwrap().iter().filter(|m| m["msg"] == "node Cam|jpg").cloned().collect()
}

#[test]
fn imagezmq_hub_with_pyzmq_curve_receives_over_req() {
    let keys = Keys::new();
    let out = keys.dir.path().join("python.json");
    let allowed = keys.allowed_by("hub");
    let (mut hub, lines) =
        python_curve_hub(&["--mode", "req", "--port", "0", "--count", "12", "--allowed-dir", allowed.to_str().unwrap()], &keys, &out);
    let endpoint = expect_line(&lines, "READY", LIMIT).split_whitespace().nth(1).unwrap().to_string();
    let config = node_config(keys.dir.path(), "node", "req", &endpoint, &[("secret_cert", keys.secret("node")), ("server_cert", keys.public("hub"))]);
    let node = Logged::spawn("camnode run", &mut node(&config, 0, None));
    assert!(hub.wait(LIMIT).success());
    node.end(true);
    let images = python_images(&out);
    // 12 messages: images, the start notice and a motion event or two.
    assert!(images.len() >= 8, "{images:?}");
    assert!(images.iter().all(|m| m["width"] == 160 && m["height"] == 120), "a JPEG did not decode");
}

#[test]
fn imagezmq_hub_with_pyzmq_curve_subscribes_to_a_pub_node() {
    let keys = Keys::new();
    let out = keys.dir.path().join("python.json");
    let port = free_port();
    let config = node_config(
        keys.dir.path(),
        "node",
        "pub",
        &format!("tcp://127.0.0.1:{port}"),
        &[("secret_cert", keys.secret("node")), ("allowed_dir", keys.allowed_by("node"))],
    );
    let mut node = Logged::spawn("camnode run", &mut node(&config, 0, None));
    let server = keys.public("node");
    let (mut hub, lines) =
        python_curve_hub(&["--mode", "pub", "--port", &port.to_string(), "--count", "12", "--server-cert", server.to_str().unwrap()], &keys, &out);
    expect_line(&lines, "CONNECTED", LIMIT);
    node.wait_for(&["CURVE peer hub connected"]);
    assert!(hub.wait(LIMIT).success());
    node.end(true);
    let images = python_images(&out);
    // 12 messages: images, the start notice and a motion event or two.
    assert!(images.len() >= 8, "{images:?}");
    assert!(images.iter().all(|m| m["width"] == 160 && m["height"] == 120), "a JPEG did not decode");
}

/// The first bytes of every JPEG camnode sends: the start-of-image marker
/// FF D8 and the JFIF APP0 segment that libjpeg-turbo writes after it. The
/// three bytes FF D8 FF alone turn up by chance in random data about once in
/// 16 MiB, so ciphertext is tested for the whole signature.
const JPEG_START: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00];

fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Captures loopback traffic of one REQ node-to-hub run with tcpdump;
/// returns the capture and the payload bytes the hub received.
fn capture_req_run(keys: &Keys, curve: bool) -> (Vec<u8>, u64) {
    let dir = keys.dir.path();
    let tag = if curve { "curve" } else { "plain" };
    let port = free_port();
    let pcap = dir.join(format!("{tag}.pcap"));
    // --immediate-mode and -U: each packet is in the file as soon as it is
    // seen, so stopping tcpdump loses none; -Z root: tcpdump would otherwise
    // drop to its own user, which cannot write into the test's private
    // temporary directory.
    let mut tcpdump = Command::new("tcpdump");
    tcpdump.args(["-i", "lo", "-n", "--immediate-mode", "-U", "-s", "0", "-Z", "root", "-w"]).arg(&pcap).args(["tcp", "port", &port.to_string()]);
    let mut tcpdump = match Command::new("tcpdump").arg("--version").output() {
        Ok(_) => Logged::spawn("tcpdump", &mut tcpdump),
        Err(e) => panic!("tcpdump cannot run ({e}): install it with `apt-get install tcpdump` (.ci/run does)"),
    };
    tcpdump.wait_for(&["listening on lo"]);
    let address = format!("tcp://127.0.0.1:{port}");
    let summary = dir.join(format!("{tag}-hub.json"));
    let mut hub_command = hub(&summary);
    hub_command.args(["--bind", &address, "--count", "10"]);
    let mut security = Vec::new();
    if curve {
        hub_command.arg("--secret-cert").arg(keys.secret("hub")).arg("--allowed-dir").arg(keys.allowed_by("hub"));
        security = vec![("secret_cert", keys.secret("node")), ("server_cert", keys.public("hub"))];
    }
    let hub = Logged::spawn("camnode hub", &mut hub_command);
    let config = node_config(dir, tag, "req", &address, &security);
    let node = Logged::spawn("camnode run", &mut node(&config, 0, None));
    hub.end(false);
    node.end(true);
    tcpdump.end(true);
    (fs::read(&pcap).unwrap(), read_json(&summary)["bytes"].as_u64().unwrap())
}

#[test]
fn a_loopback_capture_shows_jpegs_without_curve_and_none_with_it() {
    let keys = Keys::new();
    let (plain, plain_bytes) = capture_req_run(&keys, false);
    assert!(
        occurrences(&plain, JPEG_START) >= 9,
        "the plaintext capture ({} bytes) shows {} JPEG starts",
        plain.len(),
        occurrences(&plain, JPEG_START)
    );
    assert!(plain.len() as u64 > plain_bytes, "the capture missed traffic");
    let (curve, curve_bytes) = capture_req_run(&keys, true);
    assert!(curve.len() as u64 > curve_bytes, "the capture missed traffic: {} bytes for {curve_bytes} received", curve.len());
    assert_eq!(occurrences(&curve, JPEG_START), 0, "a JPEG crossed the CURVE link in the clear");
}
