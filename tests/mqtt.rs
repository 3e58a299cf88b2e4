//! `camnode hub --mqtt` against a real mosquitto broker (Debian's), watched
//! with mosquitto's own `mosquitto_sub`: Home Assistant discovery configs
//! (retained, per node and view), motion ON/OFF, the event image, trigger
//! events, health, availability from heartbeats, credentials from a file,
//! and a broker restart that neither blocks ingest nor loses the retained
//! configs. A scripted REQ node sends exact messages.

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

const LIMIT: Duration = Duration::from_secs(30);
const USER: &str = "camnode-hub";
const PASSWORD: &str = "not:a:guess";

/// A mosquitto on `port` that wants a user and password, without persistence.
fn broker(dir: &Path, port: u16) -> Proc {
    let passwords = dir.join("passwords");
    if !passwords.exists() {
        let made = Command::new("mosquitto_passwd").args(["-c", "-b"]).arg(&passwords).args([USER, PASSWORD]).output().expect("mosquitto_passwd (Debian's mosquitto)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let config = dir.join("mosquitto.conf");
    // `user root`: started as root (CI), mosquitto would otherwise switch to
    // its own user, which cannot read the test's files; ignored otherwise.
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\nuser root\nlog_type error\n", passwords.display()),
    )
    .unwrap();
    let broker = Proc::spawn("mosquitto", Command::new("mosquitto").arg("-c").arg(&config).stdout(Stdio::null()).stderr(Stdio::null()));
    let deadline = Instant::now() + LIMIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    broker
}

/// One message as mosquitto_sub saw it.
#[derive(Clone, Debug)]
struct Seen {
    retained: bool,
    topic: String,
    payload: Vec<u8>,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| panic!("{} is not JSON ({e}): {:?}", self.topic, String::from_utf8_lossy(&self.payload)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// mosquitto_sub on camnode's and Home Assistant's topics.
struct Subscriber {
    _process: Proc,
    lines: Receiver<String>,
    seen: Vec<Seen>,
    /// `wait` looks at messages from here on.
    mark: usize,
}

impl Subscriber {
    fn start(port: u16) -> Subscriber {
        let mut process = Proc::spawn(
            "mosquitto_sub",
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-u", USER, "-P", PASSWORD, "-q", "1"])
                .args(["-t", "homeassistant/#", "-t", "camnode/#", "-F", "%r\t%t\t%x"])
                .stdout(Stdio::piped()),
        );
        let lines = line_channel(process.stdout());
        Subscriber { _process: process, lines, seen: Vec::new(), mark: 0 }
    }

    /// The first message from the mark on that `matches`, waiting for it up to `LIMIT`.
    fn wait(&mut self, what: &str, matches: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + LIMIT;
        let mut from = self.mark;
        loop {
            if let Some(found) = self.seen[from..].iter().find(|s| matches(s)) {
                return found.clone();
            }
            from = self.seen.len();
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                let topics: Vec<String> = self.seen.iter().map(|s| format!("{} {}", s.topic, s.text().chars().take(80).collect::<String>())).collect();
                panic!("no {what} within {LIMIT:?}; seen:\n{}", topics.join("\n"))
            });
            let mut parts = line.splitn(3, '\t');
            let (retained, topic, hex) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap_or(""));
            let payload = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
            self.seen.push(Seen { retained: retained == "1", topic: topic.to_string(), payload });
        }
    }

    fn topic(&mut self, topic: &str) -> Seen {
        self.wait(topic, |s| s.topic == topic)
    }

    /// Only messages from now on count.
    fn mark(&mut self) {
        self.mark = self.seen.len();
    }
}

/// A node whose messages the test writes by hand, over REQ.
struct ScriptedNode {
    socket: zmq::Socket,
    _context: zmq::Context,
    seq: u64,
}

impl ScriptedNode {
    fn connect(port: u16) -> ScriptedNode {
        let context = zmq::Context::new();
        let socket = context.socket(zmq::REQ).unwrap();
        socket.set_rcvtimeo(10_000).unwrap();
        socket.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        ScriptedNode { socket, _context: context, seq: 0 }
    }

