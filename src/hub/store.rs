//! The store stage: the one thread that decides a message is the hub's.
//! It takes what the frontend read, in batches (everything that waits, up
//! to `MAX_BATCH`), drops repeats, writes images and the event log
//! (`--save`), and makes the whole batch durable in one group commit: each
//! file's writeback is started as it is written and fsynced after the last,
//! so the journal commits the batch once and the later fsyncs find their
//! data on disk already. While one batch syncs, the next one queues, so the
//! cost of durability per message falls as the load grows.
//!
//! Then, per message, in order: the observers, the PUB socket, and for
//! images the PUSH socket, the dispatch queue for workers, or JetStream.
//! The node's `OK` goes out once the last of these took it (JetStream
//! replies itself, once it acknowledged); when one of them is full the
//! stage waits, the ingest queue fills, and the frontend stops reading.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use log::{info, warn};
use serde::Serialize;

use super::dispatch::{DispatchQueue, Work};
use super::fanout::{canonical_header, Publisher, Pusher};
use super::frontend::{Ingested, Replies};
use super::inspect::{file_stem, quote, Incoming};
use super::observe::{Accepted, Kind, Observer};
use super::status::{bump, HubStatus};

/// One message as the hub accepted it, for `--jsonl` and library users.
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

/// Messages per node in the summary; past this many nodes (names come from
/// the network) the rest are counted under "(other)".
const SUMMARY_NODES: usize = 10_000;

/// Messages taken into one group commit at most.
const MAX_BATCH: usize = 256;

/// A downstream that answers the node itself once it has the message (JetStream).
pub(crate) trait Forward: Send {
    /// Takes an image, waiting while it is full; false when `stop` came first.
    fn forward(&self, incoming: &Incoming, reply_to: Option<Bytes>, stop: &AtomicBool) -> bool;
}

/// Where accepted messages go after the store.
#[derive(Default)]
pub(crate) struct Outlets {
    pub observers: Arc<RwLock<Vec<Arc<dyn Observer>>>>,
    pub publisher: Option<Publisher>,
    pub pusher: Option<Pusher>,
    pub dispatch: Option<Arc<DispatchQueue>>,
    pub forward: Option<Box<dyn Forward>>,
}

/// Files and ids: what the store keeps between batches.
pub(crate) struct Store {
    dir: Option<PathBuf>,
    log: Option<File>,
    /// Day folders made already (made once, not checked per image).
    folders: HashSet<PathBuf>,
    recent: RecentIds,
    pub(crate) per_node: Arc<Mutex<HashMap<String, u64>>>,
}

/// What became of one message in a batch.
enum Fate {
    /// Stored (or nothing to store): hand it on and acknowledge it.
    Kept(Option<PathBuf>),
    /// A repeat of a stored message, or of one earlier in the batch.
    Repeat,
    /// Could not be stored: not acknowledged, the node keeps it.
    Refused,
}

