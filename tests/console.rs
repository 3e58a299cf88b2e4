//! The hub's console, end to end with the real binary: a real headless
//! Chromium watches three nodes send and one go stale; `/metrics` goes
//! through the Prometheus project's own parser; and the console's security:
//! a token beyond loopback, how browsers and scrapers present it, and paths
//! that try to leave the store.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const LIMIT: Duration = Duration::from_secs(60);

/// An HTTP answer, read whole.
struct Reply {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `raw` as it is (no client normalises the path on the way) and reads the answer.
fn request(port: u16, raw: &str) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    stream.write_all(raw.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP head");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut body = bytes[split + 4..].to_vec();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status");
    let reply = Reply { status, head, body: Vec::new() };
    if reply.header("transfer-encoding") == Some("chunked") {
        body = dechunk(&body);
    }
    Reply { body, ..reply }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&data[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 4 + size..];
    }
}

fn get(port: u16, path: &str, headers: &[&str]) -> Reply {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    request(port, &format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n"))
}


/// Polls `ready` until it holds, failing after `limit`.
fn wait_until<T>(what: &str, limit: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hub with the console, storing under `save`; returns once the console answers.
fn hub_with_console(zmq_port: u16, http_port: u16, save: &Path, extra: &[&str]) -> Proc {
    let hub = Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &format!("tcp://127.0.0.1:{zmq_port}"), "--http", &format!("127.0.0.1:{http_port}")])
            .arg("--save")
            .arg(save)
            .args(extra),
    );
    wait_until("the console to answer", LIMIT, || TcpStream::connect(("127.0.0.1", http_port)).ok());
    hub
}

fn node(name: &str, zmq_port: u16, args: &[&str]) -> Proc {
    Proc::spawn(
        name,
        camnode()
            .args(["run", "--source", "synthetic:320x240", "--name", name, "--hub", &format!("tcp://127.0.0.1:{zmq_port}")])
            .args(args)
            .stderr(Stdio::null()),
    )
}