    /// Sends one message and returns how long the hub took to acknowledge it.
    fn send(&mut self, msg: &str, keys: Value, payload: &[u8]) -> Duration {
        self.seq += 1;
        let mut header = serde_json::json!({"msg": msg, "node": "yard", "boot": 7, "seq": self.seq});
        header.as_object_mut().unwrap().extend(keys.as_object().unwrap().clone());
        let started = Instant::now();
        self.socket.send_multipart([serde_json::to_vec(&header).unwrap(), payload.to_vec()], 0).unwrap();
        let reply = self.socket.recv_bytes(0).expect("the hub acknowledges within 10 s");
        assert_eq!(reply, b"OK");
        started.elapsed()
    }
}

fn small_jpeg(shade: u8) -> Vec<u8> {
    let pixels = vec![shade; 64 * 48 * 3];
    let image = turbojpeg::Image { pixels: &pixels[..], width: 64, pitch: 64 * 3, height: 48, format: turbojpeg::PixelFormat::RGB };
    turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2).unwrap().to_vec()
}

fn discovery(component: &str, object: &str) -> String {
    format!("homeassistant/{component}/camnode_yard/{object}/config")
}

/// Checks what every discovery config carries.
fn common(config: &Value, unique_id: &str) {
    assert_eq!(config["unique_id"], unique_id, "{config}");
    assert_eq!(config["device"]["identifiers"][0], "camnode_yard", "{config}");
    assert_eq!(config["device"]["sw_version"], "9.9.9", "{config}");
    assert_eq!(config["availability_mode"], "all");
    assert_eq!(config["availability"][0]["topic"], "camnode/yard/availability");
    assert_eq!(config["availability"][1]["topic"], "camnode/status");
}