impl Store {
    pub fn open(dir: Option<&Path>) -> Result<Store> {
        let log = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).with_context(|| format!("cannot create --save directory {}", dir.display()))?;
                let path = dir.join("imagehub.log");
                Some(OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("cannot open {}", path.display()))?)
            }
            None => None,
        };
        Ok(Store { dir: dir.map(Path::to_path_buf), log, folders: HashSet::new(), recent: RecentIds::default(), per_node: Arc::default() })
    }

    /// Writes and syncs a batch; one fate per message, in order.
    fn commit(&mut self, batch: &[Ingested], status: &HubStatus) -> Vec<Fate> {
        let mut in_batch = HashSet::new();
        let mut written = false;
        let mut logged = false;
        let mut fates: Vec<Fate> = batch
            .iter()
            .map(|item| {
                let m = &item.incoming;
                if let Some(id) = m.id() {
                    if self.recent.seen(&id) || !in_batch.insert(id) {
                        return Fate::Repeat;
                    }
                }
                match self.write(m, item.received, &mut written, &mut logged) {
                    Ok(path) => Fate::Kept(path),
                    Err(e) => {
                        warn!("cannot store {}: {e:#}; the node will send it again", quote(&m.header.msg));
                        Fate::Refused
                    }
                }
            })
            .collect();
        if !written && !logged {
            return fates;
        }
        if let Err(e) = self.sync(written) {
            warn!("cannot make {} stored messages durable: {e:#}; their nodes will send them again", batch.len());
            for fate in &mut fates {
                if let Fate::Kept(_) = fate {
                    *fate = Fate::Refused;
                }
            }
            return fates;
        }
        bump(&status.fsync_batches);
        status.fsynced.fetch_add(fates.iter().filter(|f| matches!(f, Fate::Kept(_))).count() as u64, Ordering::Relaxed);
        fates
    }

    /// Writes one message: a JPEG to its file, a text to the event log.
    fn write(&mut self, m: &Incoming, received: f64, written: &mut bool, logged: &mut bool) -> Result<Option<PathBuf>> {
        let Some(dir) = &self.dir else { return Ok(None) };
        match m.kind {
            Kind::Jpeg => {
                let path = image_path(dir, &m.header.msg, m.header.ts.unwrap_or(received));
                let parent = path.parent().unwrap_or(dir).to_path_buf();
                if !self.folders.contains(&parent) {
                    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
                    self.folders.insert(parent.clone());
                }
                let (mut file, path) = match create_new(path.clone()) {
                    Ok(created) => created,
                    // Its day folder was removed meanwhile (a clean-up of old days): made again.
                    Err(_) if !parent.exists() => {
                        std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
                        create_new(path)?
                    }
                    Err(e) => return Err(e),
                };
                file.write_all(&m.payload).with_context(|| format!("cannot save {}", path.display()))?;
                *written = true;
                Ok(Some(path))
            }
            Kind::Array => Ok(None),
            _ => {
                if let Some(log) = &mut self.log {
                    writeln!(log, "{} ~ {}", format_local(crate::frame::unix_now(), " "), printable(&m.header.msg))?;
                    *logged = true;
                }
                Ok(None)
            }
        }
    }

    /// The group commit: the files of the batch, their folders and the
    /// event log in one `syncfs`; only the log's fsync when no image came.
    fn sync(&mut self, written: bool) -> Result<()> {
        let log = self.log.as_ref().context("the store has no folder")?;
        let synced = if written {
            // SAFETY: syncfs(2) on a descriptor we own.
            unsafe { libc::syncfs(log.as_raw_fd()) }
        } else {
            return log.sync_data().context("cannot fsync imagehub.log");
        };
        if synced != 0 {
            return Err(std::io::Error::last_os_error()).context("cannot sync the store's file system (syncfs)");
        }
        Ok(())
    }

    fn count_node(&self, node: &str) {
        let mut per_node = self.per_node.lock().unwrap_or_else(|e| e.into_inner());
        let key = if per_node.len() < SUMMARY_NODES || per_node.contains_key(node) { node } else { "(other)" };
        *per_node.entry(key.to_string()).or_default() += 1;
    }
}

