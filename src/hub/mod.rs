//! `camnode hub`: the receiving end, for Rust users and for tests. It speaks
//! the same wire format as imagezmq's `ImageHub` and stores what it gets the
//! way imagehub does: JPEGs under `DIR/YYYY-MM-DD/NODE-VIEW-TIME.jpg`, event
//! and heartbeat texts appended to a log. Delivery from a REQ node is
//! at-least-once, so the hub drops repeats by node, boot and sequence number.
//! Every accepted message is shown to the hub's [`Observer`]s ([`observe`]).

pub mod observe;
pub mod status;

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use log::{info, warn};
use bytes::Bytes;
use serde::Serialize;

pub use observe::{Accepted, Kind, Observer};
pub use status::{HubSnapshot, HubStatus, WorkerSnapshot};
use status::bump;

use crate::transport::security::{Curve, Role, SecurityConfig};
use crate::transport::Mode;
use crate::transport::wire::{parse_header, Header};

/// How a hub is set up.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// REQ nodes: bind a REP socket here. PUB nodes: connect SUB to `connect`.
    pub mode: Mode,
    pub bind: String,
    pub connect: Vec<String>,
    /// Where to save images and the event log; `None` keeps nothing on disk.
    pub save: Option<PathBuf>,
    /// Stop after this many accepted messages.
    pub count: Option<u64>,
    /// Stop after this long without a message.
    pub idle: Option<Duration>,
    /// Reply sent to REQ nodes.
    pub reply: Vec<u8>,
    /// CURVE keys; REQ: the hub binds and is the server, PUB: it connects and is a client.
    pub security: SecurityConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { mode: Mode::Req, bind: "tcp://*:5555".into(), connect: Vec::new(), save: None, count: None, idle: None, reply: b"OK".to_vec(), security: SecurityConfig::default() }
    }
}

/// One message as the hub accepted it.
#[derive(Clone, Debug, Serialize)]
pub struct Received {
    pub msg: String,
    pub node: Option<String>,
    pub boot: Option<u64>,
    pub seq: Option<u64>,
    pub ts: Option<f64>,
    pub score: Option<f32>,
    /// "jpg", "image" (raw array), "event" or "text".
    pub kind: &'static str,
    pub bytes: usize,
    /// Image size from the JPEG header or the array shape.
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Where the image was saved.
    pub path: Option<PathBuf>,
}

/// What a hub run received.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HubSummary {
    pub messages: u64,
    pub images: u64,
    pub events: u64,
    pub heartbeats: u64,
    pub duplicates: u64,
    /// Messages that were not imagezmq messages or whose image did not decode.
    pub bad: u64,
    pub bytes: u64,
    pub per_node: HashMap<String, u64>,
    pub wall_s: f64,
}

/// Remembers recent message ids per node so a repeat is recognised.
#[derive(Default)]
struct RecentIds {
    seen: HashSet<(String, u64, u64, String)>,
    order: VecDeque<(String, u64, u64, String)>,
}

/// Ids remembered: far more than a REQ node can have in flight or spooled per burst.
const RECENT_IDS: usize = 100_000;

impl RecentIds {
    fn id(header: &Header) -> Option<(String, u64, u64, String)> {
        let (Some(node), Some(seq)) = (&header.node, header.seq) else { return None };
        Some((node.clone(), header.boot.unwrap_or(0), seq, header.msg.clone()))
    }

    /// True if this message was stored before (senders without ids never repeat).
    fn seen(&self, header: &Header) -> bool {
        Self::id(header).is_some_and(|id| self.seen.contains(&id))
    }

