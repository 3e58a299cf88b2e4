//! The spool: event messages the hub could not take, kept on disk until it
//! does.
//!
//! A node exists for the frames of its motion and trigger events; a hub that
//! reboots or a Wi-Fi link that drops must not cost them. When the hub does
//! not reply, or the send queue is full, event messages are written here, one
//! file per message, and delivered later, oldest first, between live ones.
//! What the spool promises:
//!
//! - Crash safety: a message is written to a hidden temporary file, flushed
//!   with fsync, renamed into place, and the directory flushed, so a file with
//!   a final name is complete. A crash mid-write leaves only a temporary file,
//!   removed at the next start. A CRC-32 over the whole file catches what the
//!   storage itself damaged (an SD card after a power cut); a damaged file is
//!   deleted and counted, never sent.
//! - Order: files sort by the run that made them, then capture time, so
//!   delivery resumes where it stopped, across restarts too. A file holds the
//!   message's original header, so the hub sees the original capture time,
//!   sequence number and boot id, and drops repeats by them.
//! - Bounds: at most `max_mb` of disk blocks. Past that, or when the disk is
//!   full, the oldest messages are deleted first, counted and logged.
//! - One owner: a lock on `DIR/lock` keeps two nodes out of one spool.
//!
//! Writes cost an fsync or two each, which is why only event messages come
//! here, and only when the network cannot take them: an SD card wears, and
//! the healthy path never touches it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{bail, ensure, Context, Result};
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};

use super::wire::{parse_header, Message, MessageKind};
use super::BufferPool;
use super::Mode;
use crate::settings::Checker;

/// Where the spool lives unless configured: the service's state directory.
pub const DEFAULT_DIR: &str = "/var/lib/camnode/spool";

/// `[spool]`: where event messages wait while the hub cannot take them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory for event messages the hub has not acknowledged yet (REQ mode
    /// only), one per node; if the default is not writable spooling is off,
    /// with a warning (default "/var/lib/camnode/spool").
    pub dir: PathBuf,
    /// Disk space the spool may take, in MiB; when it is full the oldest
    /// messages go first; 0 turns spooling off (default 256).
    pub max_mb: u64,
    /// What waits here: "events" (motion and trigger events and their
    /// frames) or "all" (every image the send policy sends, for time-lapse
    /// nodes with `send = "all"` whose frames must survive an outage too)
    /// (default "events").
    pub keep: SpoolKeep,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig { dir: PathBuf::from(DEFAULT_DIR), max_mb: 256, keep: SpoolKeep::Events }
    }
}

/// Which messages the spool keeps when the hub cannot take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolKeep {
    /// Event messages and the frames of events.
    Events,
    /// Every image that is sent, and the event messages.
    All,
}

impl SpoolConfig {
    pub(crate) fn check(&self, check: &mut Checker) {
        if self.dir.as_os_str().is_empty() {
            check.fail("spool", "dir", "\"\"", "use a directory such as \"/var/lib/camnode/spool\"");
        }
        check.range("spool", "max_mb", self.max_mb as f64, 0.0, 1_048_576.0);
    }
}

/// Names one spooled message; the order of keys is the delivery order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpoolKey {
    /// The `boot` id of the run that captured it (its start time).
    boot: u64,
    /// Capture time, Unix microseconds.
    ts_us: u64,
    /// Events before images of the same instant, as they are sent live.
    rank: u8,
    /// Tie-breaker: the order in which this process wrote them.
    n: u32,
}

impl SpoolKey {
    /// Fixed-width hex, so `ls` shows the delivery order too.
    fn file_name(&self) -> String {
        format!("{:016x}-{:016x}-{:x}-{:08x}.msg", self.boot, self.ts_us, self.rank, self.n)
    }

    fn parse(name: &str) -> Option<SpoolKey> {
        let mut parts = name.strip_suffix(".msg")?.split('-');
        let mut next = || parts.next().and_then(|p| u64::from_str_radix(p, 16).ok());
        let key = SpoolKey { boot: next()?, ts_us: next()?, rank: u8::try_from(next()?).ok()?, n: u32::try_from(next()?).ok()? };
        next().is_none().then_some(key)
    }
}