/// Creates an image file; a name taken already (two images in one
/// microsecond) gets `-2`, `-3`...
fn create_new(path: PathBuf) -> Result<(File, PathBuf)> {
    let mut candidate = path.clone();
    for n in 2..100 {
        match OpenOptions::new().write(true).create_new(true).open(&candidate) {
            Ok(file) => return Ok((file, candidate)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
                candidate = path.with_file_name(format!("{stem}-{n}.jpg"));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot create {}", candidate.display())),
        }
    }
    anyhow::bail!("cannot create {}: 99 images of that name and time exist", path.display())
}

/// `DIR/YYYY-MM-DD/NODE-VIEW-YYYY-MM-DDTHH.MM.SS.ffffff.jpg`, as imagehub names images.
pub fn image_path(dir: &Path, msg: &str, ts: f64) -> PathBuf {
    let stamp = format_local(ts, "T");
    let day = &stamp[..10];
    dir.join(day).join(format!("{}-{}.jpg", file_stem(msg), stamp.replace(':', ".")))
}

/// A text for the event log: control characters escaped, so a message can
/// never forge a line of its own.
fn printable(text: &str) -> String {
    text.chars().flat_map(|c| if c.is_control() { c.escape_default().collect::<Vec<_>>() } else { vec![c] }).collect()
}

/// Local time as `YYYY-MM-DD{sep}HH:MM:SS.ffffff`; times out of range read as 0.
fn format_local(ts: f64, sep: &str) -> String {
    let ts = if ts.is_finite() && (0.0..1e11).contains(&ts) { ts } else { 0.0 };
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

type Id = (String, u64, u64, String);

/// Remembers recent message ids so a repeat is recognised.
#[derive(Default)]
struct RecentIds {
    seen: HashSet<Id>,
    order: VecDeque<Id>,
}

/// Ids remembered: far more than REQ nodes can have in flight or spooled per burst.
const RECENT_IDS: usize = 100_000;

impl RecentIds {
    fn seen(&self, id: &Id) -> bool {
        self.seen.contains(id)
    }

    fn remember(&mut self, id: Id) {
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

/// The store stage's thread: runs until the frontend closes the ingest
/// queue (drain) or `stop`.
pub(crate) struct Stage {
    pub store: Store,
    pub outlets: Outlets,
    pub input: Receiver<Ingested>,
    pub replies: Replies,
    /// Where a [`Received`] goes per accepted message, when someone reads them.
    pub received: Option<Sender<Received>>,
    pub status: Arc<HubStatus>,
    pub stop: Arc<AtomicBool>,
}

impl Stage {
    pub fn run(mut self) {
        loop {
            let first = match self.input.recv_timeout(Duration::from_millis(100)) {
                Ok(item) => item,
                Err(RecvTimeoutError::Timeout) if !self.stop.load(Ordering::Relaxed) => continue,
                Err(_) => break,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.input.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let fates = self.store.commit(&batch, &self.status);
            for (item, fate) in batch.into_iter().zip(fates) {
                self.settle(item, fate);
                self.status.ingest_depth.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Hands one message on and answers its node.
    fn settle(&mut self, item: Ingested, fate: Fate) {
        let Ingested { incoming: m, reply_to, received } = item;
        let path = match fate {
            Fate::Repeat => {
                bump(&self.status.duplicates);
                self.replies.send(reply_to, true);
                return;
            }
            Fate::Refused => {
                bump(&self.status.refused);
                self.replies.send(reply_to, false);
                return;
            }
            Fate::Kept(path) => path,
        };
        let stop = self.stop.clone();
        let stop = &*stop;
        if m.is_image() {
            if let Some(pusher) = &self.outlets.pusher {
                if !pusher.push(&m.raw_header, &m.payload, stop, &self.status) {
                    return;
                }
            }
            if let Some(queue) = &self.outlets.dispatch {
                let work = Work { header: m.raw_header.clone(), payload: m.payload.clone(), msg: m.header.msg.clone(), failures: 0, done: None };
                if queue.push(work, stop).is_err() {
                    return;
                }
            }
        }
        // Accepted from here on: counted, shown, and remembered, so a repeat
        // is only acknowledged. What goes to JetStream is not safe until it
        // acknowledges; a repeat of it goes there again, and JetStream drops
        // it by its message id.
        let forwarded = self.outlets.forward.is_some() && m.is_image();
        if let Some(id) = m.id().filter(|_| !forwarded) {
            self.store.recent.remember(id);
        }
        self.account(&m, received, path);
        match (&self.outlets.forward, m.is_image()) {
            (Some(forward), true) => {
                if !forward.forward(&m, reply_to, stop) {
                    warn!("stopping: {} was not handed to JetStream and not acknowledged", quote(&m.header.msg));
                }
            }
            _ => self.replies.send(reply_to, true),
        }
    }

    /// Counts, reports and shows an accepted message.
    fn account(&mut self, m: &Incoming, received: f64, path: Option<PathBuf>) {
        let status = &self.status;
        bump(&status.messages);
        status.bytes.fetch_add(m.payload.len() as u64, Ordering::Relaxed);
        match m.kind {
            Kind::Jpeg | Kind::Array => bump(&status.images),
            Kind::Event => {
                bump(&status.events);
                info!("{}", quote(&m.header.msg));
            }
            Kind::Heartbeat => bump(&status.heartbeats),
            Kind::Text => info!("{}", quote(&m.header.msg)),
        }
        self.store.count_node(&m.node);
        if let Some(publisher) = &self.outlets.publisher {
            publisher.publish(&canonical_header(&m.raw_header, &m.header.msg), &m.payload, status);
        }
        let h = &m.header;
        if let Some(received_tx) = &self.received {
            let _ = received_tx.send(Received {
            msg: h.msg.clone(),
            node: Some(m.node.clone()),
            boot: h.boot,
            seq: h.seq,
            ts: h.ts,
            score: h.score,
            kind: match m.kind {
                Kind::Jpeg => "jpg",
                Kind::Array => "image",
                Kind::Event => "event",
                Kind::Heartbeat | Kind::Text => "text",
            },
            bytes: m.payload.len(),
            width: m.width,
            height: m.height,
            path: path.clone(),
            });
        }
        let observers = self.outlets.observers.read().unwrap_or_else(|e| e.into_inner());
        if !observers.is_empty() {
            let accepted = Accepted {
                kind: m.kind,
                node: m.node.clone(),
                view: m.view.clone(),
                header: m.header.clone(),
                raw_header: m.raw_header.clone(),
                payload: m.payload.clone(),
                received,
                stored: path,
            };
            for observer in observers.iter() {
                observer.accepted(&accepted);
            }
        }
    }
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
        let odd = image_path(Path::new("/img"), "x|jpg", f64::NAN);
        assert!(odd.to_string_lossy().contains("/x-19"), "{}", odd.display());
    }

    #[test]
    fn repeats_are_recognised_per_boot() {
        let mut recent = RecentIds::default();
        let id = |boot, seq| ("n".to_string(), boot, seq, "n v|jpg".to_string());
        assert!(!recent.seen(&id(1, 5)));
        recent.remember(id(1, 5));
        assert!(recent.seen(&id(1, 5)));
        assert!(!recent.seen(&id(2, 5)), "a restarted node reuses sequence numbers");
    }

    #[test]
    fn event_texts_cannot_forge_log_lines() {
        assert_eq!(printable("a|motion|moving\n2099-01-01 ~ fake"), "a|motion|moving\\n2099-01-01 ~ fake");
    }
}
