//! `camnode hub`: the receiving end, for Rust users and for tests. It speaks
//! the same wire format as imagezmq's `ImageHub` and stores what it gets the
//! way imagehub does: JPEGs under `DIR/YYYY-MM-DD/NODE-VIEW-TIME.jpg`, event
//! and heartbeat texts appended to a log. Delivery from a REQ node is
//! at-least-once, so the hub drops repeats by node, boot and sequence number.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use log::{info, warn};
use serde::Serialize;

use crate::config::Mode;
use crate::transport::security::{Curve, Role, SecurityConfig};
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
    /// True the first time an id is seen.
    fn first_time(&mut self, header: &Header) -> bool {
        let (Some(node), Some(seq)) = (&header.node, header.seq) else { return true };
        let id = (node.clone(), header.boot.unwrap_or(0), seq, header.msg.clone());
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
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
        Ok(Hub { config, socket, _context: context, _curve: curve, log, recent: RecentIds::default(), summary: HubSummary::default() })
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
        // Reply first: a REQ node is waiting, and whatever we think of the
        // message, it must not hang.
        if self.config.mode == Mode::Req {
            self.socket.send(&self.config.reply[..], 0)?;
        }
        let [header, payload] = &parts[..] else {
            self.summary.bad += 1;
            warn!("dropped a message of {} frames: imagezmq messages have 2", parts.len());
            return Ok(None);
        };
        let header = match parse_header(header) {
            Ok(h) => h,
            Err(e) => {
                self.summary.bad += 1;
                warn!("dropped a message: {e}");
                return Ok(None);
            }
        };
        if !self.recent.first_time(&header) {
            self.summary.duplicates += 1;
            return Ok(None);
        }
        match self.accept(&header, payload) {
            Ok(received) => Ok(Some(received)),
            Err(e) => {
                self.summary.bad += 1;
                warn!("dropped {:?}: {e:#}", header.msg);
                Ok(None)
            }
        }
    }

    fn accept(&mut self, header: &Header, payload: &[u8]) -> Result<Received> {
        let msg = header.msg.clone();
        let node_name = msg.split([' ', '|']).next().unwrap_or("").to_string();
        let mut received = Received {
            msg: msg.clone(),
            node: header.node.clone().or(Some(node_name.clone())),
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
            if let Some(dir) = &self.config.save {
                let path = image_path(dir, &msg, header.ts.unwrap_or_else(crate::frame::unix_now));
                std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
                std::fs::write(&path, payload).with_context(|| format!("cannot save {}", path.display()))?;
                received.path = Some(path);
            }
            self.summary.images += 1;
        } else if let (Some(dtype), Some(shape)) = (&header.dtype, &header.shape) {
            let expected: usize = shape.iter().product();
            if dtype != "uint8" || expected != payload.len() {
                bail!("array of dtype {dtype} and shape {shape:?} does not match its {} bytes", payload.len());
            }
            (received.height, received.width, received.kind) = (shape.first().copied(), shape.get(1).copied(), "image");
            self.summary.images += 1;
        } else {
            if msg.contains("|motion|") || msg.contains("|trigger|") {
                received.kind = "event";
                self.summary.events += 1;
                info!("{msg}");
            } else if msg.ends_with("|Heartbeat") {
                self.summary.heartbeats += 1;
            } else {
                info!("{msg}");
            }
            if let Some(log) = &mut self.log {
                writeln!(log, "{} ~ {msg}", format_local(crate::frame::unix_now(), " "))?;
            }
        }
        self.summary.messages += 1;
        self.summary.bytes += payload.len() as u64;
        *self.summary.per_node.entry(node_name).or_default() += 1;
        Ok(received)
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
        assert!(recent.first_time(&header(1, 5)));
        assert!(!recent.first_time(&header(1, 5)));
        assert!(recent.first_time(&header(2, 5)), "a restarted node reuses sequence numbers");
        let plain = Header { msg: "pi Cam|jpg".into(), ..Default::default() };
        assert!(recent.first_time(&plain) && recent.first_time(&plain), "imagezmq senders carry no ids");
    }
}