/// What the spool did, for the run's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SpoolCounts {
    /// Messages written to the spool.
    pub stored: u64,
    /// Spooled messages the hub acknowledged (this run's and earlier runs').
    pub delivered: u64,
    /// Spooled messages deleted unsent to stay within `max_mb` or on a full disk.
    pub evicted: u64,
    /// Damaged files found and deleted, never sent.
    pub corrupt: u64,
    /// Messages that could not be written at all, and so were dropped.
    pub failed: u64,
    /// Messages in the spool now, waiting for the hub or the next start.
    pub waiting: u64,
}

/// File layout: this preamble, then the JSON header, then the payload.
/// `magic[4] kind[1] pad[3] ts:f64 header_len:u32 payload_len:u32 crc32:u32`,
/// little-endian; the CRC covers the preamble before it and both bodies.
const MAGIC: [u8; 4] = *b"CNS1";
const PREAMBLE: usize = 28;
/// Bounds that no real message reaches, so a damaged length never makes the
/// node allocate gigabytes.
const MAX_HEADER: usize = 1 << 20;
const MAX_PAYLOAD: usize = 256 << 20;
/// Disk usage is counted in blocks: a thousand tiny event files take a
/// thousand blocks.
const BLOCK: u64 = 4096;

fn disk_size(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK) * BLOCK
}

fn kind_byte(kind: MessageKind) -> u8 {
    match kind {
        MessageKind::Event => 0,
        MessageKind::Image => 1,
        MessageKind::Notice => 2,
    }
}

fn kind_of(byte: u8) -> Option<MessageKind> {
    [MessageKind::Event, MessageKind::Image, MessageKind::Notice].get(byte as usize).copied()
}