#[test]
fn chromium_shows_three_nodes_live_and_one_going_stale() {
    let dir = tempfile::tempdir().unwrap();
    let (zmq_port, http_port) = (free_port(), free_port());
    let _hub = hub_with_console(zmq_port, http_port, &dir.path().join("store"), &[]);
    let live = ["--rate", "10", "--send", "all", "--heartbeat", "1"];
    let mut nodes: Vec<Proc> = ["garage", "porch", "yard"].iter().map(|name| node(name, zmq_port, &live)).collect();

    let mut browser = Proc::spawn(
        "console_browser.py",
        Command::new(python())
            .arg(repo_root().join("tests/python/console_browser.py"))
            .arg(format!("http://127.0.0.1:{http_port}/"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let lines = line_channel(browser.stdout());
    let mut commands = browser.child.as_mut().unwrap().stdin.take().unwrap();
    expect_line(&lines, "tiles 3", LIMIT);
    expect_line(&lines, "updated", LIMIT);

    // A node that stops sending turns stale after three missed heartbeats.
    nodes[1].signal(libc::SIGTERM);
    assert!(nodes[1].wait(LIMIT).success());
    writeln!(commands, "stopped porch").unwrap();
    let stale = expect_line(&lines, "stale porch", LIMIT);
    assert!(stale.contains("badge='stale") && stale.contains("1 stale"), "{stale}");
    drop(commands);
    assert!(browser.wait(LIMIT).success());
}

#[test]
fn metrics_parse_with_the_prometheus_parser() {
    let dir = tempfile::tempdir().unwrap();
    let (zmq_port, http_port) = (free_port(), free_port());
    let _hub = hub_with_console(zmq_port, http_port, &dir.path().join("store"), &[]);
    let mut sender = node("meter", zmq_port, &["--rate", "30", "--frames", "60", "--send", "all", "--heartbeat", "0.2"]);
    // The node exits once the hub acknowledged all it sent.
    assert!(sender.wait(LIMIT).success());

    let reply = get(http_port, "/metrics", &[]);
    assert_eq!(reply.status, 200);
    assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{}", reply.head);
    let mut parser = Command::new(python())
        .arg(repo_root().join("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    parser.stdin.take().unwrap().write_all(&reply.body).unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(output.status.success(), "the parser refused /metrics:\n{}", reply.text());
    let samples: Vec<serde_json::Value> = BufReader::new(&output.stdout[..]).lines().map(|l| serde_json::from_str(&l.unwrap()).unwrap()).collect();
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        let found = samples.iter().find(|s| s["name"] == name && labels.iter().all(|(k, v)| s["labels"][k] == *v));
        found.unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", reply.text()))["value"].as_f64().unwrap()
    };
    let this = [("node", "meter"), ("view", "Cam")];
    assert_eq!(value("camnode_images_total", &this), 60.0);
    assert_eq!(value("camnode_hub_images_total", &[]), 60.0);
    assert!(value("camnode_image_bytes_total", &this) > 60.0 * 1000.0);
    assert!(value("camnode_hub_messages_total", &[]) > 60.0, "the restart and heartbeats count too");
    assert_eq!(value("camnode_node_up", &[("node", "meter")]), 1.0);
    let frames = value("camnode_node_frames_total", &[("node", "meter")]);
    assert!(frames > 0.0 && frames <= 60.0, "{frames}");
    assert_eq!(value("camnode_node_dropped_frames_total", &[("node", "meter")]), 0.0);
    assert_eq!(value("camnode_node_info", &[("node", "meter"), ("version", env!("CARGO_PKG_VERSION")), ("address", "127.0.0.1")]), 1.0);
    let seen = value("camnode_node_last_seen_timestamp_seconds", &[("node", "meter")]);
    assert!((seen - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()).abs() < 60.0);
    assert!(value("process_resident_memory_bytes", &[]) > 1e6);
    let family = |name: &str| samples.iter().find(|s| s["family"] == name).unwrap_or_else(|| panic!("no family {name}"));
    assert_eq!(family("camnode_images")["type"], "counter");
    assert_eq!(family("camnode_node_last_seen_timestamp_seconds")["unit"], "seconds");
}

#[test]
fn a_console_beyond_loopback_needs_a_private_token() {
    let dir = tempfile::tempdir().unwrap();
    let open = run_to_end("camnode hub", camnode().args(["hub", "--bind", "tcp://127.0.0.1:1", "--http", "0.0.0.0:1"]), LIMIT);
    let said = String::from_utf8_lossy(&open.stderr);
    assert!(!open.status.success() && said.contains("[console] http = \"0.0.0.0:1\" (set by the flag --http)") && said.contains("--http-token-file"), "{said}");

    let token_file = dir.path().join("console.token");
    std::fs::write(&token_file, "k3Jd9sQ2xWv7Lp0aZr8TyUe5\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let loose = run_to_end("camnode hub", camnode().args(["hub", "--bind", "tcp://127.0.0.1:1", "--http", "0.0.0.0:1", "--http-token-file"]).arg(&token_file), LIMIT);
    let said = String::from_utf8_lossy(&loose.stderr);
    assert!(!loose.status.success() && said.contains(&format!("chmod 600 {}", token_file.display())), "{said}");
}

#[test]
fn the_token_is_asked_for_and_nothing_outside_the_store_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let token = "k3Jd9sQ2xWv7Lp0a+Zr8TyUe5=";
    let token_file = dir.path().join("console.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(dir.path().join("secret.jpg"), b"SECRET-OUTSIDE-THE-STORE").unwrap();
    let (zmq_port, http_port) = (free_port(), free_port());
    // Served on all addresses, as on a LAN; the test only talks to loopback.
    let hub = Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &format!("tcp://127.0.0.1:{zmq_port}"), "--http", &format!("0.0.0.0:{http_port}"), "--http-token-file"])
            .arg(&token_file)
            .arg("--save")
            .arg(&store),
    );
    wait_until("the console to answer", LIMIT, || TcpStream::connect(("127.0.0.1", http_port)).ok());
    let bearer = format!("Authorization: Bearer {token}");

    // Without the token: a login form for a browser, a plain 401 for a scraper.
    let page = get(http_port, "/", &["Accept: text/html"]);
    assert_eq!(page.status, 401);
    assert!(page.text().contains("<form method=\"post\" action=\"/login\""), "{}", page.text());
    for path in ["/metrics", "/api/fleet", "/api/live", "/app.js"] {
        assert_eq!(get(http_port, path, &[]).status, 401, "{path}");
    }
    assert_eq!(get(http_port, "/metrics", &["Authorization: Bearer wrong-token-of-some-length"]).status, 401);
    assert_eq!(get(http_port, "/metrics", &[&bearer]).status, 200);
    // A bookmark with the token: the cookie, and the same page without it.
    let bookmark = get(http_port, &format!("/?token={token}"), &[]);
    assert_eq!((bookmark.status, bookmark.header("location")), (303, Some("/")), "{}", bookmark.head);
    let cookie = bookmark.header("set-cookie").unwrap().to_string();
    assert!(cookie.starts_with(&format!("camnode_token={token};")) && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    let with_cookie = format!("Cookie: camnode_token={token}");
    assert_eq!(get(http_port, "/", &[&with_cookie]).status, 200);
    let percent = token.replace('+', "%2B").replace('=', "%3D");
    assert_eq!(get(http_port, &format!("/api/fleet?token={percent}"), &[]).status, 303);
    // The login form.
    let login = |token: &str| {
        let body = format!("token={}", token.replace('+', "%2B").replace('=', "%3D"));
        request(http_port, &format!(
            "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAccept: text/html\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ))
    };
    let refused = login("not-the-token-at-all");
    assert_eq!(refused.status, 401);
    assert!(refused.text().contains("That token is not right"));
    let accepted = login(token);
    assert_eq!((accepted.status, accepted.header("location")), (303, Some("/")));
    assert!(accepted.header("set-cookie").unwrap().starts_with("camnode_token="));

    // An image in the store, through a node.
    let mut sender = node("yard", zmq_port, &["--rate", "max", "--frames", "30", "--send", "all"]);
    assert!(sender.wait(LIMIT).success());
    let stored = walk_jpegs(&store);
    let relative = stored[0].strip_prefix(&store).unwrap().to_str().unwrap().to_string();
    let image = get(http_port, &format!("/store/{relative}"), &[&with_cookie]);
    assert_eq!((image.status, image.header("content-type")), (200, Some("image/jpeg")));
    assert_eq!(image.body, std::fs::read(&stored[0]).unwrap());
    assert_eq!(get(http_port, &format!("/store/{relative}"), &[]).status, 401, "the store needs the token too");

    // Ways out of the store, written plainly and percent-encoded.
    std::os::unix::fs::symlink(dir.path().join("secret.jpg"), store.join("link.jpg")).unwrap();
    let day = relative.split('/').next().unwrap();
    for path in [
        "/store/../secret.jpg".to_string(),
        "/store/..%2fsecret.jpg".into(),
        "/store/%2e%2e/secret.jpg".into(),
        "/store/%2E%2E%2Fsecret.jpg".into(),
        format!("/store/{day}/../../secret.jpg"),
        format!("/store/{day}/..%2F..%2Fsecret.jpg"),
        "/store//etc/passwd".into(),
        "/store/%2Fetc%2Fpasswd".into(),
        "/store/link.jpg".into(),
        "/store/imagehub.log".into(),
        "/store/..\\secret.jpg".into(),
        "/store/%00/secret.jpg".into(),
        "/../secret.jpg".into(),
        "/%2e%2e/secret.jpg".into(),
    ] {
        let reply = get(http_port, &path, &[&with_cookie]);
        assert!(matches!(reply.status, 400 | 404), "{path}: {} {}", reply.status, reply.text());
        assert!(!reply.text().contains("SECRET") && !reply.text().contains("root:"), "{path} leaked: {}", reply.text());
    }
    drop(hub);
}

/// Every JPEG under `dir`.
fn walk_jpegs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk_jpegs(&path));
        } else if path.extension().is_some_and(|e| e == "jpg") {
            found.push(path);
        }
    }
    found.sort();
    found
}
