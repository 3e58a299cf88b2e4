//! A node's health, as it reports it in every `NODE|Heartbeat` header and as
//! the hub reads it back: uptime, capture rate, frames dropped, the spool,
//! CPU load, SoC temperature, free disk, version and address. The keys sit
//! beside `msg` in the JSON header, where imagezmq hubs ignore them; every
//! key is optional both ways, so a node that cannot measure something (no
//! thermal zone, no spool) leaves it out, and a hub reads heartbeats from
//! imagenode or older camnodes as having no health.
//!
//! [`Health`] is the wire format, shared by both ends; [`HealthProbe`] is the
//! node's side, which measures between heartbeats. Heartbeats are rare
//! (every 30 s by default), so measuring reads a few small files and may
//! allocate; the per-frame path never comes here.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// The health keys of a heartbeat header. Units are in the names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// Seconds since the node started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_s: Option<f64>,
    /// Frames captured per second since the last heartbeat.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    /// Frames captured since the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    /// Frames the node could not send since the start: the camera's (the
    /// pipeline was late) and the send queue's (the network was behind).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
    /// Event messages waiting in the spool for the hub, and their bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_depth: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_bytes: Option<u64>,
    /// The whole machine's CPU use since the last heartbeat, 0 to 100 (all cores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<f64>,
    /// SoC temperature, °C, from /sys/class/thermal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temp_c: Option<f64>,
    /// Free bytes on the spool's file system (the root's while the spool directory does not exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_free_bytes: Option<u64>,
    /// camnode's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The node's IP address on the way to the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Seconds between heartbeats: a hub calls the node stale after missing three.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_s: Option<f64>,
}

impl Health {
    /// The health keys of a heartbeat header, if it has any (unknown keys are ignored).
    pub fn from_header(raw_header: &[u8]) -> Option<Health> {
        serde_json::from_slice::<Health>(raw_header).ok().filter(|health| *health != Health::default())
    }
}

/// What the pipeline knows that goes into a heartbeat.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub frames: u64,
    pub dropped: u64,
    /// Spooled messages and bytes; `None` without a spool.
    pub spool: Option<(u64, u64)>,
}

/// The node's side: measures between heartbeats.
#[derive(Debug)]
pub struct HealthProbe {
    started: Instant,
    heartbeat_s: f64,
    /// Where `disk_free_bytes` is measured.
    disk: PathBuf,
    /// `/sys/class/thermal` (another root in tests).
    thermal: PathBuf,
    /// The hub's address, for the local address that reaches it.
    hub: Option<IpAddr>,
    /// The previous sample.
    last: Option<Sample>,
}

/// When a sample was taken, the frames captured then, and /proc/stat's
/// busy and total jiffies.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    frames: u64,
    cpu: Option<(u64, u64)>,
}

impl HealthProbe {
    /// `hub` is the (first) transport address (`tcp://HOST:PORT`); its host
    /// is resolved once, here, so that heartbeats never wait on DNS.
    pub fn new(hub: &str, disk: &Path, heartbeat_s: f64) -> HealthProbe {
        HealthProbe {
            started: Instant::now(),
            heartbeat_s,
            disk: disk.to_path_buf(),
            thermal: PathBuf::from("/sys/class/thermal"),
            hub: resolve_host(hub),
            last: None,
        }
    }