fn preamble(message: &Message) -> [u8; PREAMBLE] {
    let mut p = [0u8; PREAMBLE];
    p[..4].copy_from_slice(&MAGIC);
    p[4] = kind_byte(message.kind);
    p[8..16].copy_from_slice(&message.ts.to_le_bytes());
    p[16..20].copy_from_slice(&(message.header.len() as u32).to_le_bytes());
    p[20..24].copy_from_slice(&(message.payload.len() as u32).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&p[..24]);
    crc.update(&message.header);
    crc.update(&message.payload);
    p[24..].copy_from_slice(&crc.finalize().to_le_bytes());
    p
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// ENOSPC or EDQUOT: room can be made by deleting old messages.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[derive(Default)]
struct State {
    /// Every spooled message and its size on disk.
    files: BTreeMap<SpoolKey, u64>,
    used: u64,
    /// The message the sender is delivering now: eviction spares it.
    in_flight: Option<SpoolKey>,
    counts: SpoolCounts,
}

/// An open spool directory, shared by the pipeline (queue full) and the
/// sender (hub unreachable).
pub struct Spool {
    dir: PathBuf,
    /// The directory itself, flushed after each rename so the rename survives a power cut.
    dir_handle: File,
    max_bytes: u64,
    state: Mutex<State>,
    next_n: AtomicU32,
    /// Holds the advisory lock for as long as the spool is open.
    _lock: File,
}

impl Spool {
    /// The spool a node's settings ask for. `None` in PUB mode (no
    /// acknowledgement, so nothing to send again), with `max_mb = 0`, or when
    /// the default directory cannot be used (a node run by hand as a user
    /// without /var/lib/camnode): that is a warning, while a directory set in
    /// the config or with `--spool` that cannot be used is an error.
    pub fn open_configured(config: &SpoolConfig, mode: Mode) -> Result<Option<Spool>> {
        if mode == Mode::Pub || config.max_mb == 0 {
            return Ok(None);
        }
        match Spool::open(&config.dir, config.max_mb) {
            Ok(spool) => Ok(Some(spool)),
            Err(e) if config.dir == Path::new(DEFAULT_DIR) => {
                warn!("spooling is off, event frames are dropped while the hub is away: {e:#}; set [spool] dir or --spool DIR");
                Ok(None)
            }
            Err(e) => Err(e.context(format!("[spool] dir = {:?} cannot be used: choose a writable directory with --spool DIR, or set [spool] max_mb = 0 to spool nothing", config.dir))),
        }
    }

    /// Opens (creating) a spool directory, takes its lock, removes unfinished
    /// writes and indexes what earlier runs left.
    pub fn open(dir: &Path, max_mb: u64) -> Result<Spool> {
        fs::create_dir_all(dir).with_context(|| format!("cannot create the spool directory {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot write in the spool directory {}", dir.display()))?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            bail!("the spool directory {} is in use by another camnode: give each node its own [spool] dir", dir.display());
        }
        let mut state = State::default();
        let mut torn = 0;
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list the spool directory {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.ends_with(".tmp") {
                fs::remove_file(entry.path()).with_context(|| format!("cannot remove {}", entry.path().display()))?;
                torn += 1;
            } else if let Some(key) = SpoolKey::parse(&name) {
                let size = disk_size(entry.metadata()?.len());
                state.files.insert(key, size);
                state.used += size;
            }
        }
        if torn > 0 {
            warn!("spool {}: removed {torn} unfinished writes of a run that crashed", dir.display());
        }
        if !state.files.is_empty() {
            info!("spool {}: {} messages ({:.1} MiB) from earlier runs to deliver", dir.display(), state.files.len(), state.used as f64 / 1048576.0);
        }
        state.counts.waiting = state.files.len() as u64;
        Ok(Spool {
            dir_handle: File::open(dir).with_context(|| format!("cannot open the spool directory {}", dir.display()))?,
            dir: dir.to_path_buf(),
            max_bytes: max_mb.saturating_mul(1 << 20),
            state: Mutex::new(state),
            next_n: AtomicU32::new(0),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes a message durably, making room first: past `max_mb`, or when
    /// the disk is full, the oldest spooled messages are deleted.
    pub fn store(&self, message: &Message) -> Result<()> {
        let header = parse_header(&message.header).map_err(anyhow::Error::msg)?;
        let key = SpoolKey {
            boot: header.boot.unwrap_or(0),
            ts_us: (message.ts.max(0.0) * 1e6) as u64,
            rank: kind_byte(message.kind),
            n: self.next_n.fetch_add(1, Ordering::Relaxed),
        };
        let size = disk_size((PREAMBLE + message.header.len() + message.payload.len()) as u64);
        let mut state = self.lock();
        if size > self.max_bytes {
            state.counts.failed += 1;
            bail!("a message of {} KiB does not fit in the whole spool ([spool] max_mb = {}): raise max_mb", size / 1024, self.max_bytes >> 20);
        }
        // Only the message in flight can keep the spool over its cap, by one message, until its reply.
        while state.used + size > self.max_bytes && self.evict_oldest(&mut state, "is at its [spool] max_mb") {}
        loop {
            match self.write(&key, message) {
                Ok(()) => break,
                Err(e) if is_disk_full(&e) && self.evict_oldest(&mut state, "is on a full disk") => {}
                Err(e) => {
                    state.counts.failed += 1;
                    return Err(e).with_context(|| format!("cannot write to the spool {}", self.dir.display()));
                }
            }
        }
        state.files.insert(key, size);
        state.used += size;
        state.counts.stored += 1;
        Ok(())
    }

    /// Write, fsync, rename, fsync the directory. Until the rename the
    /// message exists only under a hidden temporary name, which a restart
    /// removes; after it, the file is whole.
    fn write(&self, key: &SpoolKey, message: &Message) -> io::Result<()> {
        let name = key.file_name();
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let written = File::create(&tmp).and_then(|mut file| {
            file.write_all(&preamble(message))?;
            file.write_all(&message.header)?;
            file.write_all(&message.payload)?;
            file.sync_data()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, self.dir.join(&name))) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // The file is whole and named; a failed directory flush only risks the
        // rename being undone by a power cut, which loses the file, never tears it.
        if let Err(e) = self.dir_handle.sync_all() {
            debug!("cannot flush the spool directory {}: {e}", self.dir.display());
        }
        Ok(())
    }

    /// Deletes the oldest message not in flight; false if there is none.
    fn evict_oldest(&self, state: &mut State, why: &str) -> bool {
        let Some(key) = state.files.keys().find(|&&k| Some(k) != state.in_flight).copied() else { return false };
        self.forget(state, key);
        state.counts.evicted += 1;
        let evicted = state.counts.evicted;
        if evicted.is_power_of_two() {
            warn!("spool {} {why}: deleted the oldest message unsent ({evicted} so far)", self.dir.display());
        } else {
            debug!("spool {} {why}: deleted {}", self.dir.display(), key.file_name());
        }
        true
    }

    fn forget(&self, state: &mut State, key: SpoolKey) {
        if let Some(size) = state.files.remove(&key) {
            state.used -= size;
        }
        if let Err(e) = fs::remove_file(self.dir.join(key.file_name())) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!("cannot delete {} from the spool: {e}", key.file_name());
            }
        }
    }

    /// The oldest spooled message, read back and checked, and marked in
    /// flight until [`Spool::delivered`] or [`Spool::release`]. Damaged files
    /// met on the way are deleted and counted. `None`: the spool is empty.
    pub fn take_oldest(&self, pool: &BufferPool) -> Option<(SpoolKey, Message)> {
        let mut state = self.lock();
        loop {
            let key = *state.files.keys().next()?;
            match self.read(key, pool) {
                Ok(message) => {
                    state.in_flight = Some(key);
                    return Some((key, message));
                }
                Err(e) => {
                    warn!("spool file {} is damaged and was deleted, not sent: {e:#}", key.file_name());
                    self.forget(&mut state, key);
                    state.counts.corrupt += 1;
                }
            }
        }
    }

    /// Reads one spooled message, checking its length and CRC; buffers come
    /// from `pool`.
    pub fn read(&self, key: SpoolKey, pool: &BufferPool) -> Result<Message> {
        let mut file = File::open(self.dir.join(key.file_name()))?;
        let mut p = [0u8; PREAMBLE];
        file.read_exact(&mut p).context("shorter than its preamble")?;
        ensure!(p[..4] == MAGIC, "not a camnode spool file");
        let kind = kind_of(p[4]).context("unknown message kind")?;
        let ts = f64::from_le_bytes(p[8..16].try_into().expect("eight bytes"));
        let (header_len, payload_len) = (u32_at(&p, 16) as usize, u32_at(&p, 20) as usize);
        ensure!(header_len <= MAX_HEADER && payload_len <= MAX_PAYLOAD, "impossible lengths {header_len} and {payload_len}");
        let len = file.metadata()?.len();
        let expected = (PREAMBLE + header_len + payload_len) as u64;
        ensure!(len == expected, "{len} bytes where its preamble says {expected}");
        let (mut header, mut payload) = pool.take();
        header.resize(header_len, 0);
        file.read_exact(&mut header)?;
        payload.resize(payload_len, 0);
        file.read_exact(&mut payload)?;
        let message = Message { kind, header, payload, ts, durable: true };
        if preamble(&message)[24..] != p[24..] {
            pool.give(message.header, message.payload);
            bail!("CRC mismatch");
        }
        Ok(message)
    }

    /// The hub acknowledged the message in flight: delete it.
    pub fn delivered(&self, key: SpoolKey) {
        let mut state = self.lock();
        state.in_flight = None;
        self.forget(&mut state, key);
        state.counts.delivered += 1;
    }

    /// The message in flight was not delivered: it stays for the next try.
    pub fn release(&self, key: SpoolKey) {
        let mut state = self.lock();
        if state.in_flight == Some(key) {
            state.in_flight = None;
        }
    }

    pub fn len(&self) -> usize {
        self.lock().files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().files.is_empty()
    }

    /// Every spooled message's key, oldest first.
    pub fn keys(&self) -> Vec<SpoolKey> {
        self.lock().files.keys().copied().collect()
    }

    /// Disk space in use, bytes (in whole blocks).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used
    }

    pub fn counts(&self) -> SpoolCounts {
        let state = self.lock();
        SpoolCounts { waiting: state.files.len() as u64, ..state.counts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wire::OutHeader;

    fn message(kind: MessageKind, seq: u64, ts: f64, payload_len: usize) -> Message {
        let msg = if kind == MessageKind::Event { "n v|motion|moving" } else { "n v|jpg" };
        let header = OutHeader { msg, dtype: None, shape: None, node: "n", boot: 7, seq, ts, score: None, boxes: &[] };
        let mut message = Message::new(kind, &header, Vec::new(), vec![seq as u8; payload_len]);
        message.durable = true;
        message
    }

    fn seq_of(message: &Message) -> u64 {
        parse_header(&message.header).unwrap().seq.unwrap()
    }

    #[test]
    fn delivers_in_capture_order_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let pool = BufferPool::default();
        {
            let spool = Spool::open(dir.path(), 10).unwrap();
            // Stored out of order, as the pipeline (queue full) and the sender
            // (outage) may: the later frame first, and an event beside its image.
            spool.store(&message(MessageKind::Image, 2, 100.2, 10)).unwrap();
            spool.store(&message(MessageKind::Image, 1, 100.1, 10)).unwrap();
            spool.store(&message(MessageKind::Event, 1, 100.1, 10)).unwrap();
            assert_eq!(spool.counts().stored, 3);
        }
        let spool = Spool::open(dir.path(), 10).unwrap();
        let mut order = Vec::new();
        while let Some((key, message)) = spool.take_oldest(&pool) {
            order.push((message.kind, seq_of(&message), message.payload.len()));
            spool.delivered(key);
        }
        assert_eq!(order, vec![(MessageKind::Event, 1, 10), (MessageKind::Image, 1, 10), (MessageKind::Image, 2, 10)]);
        assert_eq!(spool.counts(), SpoolCounts { delivered: 3, ..Default::default() });
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the lock file is left");
    }

    #[test]
    fn the_cap_evicts_the_oldest_but_never_the_message_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let pool = BufferPool::default();
        let spool = Spool::open(dir.path(), 1).unwrap();
        // 1 MiB holds four messages of 250 KB (in 4 KiB blocks).
        spool.store(&message(MessageKind::Image, 0, 1.0, 250_000)).unwrap();
        let (in_flight, _) = spool.take_oldest(&pool).unwrap();
        for seq in 1..8 {
            spool.store(&message(MessageKind::Image, seq, 1.0 + seq as f64, 250_000)).unwrap();
        }
        assert!(spool.used_bytes() <= 1 << 20);
        let counts = spool.counts();
        assert_eq!((counts.stored, counts.evicted, counts.waiting), (8, 4, 4));
        assert_eq!(spool.keys()[0], in_flight, "the message in flight stays");
        spool.delivered(in_flight);
        let left: Vec<u64> = std::iter::from_fn(|| spool.take_oldest(&pool)).map(|(k, m)| {
            spool.delivered(k);
            seq_of(&m)
        }).collect();
        assert_eq!(left, vec![5, 6, 7], "the newest survive");
    }

    #[test]
    fn damaged_and_unfinished_files_are_never_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let pool = BufferPool::default();
        let names: Vec<PathBuf> = {
            let spool = Spool::open(dir.path(), 10).unwrap();
            for seq in 0..4 {
                spool.store(&message(MessageKind::Image, seq, 10.0 + seq as f64, 1000)).unwrap();
            }
            spool.keys().iter().map(|k| dir.path().join(k.file_name())).collect()
        };
        // A flipped bit, a file cut short, and garbage under a valid name.
        let mut bytes = fs::read(&names[0]).unwrap();
        bytes[PREAMBLE + 50] ^= 1;
        fs::write(&names[0], bytes).unwrap();
        let bytes = fs::read(&names[1]).unwrap();
        fs::write(&names[1], &bytes[..bytes.len() / 2]).unwrap();
        fs::write(&names[2], b"not a spool file at all, but long enough to have a preamble").unwrap();
        // An unfinished write left by a crash.
        fs::write(dir.path().join(".0000000000000007-0000000000000001-1-00000009.msg.tmp"), b"CNS1").unwrap();
        let spool = Spool::open(dir.path(), 10).unwrap();
        assert_eq!(spool.len(), 4, "the temporary file is gone at open");
        let (key, message) = spool.take_oldest(&pool).unwrap();
        assert_eq!(seq_of(&message), 3);
        spool.delivered(key);
        assert!(spool.take_oldest(&pool).is_none());
        let counts = spool.counts();
        assert_eq!((counts.corrupt, counts.delivered, counts.waiting), (3, 1, 0));
    }

    #[test]
    fn one_spool_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Spool::open(dir.path(), 1).unwrap();
        let err = Spool::open(dir.path(), 1).err().unwrap().to_string();
        assert!(err.contains("in use by another camnode"), "{err}");
    }

    #[test]
    fn file_names_round_trip() {
        let key = SpoolKey { boot: 1_700_000_000_000_000, ts_us: 1_700_000_001_250_000, rank: 1, n: 42 };
        assert_eq!(SpoolKey::parse(&key.file_name()), Some(key));
        assert_eq!(SpoolKey::parse("lock"), None);
        assert_eq!(SpoolKey::parse("1-2-3-4-5.msg"), None);
    }
}