#[test]
fn home_assistant_sees_the_fleet_through_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let (mqtt_port, zmq_port) = (free_port(), free_port());
    let mut mosquitto = broker(dir.path(), mqtt_port);
    let credentials = dir.path().join("mqtt.credentials");
    std::fs::write(&credentials, format!("{USER}:{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut hub = Proc::spawn(
        "camnode hub",
        camnode()
            .args(["hub", "--bind", &format!("tcp://127.0.0.1:{zmq_port}"), "--mqtt", &format!("tcp://127.0.0.1:{mqtt_port}")])
            .arg("--mqtt-credentials-file")
            .arg(&credentials)
            .stderr(Stdio::null()),
    );
    let mut watch = Subscriber::start(mqtt_port);
    // The hub's own availability, retained: the hub is connected and the subscription is live.
    assert_eq!(watch.topic("camnode/status").text(), "online");

    let mut node = ScriptedNode::connect(zmq_port);
    let health = serde_json::json!({"heartbeat_s": 1.0, "temp_c": 48.5, "fps": 12.5, "version": "9.9.9", "uptime_s": 3.0});
    node.send("yard|Heartbeat", health.clone(), b"");
    let temperature = watch.topic(&discovery("sensor", "temperature")).json();
    common(&temperature, "camnode_yard_temperature");
    assert_eq!((&temperature["device_class"], &temperature["unit_of_measurement"]), (&Value::from("temperature"), &Value::from("°C")));
    assert_eq!(temperature["state_topic"], "camnode/yard/health");
    let fps = watch.topic(&discovery("sensor", "fps")).json();
    common(&fps, "camnode_yard_fps");
    assert_eq!(fps["value_template"], "{{ value_json.fps }}");
    let state = watch.topic("camnode/yard/health").json();
    assert_eq!((state["temp_c"].as_f64(), state["fps"].as_f64()), (Some(48.5), Some(12.5)));
    assert_eq!(watch.topic("camnode/yard/availability").text(), "online");

    // Motion: a binary sensor per view, ON, then the event's image, then OFF.
    node.send("yard gate|motion|moving", serde_json::json!({"score": 7.0}), &small_jpeg(0));
    let motion = watch.topic(&discovery("binary_sensor", "gate_motion")).json();
    common(&motion, "camnode_yard_gate_motion");
    assert_eq!((&motion["device_class"], &motion["state_topic"]), (&Value::from("motion"), &Value::from("camnode/yard/gate/motion")));
    assert_eq!(watch.wait("motion ON", |s| s.topic == "camnode/yard/gate/motion" && s.text() == "ON").text(), "ON");
    assert_eq!(watch.topic("camnode/yard/gate/event").json()["what"], "moving");
    let image = small_jpeg(200);
    node.send("yard gate|jpg", serde_json::json!({"score": 9.0}), &image);
    let camera = watch.topic(&discovery("camera", "gate")).json();
    common(&camera, "camnode_yard_gate");
    assert_eq!(camera["topic"], "camnode/yard/gate/image");
    assert_eq!(watch.topic("camnode/yard/gate/image").payload, image, "the event's image, as the node sent it");
    watch.mark();
    node.send("yard gate|motion|still", serde_json::json!({"score": 0.5}), &small_jpeg(0));
    assert_eq!(watch.topic("camnode/yard/gate/motion").text(), "OFF");

    // A trigger press: an event entity, and the event.
    node.send("yard gate|trigger|pressed", serde_json::json!({}), &small_jpeg(0));
    let trigger = watch.topic(&discovery("event", "gate_trigger")).json();
    common(&trigger, "camnode_yard_gate_trigger");
    assert_eq!(trigger["event_types"], serde_json::json!(["pressed", "armed", "disarmed"]));
    assert_eq!(watch.topic("camnode/yard/gate/trigger").json(), serde_json::json!({"event_type": "pressed"}));

    // A newcomer gets every config and state from the broker: all retained.
    let mut newcomer = Subscriber::start(mqtt_port);
    for topic in [discovery("binary_sensor", "gate_motion"), discovery("camera", "gate"), discovery("sensor", "fps"), discovery("sensor", "temperature"), discovery("event", "gate_trigger")] {
        assert!(newcomer.topic(&topic).retained, "{topic} is not retained");
    }
    let off = newcomer.topic("camnode/yard/gate/motion");
    assert!(off.retained && off.text() == "OFF");
    assert!(newcomer.topic("camnode/yard/gate/image").retained);
    drop(newcomer);

    // No heartbeat for three periods: offline.
    assert_eq!(watch.wait("offline", |s| s.topic == "camnode/yard/availability" && s.text() == "offline").text(), "offline");

    // The broker goes away: ingest does not wait for it.
    mosquitto.signal(libc::SIGTERM);
    assert!(mosquitto.wait(LIMIT).success());
    drop(watch);
    // A longer heartbeat period: the node stays online however long the broker takes to come back.
    let patient = serde_json::json!({"heartbeat_s": 60.0, "temp_c": 48.5, "fps": 12.5, "version": "9.9.9"});
    for msg in ["yard gate|motion|moving", "yard gate|jpg", "yard|Heartbeat"] {
        let took = node.send(msg, if msg.ends_with("Heartbeat") { patient.clone() } else { serde_json::json!({"score": 8.0}) }, &small_jpeg(90));
        assert!(took < Duration::from_secs(1), "the hub took {took:?} to acknowledge {msg} with the broker down");
    }
    // Back, empty (no persistence): the hub reconnects and gives it everything again.
    let _mosquitto = broker(dir.path(), mqtt_port);
    // The node's availability comes last in a round of publishing: once one
    // watcher has it, the broker holds the whole round for a newcomer.
    let mut first = Subscriber::start(mqtt_port);
    assert_eq!(first.topic("camnode/yard/availability").text(), "online");
    let mut after = Subscriber::start(mqtt_port);
    assert!(after.topic(&discovery("binary_sensor", "gate_motion")).retained);
    assert!(after.topic(&discovery("sensor", "temperature")).retained);
    assert_eq!(after.topic("camnode/yard/gate/motion").text(), "ON", "the state reached during the outage");
    assert!(after.topic("camnode/yard/availability").retained);
    assert_eq!(after.topic("camnode/status").text(), "online");

    // The hub stops: it says so.
    after.mark();
    hub.signal(libc::SIGTERM);
    assert!(hub.wait(LIMIT).success());
    assert_eq!(after.topic("camnode/status").text(), "offline");
}