    /// Remembers a stored message, forgetting the oldest past the limit.
    fn remember(&mut self, header: &Header) {
        let Some(id) = Self::id(header) else { return };
        if self.seen.insert(id.clone()) {
            self.order.push_back(id);
        }
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

/// What became of one received message; decides the reply.
enum Handled {
    Stored(Received),
    /// A repeat or a malformed message: acknowledged, since resending cannot help.
    Skipped,
    /// Valid, but it could not be saved: not acknowledged, so the node keeps it.
    NotStored,
}

/// A receiving hub.
pub struct Hub {
    config: HubConfig,
    socket: zmq::Socket,
    _context: zmq::Context,
    /// Keeps the CURVE authenticator of a REP hub running.
    _curve: Option<Curve>,
    log: Option<File>,
    recent: RecentIds,
    observers: Vec<Arc<dyn Observer>>,
    status: Arc<HubStatus>,
    pub summary: HubSummary,
}

impl Hub {
    pub fn open(config: HubConfig) -> Result<Hub> {
        let context = zmq::Context::new();
        let curve = Curve::open(&config.security, Role::of_hub(config.mode), &context)?;
        let socket = match config.mode {
            Mode::Req => {
                let socket = context.socket(zmq::REP)?;
                socket.set_linger(0)?;
                if let Some(curve) = &curve {
                    curve.secure(&context, &socket, &config.bind)?;
                }
                socket.bind(&config.bind).with_context(|| {
                    format!("cannot bind the hub to {:?}: is another hub running on that port? use --bind tcp://*:PORT", config.bind)
                })?;
                socket
            }
            Mode::Pub => {
                if config.connect.is_empty() {
                    bail!("a SUB hub needs at least one node to connect to: add --connect tcp://NODE:5555");
                }
                let socket = context.socket(zmq::SUB)?;
                socket.set_subscribe(b"")?;
                if let Some(curve) = &curve {
                    curve.secure(&context, &socket, &config.connect.join(", "))?;
                }
                for address in &config.connect {
                    socket.connect(address).with_context(|| format!("cannot connect to node {address:?}"))?;
                }
                socket
            }
        };
        let log = match &config.save {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create --save directory {}", dir.display()))?;
                let path = dir.join("imagehub.log");
                Some(OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?)
            }
            None => None,
        };
        Ok(Hub { config, socket, _context: context, _curve: curve, log, recent: RecentIds::default(), observers: Vec::new(), status: Arc::new(HubStatus::new(&[])), summary: HubSummary::default() })
    }

    /// The hub's live figures, shared: see [`status`] for how to read them.
    pub fn status(&self) -> Arc<HubStatus> {
        self.status.clone()
    }

    /// Shows every message accepted from now on to `observer`.
    pub fn observe(&mut self, observer: Arc<dyn Observer>) {
        self.observers.push(observer);
    }

    /// Waits up to `timeout` for one message. `Ok(None)`: nothing arrived, or
    /// a duplicate or malformed message was handled and skipped.
    pub fn receive(&mut self, timeout: Duration) -> Result<Option<Received>> {
        match self.socket.poll(zmq::POLLIN, timeout.as_millis() as i64) {
            // A signal interrupts the wait; the caller's loop checks its stop flag.
            Ok(0) | Err(zmq::Error::EINTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        let parts = self.socket.recv_multipart(0)?;
        let handled = self.handle(parts);
        // Reply only after the message is stored: an acknowledged message is
        // the node's to forget, so a hub killed mid-save must not have said OK.
        if self.config.mode == Mode::Req {
            let reply: &[u8] = match handled {
                Handled::NotStored => b"ERROR: not stored",
                _ => &self.config.reply,
            };
            self.socket.send(reply, 0)?;
        }
        Ok(match handled {
            Handled::Stored(received) => Some(received),
            _ => None,
        })
    }

    fn handle(&mut self, parts: Vec<Vec<u8>>) -> Handled {
        let frames = parts.len();
        let Ok([raw_header, payload]) = <[Vec<u8>; 2]>::try_from(parts) else {
            self.summary.bad += 1;
            bump(&self.status.bad);
            warn!("dropped a message of {frames} frames: imagezmq messages have 2");
            return Handled::Skipped;
        };
        let header = match parse_header(&raw_header) {
            Ok(h) => h,
            Err(e) => {
                self.summary.bad += 1;
                bump(&self.status.bad);
                warn!("dropped a message: {e}");
                return Handled::Skipped;
            }
        };
        if self.recent.seen(&header) {
            self.summary.duplicates += 1;
            bump(&self.status.duplicates);
            return Handled::Skipped;
        }
        let mut received = match describe(&header, &payload) {
            Ok(r) => r,
            Err(e) => {
                self.summary.bad += 1;
                bump(&self.status.bad);
                warn!("dropped {:?}: {e:#}", header.msg);
                return Handled::Skipped;
            }
        };
        if let Err(e) = self.store(&mut received, &payload) {
            bump(&self.status.refused);
            warn!("cannot store {:?}: {e:#}; the node will send it again", header.msg);
            return Handled::NotStored;
        }
        self.recent.remember(&header);
        if !self.observers.is_empty() {
            let accepted = accepted(&received, header, raw_header.into(), payload.into());
            for observer in &self.observers {
                observer.accepted(&accepted);
            }
        }
        Handled::Stored(received)
    }

    /// Saves an image or logs a text, and counts it.
    fn store(&mut self, received: &mut Received, payload: &[u8]) -> Result<()> {
        match received.kind {
            "jpg" => {
                if let Some(dir) = &self.config.save {
                    let path = image_path(dir, &received.msg, received.ts.unwrap_or_else(crate::frame::unix_now));
                    std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
                    std::fs::write(&path, payload).with_context(|| format!("cannot save {}", path.display()))?;
                    received.path = Some(path);
                }
                self.summary.images += 1;
            }
            "image" => self.summary.images += 1,
            kind => {
                if let Some(log) = &mut self.log {
                    writeln!(log, "{} ~ {}", format_local(crate::frame::unix_now(), " "), received.msg)?;
                }
                match kind {
                    "event" => {
                        info!("{}", received.msg);
                        self.summary.events += 1;
                    }
                    _ if received.msg.ends_with("|Heartbeat") => self.summary.heartbeats += 1,
                    _ => info!("{}", received.msg),
                }
            }
        }
        self.summary.messages += 1;
        self.summary.bytes += payload.len() as u64;
        bump(&self.status.messages);
        self.status.bytes.fetch_add(payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
        match received.kind {
            "jpg" | "image" => bump(&self.status.images),
            "event" => bump(&self.status.events),
            _ => {}
        }
        let node = received.msg.split([' ', '|']).next().unwrap_or("").to_string();
        *self.summary.per_node.entry(node).or_default() += 1;
        Ok(())
    }

    /// Receives until `--count`, `--idle` or `stop`, calling `each` per message.
    pub fn run(&mut self, stop: &AtomicBool, mut each: impl FnMut(&Received) -> Result<()>) -> Result<()> {
        let started = Instant::now();
        let mut last = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if self.config.count.is_some_and(|n| self.summary.messages >= n) {
                break;
            }
            if self.config.idle.is_some_and(|idle| last.elapsed() >= idle) {
                info!("no message for {:?}; stopping", self.config.idle.unwrap_or_default());
                break;
            }
            if let Some(received) = self.receive(Duration::from_millis(100))? {
                last = Instant::now();
                each(&received)?;
            }
        }
        self.summary.wall_s = started.elapsed().as_secs_f64();
        Ok(())
    }
}

/// Checks a message and says what it is, without side effects.
fn describe(header: &Header, payload: &[u8]) -> Result<Received> {
    let msg = &header.msg;
    let mut received = Received {
        msg: msg.clone(),
        node: header.node.clone().or_else(|| msg.split([' ', '|']).next().map(str::to_string)),
        boot: header.boot,
        seq: header.seq,
        ts: header.ts,
        score: header.score,
        kind: "text",
        bytes: payload.len(),
        width: None,
        height: None,
        path: None,
    };
    if msg.ends_with("|jpg") {
        let info = turbojpeg::read_header(payload).context("the image is not a valid JPEG")?;
        (received.width, received.height, received.kind) = (Some(info.width), Some(info.height), "jpg");
    } else if let (Some(dtype), Some(shape)) = (&header.dtype, &header.shape) {
        let expected: usize = shape.iter().product();
        if dtype != "uint8" || expected != payload.len() {
            bail!("array of dtype {dtype} and shape {shape:?} does not match its {} bytes", payload.len());
        }
        if shape.len() == 3 {
            (received.height, received.width, received.kind) = (Some(shape[0]), Some(shape[1]), "image");
        }
    } else if msg.contains("|motion|") || msg.contains("|trigger|") {
        received.kind = "event";
    }
    Ok(received)
}

/// What observers see of a stored message.
fn accepted(received: &Received, header: Header, raw_header: Bytes, payload: Bytes) -> Accepted {
    let kind = match received.kind {
        "jpg" => Kind::Jpeg,
        "image" => Kind::Array,
        "event" => Kind::Event,
        _ if received.msg.ends_with("|Heartbeat") => Kind::Heartbeat,
        _ => Kind::Text,
    };
    // "NODE VIEW|..." names a view; "NODE|..." texts are node-wide.
    let first = received.msg.split('|').next().unwrap_or("");
    let view = first.split_once(' ').map(|(_, view)| view.to_string());
    Accepted {
        kind,
        node: received.node.clone().unwrap_or_default(),
        view,
        header,
        raw_header,
        payload,
        received: crate::frame::unix_now(),
        stored: received.path.clone(),
    }
}

/// `DIR/YYYY-MM-DD/NODE-VIEW-YYYY-MM-DDTHH.MM.SS.ffffff.jpg`, as imagehub names images.
fn image_path(dir: &Path, msg: &str, ts: f64) -> PathBuf {
    let name = msg.trim_end_matches("|jpg").replace([' ', '/', '|'], "-");
    let stamp = format_local(ts, "T");
    let day = &stamp[..10];
    dir.join(day).join(format!("{name}-{}.jpg", stamp.replace(':', ".")))
}

/// Local time as `YYYY-MM-DD{sep}HH:MM:SS.ffffff`.
fn format_local(ts: f64, sep: &str) -> String {
    let secs = ts.floor() as libc::time_t;
    let micros = ((ts - ts.floor()) * 1e6) as u32;
    let mut tm = std::mem::MaybeUninit::<libc::tm>::zeroed();
    // SAFETY: localtime_r writes into the tm we own; a null return leaves it zeroed.
    let tm = unsafe {
        libc::localtime_r(&secs, tm.as_mut_ptr());
        tm.assume_init()
    };
    format!(
        "{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}.{micros:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_filed_by_day_as_imagehub_does() {
        let path = image_path(Path::new("/img"), "garage Cam|jpg", 1_700_000_000.25);
        let text = path.to_string_lossy();
        assert!(text.starts_with("/img/2023-11-1"), "{text}");
        assert!(text.contains("/garage-Cam-2023-11-1") && text.ends_with(".250000.jpg"), "{text}");
    }

    #[test]
    fn repeats_are_recognised_per_boot() {
        let mut recent = RecentIds::default();
        let header = |boot, seq| Header { msg: "n v|jpg".into(), node: Some("n".into()), boot: Some(boot), seq: Some(seq), ..Default::default() };
        assert!(!recent.seen(&header(1, 5)));
        recent.remember(&header(1, 5));
        assert!(recent.seen(&header(1, 5)));
        assert!(!recent.seen(&header(2, 5)), "a restarted node reuses sequence numbers");
        let plain = Header { msg: "pi Cam|jpg".into(), ..Default::default() };
        recent.remember(&plain);
        assert!(!recent.seen(&plain), "imagezmq senders carry no ids");
    }

    #[test]
    fn a_message_that_cannot_be_saved_is_not_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let config = HubConfig { bind: format!("tcp://127.0.0.1:{port}"), save: Some(dir.path().to_path_buf()), ..HubConfig::default() };
        let mut hub = Hub::open(config).unwrap();
        let context = zmq::Context::new();
        let node = context.socket(zmq::REQ).unwrap();
        node.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let header = br#"{"msg": "n v|jpg", "node": "n", "boot": 1, "seq": 7, "ts": 86400.5}"#;
        // A file where the day's folder should be makes saving fail.
        let day = image_path(dir.path(), "n v|jpg", 86400.5).parent().unwrap().to_path_buf();
        std::fs::write(&day, b"in the way").unwrap();
        let exchange = |hub: &mut Hub| {
            node.send_multipart([&header[..], &jpeg[..]], 0).unwrap();
            let received = hub.receive(Duration::from_secs(5)).unwrap();
            (received, node.recv_bytes(0).unwrap())
        };
        let (received, reply) = exchange(&mut hub);
        assert!(received.is_none());
        assert!(reply.starts_with(b"ERROR"), "{}", String::from_utf8_lossy(&reply));
        std::fs::remove_file(&day).unwrap();
        let (received, reply) = exchange(&mut hub);
        assert_eq!(reply, b"OK");
        assert!(received.unwrap().path.unwrap().exists());
        // The resend after a failure is stored once; a repeat of a stored one is only acknowledged.
        let (received, reply) = exchange(&mut hub);
        assert_eq!((received.is_none(), reply.as_slice()), (true, &b"OK"[..]));
        assert_eq!((hub.summary.images, hub.summary.duplicates), (1, 1));
    }

    #[test]
    fn observers_see_each_accepted_message_once() {
        #[derive(Default)]
        struct Seen(std::sync::Mutex<Vec<(Kind, String, Option<String>, usize)>>);
        impl Observer for Seen {
            fn accepted(&self, m: &Accepted) {
                self.0.lock().unwrap().push((m.kind, m.node.clone(), m.view.clone(), m.payload.len()));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut hub = Hub::open(HubConfig { bind: format!("tcp://127.0.0.1:{port}"), ..HubConfig::default() }).unwrap();
        let seen = Arc::new(Seen::default());
        hub.observe(seen.clone());
        let context = zmq::Context::new();
        let node = context.socket(zmq::REQ).unwrap();
        node.connect(&format!("tcp://127.0.0.1:{port}")).unwrap();
        let jpeg = crate::encode::placeholder_jpeg().unwrap();
        let messages: [&[u8]; 4] = [
            br#"{"msg": "yard Cam|jpg", "node": "yard", "boot": 1, "seq": 1}"#,
            br#"{"msg": "yard Cam|jpg", "node": "yard", "boot": 1, "seq": 1}"#,
            br#"{"msg": "yard Cam|motion|moving", "node": "yard", "boot": 1, "seq": 2}"#,
            br#"{"msg": "yard|Heartbeat", "uptime_s": 5}"#,
        ];
        for header in messages {
            node.send_multipart([header, &jpeg[..]], 0).unwrap();
            hub.receive(Duration::from_secs(5)).unwrap();
            assert_eq!(node.recv_bytes(0).unwrap(), b"OK");
        }
        let cam = Some("Cam".to_string());
        assert_eq!(*seen.0.lock().unwrap(), [
            (Kind::Jpeg, "yard".into(), cam.clone(), jpeg.len()),
            (Kind::Event, "yard".into(), cam, jpeg.len()),
            (Kind::Heartbeat, "yard".into(), None, jpeg.len()),
        ]);
    }
}