    /// Measures now; rates cover the time since the previous call.
    pub fn sample(&mut self, counts: Counts) -> Health {
        let now = Instant::now();
        let cpu = read_cpu_jiffies();
        let (fps, cpu_percent) = match self.last {
            Some(last) => {
                let seconds = now.duration_since(last.at).as_secs_f64();
                let fps = (seconds > 0.0).then(|| counts.frames.saturating_sub(last.frames) as f64 / seconds);
                let cpu_percent = match (last.cpu, cpu) {
                    (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                        Some(100.0 * busy1.saturating_sub(busy0) as f64 / (total1 - total0) as f64)
                    }
                    _ => None,
                };
                (fps, cpu_percent)
            }
            None => (None, None),
        };
        self.last = Some(Sample { at: now, frames: counts.frames, cpu });
        Health {
            uptime_s: Some(round(self.started.elapsed().as_secs_f64(), 1)),
            fps: fps.map(|f| round(f, 2)),
            frames: Some(counts.frames),
            dropped: Some(counts.dropped),
            spool_depth: counts.spool.map(|(depth, _)| depth),
            spool_bytes: counts.spool.map(|(_, bytes)| bytes),
            cpu_percent: cpu_percent.map(|c| round(c, 1)),
            temp_c: soc_temperature(&self.thermal).map(|t| round(t, 1)),
            disk_free_bytes: free_bytes(&self.disk).or_else(|| free_bytes(Path::new("/"))),
            version: Some(env!("CARGO_PKG_VERSION").into()),
            address: self.hub.and_then(local_address_towards).map(|a| a.to_string()),
            heartbeat_s: Some(self.heartbeat_s),
        }
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// The IP of `tcp://HOST:PORT`'s host; `*` (a PUB node binds) has none.
fn resolve_host(address: &str) -> Option<IpAddr> {
    let rest = address.split_once("://").map_or(address, |(_, rest)| rest);
    let (host, port) = rest.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "*" {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (host, port).to_socket_addrs().ok()?.next().map(|a| a.ip())
}

/// The local address the kernel would send from to reach `peer`: connecting
/// a UDP socket sends nothing, it only picks the route.
fn local_address_towards(peer: IpAddr) -> Option<IpAddr> {
    let bind = if peer.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect((peer, 9)).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

/// Busy and total jiffies of all CPUs from /proc/stat's first line.
fn read_cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_cpu_line(stat.lines().next()?)
}

fn parse_cpu_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let total: u64 = values.iter().sum();
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The SoC's temperature: the thermal zone whose type names the CPU or SoC
/// (the Pi's is `cpu-thermal`), else the first zone; millidegrees in `temp`.
fn soc_temperature(thermal: &Path) -> Option<f64> {
    let mut zones: Vec<PathBuf> = std::fs::read_dir(thermal)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("thermal_zone")))
        .collect();
    zones.sort();
    let kind = |zone: &PathBuf| std::fs::read_to_string(zone.join("type")).unwrap_or_default().to_lowercase();
    let zone = zones.iter().find(|z| ["cpu", "soc"].iter().any(|k| kind(z).contains(k))).or(zones.first())?;
    let millidegrees: f64 = std::fs::read_to_string(zone.join("temp")).ok()?.trim().parse().ok()?;
    Some(millidegrees / 1000.0)
}

/// Bytes an unprivileged user can still write on the file system of `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_goes_through_a_header_and_back() {
        let health = Health { uptime_s: Some(12.5), temp_c: Some(48.2), version: Some("0.1.0".into()), ..Default::default() };
        let mut header = serde_json::json!({"msg": "yard|Heartbeat", "node": "yard"});
        header.as_object_mut().unwrap().extend(serde_json::to_value(&health).unwrap().as_object().unwrap().clone());
        let raw = serde_json::to_vec(&header).unwrap();
        assert_eq!(Health::from_header(&raw), Some(health));
        assert_eq!(Health::from_header(br#"{"msg": "pi|Heartbeat"}"#), None, "imagenode's heartbeats have no health");
        assert_eq!(Health::from_header(br#"{"msg": "pi|Heartbeat", "fps": "fast"}"#), None, "a malformed key is no health");
    }

    #[test]
    fn cpu_load_is_busy_over_total() {
        assert_eq!(parse_cpu_line("cpu  100 0 50 800 50 0 0 0 0 0"), Some((150, 1000)));
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4"), None);
    }

    #[test]
    fn temperature_comes_from_the_cpu_zone() {
        let dir = tempfile::tempdir().unwrap();
        for (zone, kind, temp) in [("thermal_zone0", "acpitz", "30000"), ("thermal_zone1", "cpu-thermal", "51234")] {
            std::fs::create_dir(dir.path().join(zone)).unwrap();
            std::fs::write(dir.path().join(zone).join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(dir.path().join(zone).join("temp"), format!("{temp}\n")).unwrap();
        }
        assert_eq!(soc_temperature(dir.path()), Some(51.234));
        assert_eq!(soc_temperature(&dir.path().join("none")), None);
    }

    #[test]
    fn a_sample_has_rates_from_the_second_on() {
        let mut probe = HealthProbe::new("tcp://127.0.0.1:5555", Path::new("/nonexistent"), 30.0);
        let first = probe.sample(Counts { frames: 10, dropped: 1, spool: Some((2, 300)) });
        assert_eq!((first.fps, first.frames, first.dropped, first.spool_depth, first.spool_bytes), (None, Some(10), Some(1), Some(2), Some(300)));
        assert_eq!(first.address.as_deref(), Some("127.0.0.1"));
        assert!(first.disk_free_bytes.unwrap() > 0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = probe.sample(Counts { frames: 20, ..Default::default() });
        assert!(second.fps.unwrap() > 0.0, "{second:?}");
        assert_eq!((second.spool_depth, second.heartbeat_s), (None, Some(30.0)));
        assert_eq!(resolve_host("tcp://*:5555"), None);
    }
}
