//! Configuration: one struct with a section per pipeline stage.
//!
//! Settings are resolved in two steps, as ripgrep does: first parse and
//! validate (defaults, then the TOML file, then command-line flags, flags
//! win), with no side effects; only then does anything get opened. Every
//! problem is reported at once, each naming the key, the value, where it came
//! from (file and line, or the flag) and what to do about it.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::capture::SourceSpec;
use crate::flip::Flip;
use crate::gpio::GpioConfig;
use crate::motion::MotionConfig;
use crate::stats::StatsConfig;
use crate::transport::security::{Role, SecurityConfig};
use crate::transport::SpoolConfig;

/// The whole configuration of a node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub capture: CaptureConfig,
    pub motion: MotionConfig,
    pub encode: EncodeConfig,
    pub transport: TransportConfig,
    pub spool: SpoolConfig,
    pub gpio: GpioConfig,
    pub security: SecurityConfig,
    pub stats: StatsConfig,
}

/// `[node]`: who this node is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Node name in every message text (default: the host name).
    pub name: String,
    /// View name, the second word of image texts (default "Cam").
    pub view: String,
    /// Seconds between `NODE|Heartbeat` messages; 0 turns them off (default 30).
    pub heartbeat: f64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: host_name(), view: "Cam".into(), heartbeat: 30.0 }
    }
}

/// `[capture]`: where frames come from and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Frame source (default "synthetic:640x480").
    pub source: SourceSpec,
    /// Camera capture size as "WxH" (cameras only; default: the camera's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Frames per second: paces file sources, sets a camera's frame rate; "max" for as fast as possible (default 30).
    pub rate: Rate,
    /// Stop after this many frames; 0 runs until the source ends or a signal (default 0).
    pub frames: u64,
    /// Flip: "none", "h", "v" or "180" (default "none").
    pub flip: Flip,
    /// Seed of the synthetic scene (default 1).
    pub seed: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            source: SourceSpec::Synthetic { width: 640, height: 480 },
            size: None,
            rate: Rate::Fps(30.0),
            frames: 0,
            flip: Flip::None,
            seed: 1,
        }
    }
}

/// `[encode]`: which frames are encoded, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    /// Which frames to send: "motion" (while moving, plus events), "all", or "none" (events only) (default "motion").
    pub send: SendPolicy,
    /// Payload format: "jpg" or "raw" (BGR arrays, as imagezmq's send_image) (default "jpg").
    pub format: Format,
    /// JPEG quality, 1..100 (default 90).
    pub quality: u8,
    /// Encoder threads: 1 encodes on the capture thread; more encode frames
    /// in parallel and still send them in capture order; 0 starts one per CPU
    /// core, at most 4, since a 1080p JPEG costs far more than the rest of a
    /// frame's path (default 0).
    pub workers: usize,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig { send: SendPolicy::Motion, format: Format::Jpg, quality: 90, workers: 0 }
    }
}

/// `[transport]`: how messages reach the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// "req": connect to a hub and wait for its reply to each message (acknowledged;
    /// event frames the hub cannot take wait in the `[spool]`: for events that must arrive);
    /// "pub": bind and publish to any subscribed hub (live view, no acknowledgement, nothing spooled) (default "req").
    pub mode: Mode,
    /// REQ: the hub address to connect to (default "tcp://127.0.0.1:5555").
    /// PUB: the address to bind (default "tcp://*:5555").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    /// Messages waiting for the network before new ones are dropped (default 16).
    pub queue: usize,
    /// REQ: seconds to wait for the hub's reply before reconnecting (default 3).
    pub reply_timeout: f64,
    /// PUB: messages ZeroMQ buffers per subscriber before dropping (default 8).
    pub pub_hwm: i32,
    /// Seconds at exit to finish sending what is queued: PUB at any exit,
    /// REQ after a signal, which caps it at 1.5 s (default 1).
    pub linger: f64,
    /// REQ: seconds at the natural end of a finite run (`frames`, end of a
    /// file) to keep delivering the queue and the spool before exiting (default 10).
    pub drain_timeout: f64,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig { mode: Mode::Req, hub: None, queue: 16, reply_timeout: 3.0, pub_hwm: 8, linger: 1.0, drain_timeout: 10.0 }
    }
}

impl TransportConfig {
    /// The address to connect (REQ) or bind (PUB), with the mode's default.
    pub fn address(&self) -> String {
        self.hub.clone().unwrap_or_else(|| match self.mode {
            Mode::Req => "tcp://127.0.0.1:5555".into(),
            Mode::Pub => "tcp://*:5555".into(),
        })
    }
}

/// Which frames are encoded and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendPolicy {
    Motion,
    All,
    None,
}

/// Payload format of image messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpg,
    Raw,
}

/// ZeroMQ pattern between node and hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Req,
    Pub,
}

macro_rules! from_str_via_serde {
    ($($ty:ty => $what:literal: $choices:literal),* $(,)?) => {$(
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                <$ty>::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(s))
                    .map_err(|_| format!("{} '{s}' is not one of {}", $what, $choices))
            }
        }
    )*};
}

from_str_via_serde! {
    SendPolicy => "send policy": "motion, all, none",
    Format => "format": "jpg, raw",
    Mode => "mode": "req, pub",
}

/// Frames per second, or as fast as possible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    Fps(f64),
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(fps) if fps > 0.0 && fps <= 1000.0 => Ok(Rate::Fps(fps)),
            _ => Err(format!("rate '{s}' must be frames per second between 0 and 1000, or \"max\"")),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Fps(fps) => write!(f, "{fps}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::Fps(fps) => s.serialize_f64(*fps),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        let text = match Repr::deserialize(d)? {
            Repr::Number(n) => n.to_string(),
            Repr::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A capture size, "WxH".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::capture::parse_size(s).map(|(width, height)| Size { width, height })
    }
}

/// Types written in TOML as strings and parsed with `FromStr`.
macro_rules! serde_as_string {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

serde_as_string!(Size, SourceSpec);

/// Where a config file came from, kept to point errors at the right line.
#[derive(Clone, Debug, Default)]
pub struct ConfigOrigin {
    path: Option<PathBuf>,
    text: String,
    /// `section.key` names set on the command line, which win over the file.
    from_flags: HashSet<String>,
}

impl ConfigOrigin {
    /// Records that a flag set `section.key`.
    pub fn set_by_flag(&mut self, section: &str, key: &str) {
        self.from_flags.insert(format!("{section}.{key}"));
    }

    /// "flag --key", "FILE line N", or "the default", for an error message.
    fn describe(&self, section: &str, key: &str) -> String {
        if self.from_flags.contains(&format!("{section}.{key}")) {
            return format!("set by the flag --{}", key.replace('_', "-"));
        }
        match (&self.path, find_key_line(&self.text, section, key)) {
            (Some(path), Some(line)) => format!("in {} line {line}", path.display()),
            (Some(path), None) => format!("from the default (not set in {})", path.display()),
            (None, _) => "from the default".into(),
        }
    }
}

/// The 1-based line of `key = ...` inside `[section]`, if the file sets it.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            current = header.trim().to_string();
        } else if current == section {
            let name = line.split('=').next().unwrap_or("").trim();
            if name == key {
                return Some(number + 1);
            }
        }
    }
    None
}

/// Collects every invalid value so the user sees them all in one go.
pub struct Checker<'a> {
    origin: &'a ConfigOrigin,
    problems: Vec<String>,
}

impl<'a> Checker<'a> {
    pub fn new(origin: &'a ConfigOrigin) -> Self {
        Checker { origin, problems: Vec::new() }
    }

    /// Records a bad value of `[section] key`, with how to fix it.
    pub fn fail(&mut self, section: &str, key: &str, value: &str, fix: &str) {
        let place = self.origin.describe(section, key);
        self.problems.push(format!("[{section}] {key} = {value} ({place}): {fix}"));
    }

    /// Checks that a number lies in `min..=max`.
    pub fn range(&mut self, section: &str, key: &str, value: f64, min: f64, max: f64) {
        if !(min..=max).contains(&value) {
            self.fail(section, key, &value.to_string(), &format!("use a value from {min} to {max}"));
        }
    }

    pub fn finish(self) -> Result<()> {
        if self.problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!("invalid configuration:\n  {}", self.problems.join("\n  "))
    }
}

impl Config {
    /// Reads a TOML file over the defaults. Unknown keys and wrong types fail
    /// here, with the file, line and column.
    pub fn load(path: &Path) -> Result<(Config, ConfigOrigin)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}: check the --config path", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!("config file {} is invalid: {}", path.display(), e.to_string().trim_end())
        })?;
        Ok((config, ConfigOrigin { path: Some(path.to_path_buf()), text, from_flags: HashSet::new() }))
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self, origin: &ConfigOrigin) -> Result<()> {
        let mut check = Checker::new(origin);
        if self.node.name.is_empty() || self.node.name.contains(['|', ' ']) {
            check.fail("node", "name", &format!("{:?}", self.node.name), "use a non-empty name without spaces or '|', e.g. \"garage\"");
        }
        if self.node.view.contains('|') {
            check.fail("node", "view", &format!("{:?}", self.node.view), "use a view name without '|'");
        }
        check.range("node", "heartbeat", self.node.heartbeat, 0.0, 86400.0);
        check.range("encode", "quality", self.encode.quality as f64, 1.0, 100.0);
        check.range("encode", "workers", self.encode.workers as f64, 0.0, 16.0);
        check.range("transport", "queue", self.transport.queue as f64, 1.0, 10000.0);
        check.range("transport", "reply_timeout", self.transport.reply_timeout, 0.05, 600.0);
        check.range("transport", "pub_hwm", self.transport.pub_hwm as f64, 1.0, 100000.0);
        check.range("transport", "linger", self.transport.linger, 0.0, 60.0);
        check.range("transport", "drain_timeout", self.transport.drain_timeout, 0.0, 3600.0);
        let address = self.transport.address();
        if !["tcp://", "ipc://", "inproc://"].iter().any(|p| address.starts_with(p)) {
            check.fail("transport", "hub", &format!("{address:?}"), "use a ZeroMQ address such as \"tcp://hub.local:5555\"");
        }
        self.motion.check(&mut check);
        self.spool.check(&mut check);
        self.gpio.check(&mut check);
        self.security.check(&mut check, Role::of_node(self.transport.mode));
        check.finish()
    }

    /// The effective configuration as TOML, for `camnode config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// This machine's host name, the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().replace([' ', '|'], "-"))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "camnode".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<(Config, ConfigOrigin)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("camnode.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path)
    }

    #[test]
    fn file_values_override_defaults() {
        let (config, origin) = load(
            "[node]\nname = \"yard\"\n[capture]\nsource = \"synthetic:320x240\"\nrate = \"max\"\nflip = \"180\"\n\
             [encode]\nquality = 75\nsend = \"all\"\n[transport]\nmode = \"pub\"\n",
        )
        .unwrap();
        config.validate(&origin).unwrap();
        assert_eq!(config.node.name, "yard");
        assert_eq!(config.capture.source, SourceSpec::Synthetic { width: 320, height: 240 });
        assert_eq!(config.capture.rate, Rate::Max);
        assert_eq!(config.capture.flip, Flip::Rotate180);
        assert_eq!(config.encode.quality, 75);
        assert_eq!(config.encode.send, SendPolicy::All);
        assert_eq!(config.transport.address(), "tcp://*:5555");
    }

    #[test]
    fn unknown_key_names_file_and_line() {
        let err = load("[encode]\nquality = 80\nqualty = 80\n").unwrap_err().to_string();
        assert!(err.contains("camnode.toml") && err.contains("line 3") && err.contains("qualty"), "{err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = load("[capture]\nframes = \"ten\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("frames"), "{err}");
    }

    #[test]
    fn impossible_values_are_all_reported_with_line_and_fix() {
        let (config, origin) = load("[encode]\nquality = 0\n\n[transport]\nqueue = 0\n").unwrap();
        let err = config.validate(&origin).unwrap_err().to_string();
        assert!(err.contains("[encode] quality = 0 (in ") && err.contains("line 2): use a value from 1 to 100"), "{err}");
        assert!(err.contains("[transport] queue = 0") && err.contains("line 5"), "{err}");
    }

    #[test]
    fn flag_values_are_blamed_on_the_flag() {
        let mut origin = ConfigOrigin::default();
        origin.set_by_flag("encode", "quality");
        let config = Config { encode: EncodeConfig { quality: 101, ..Default::default() }, ..Default::default() };
        let err = config.validate(&origin).unwrap_err().to_string();
        assert!(err.contains("set by the flag --quality"), "{err}");
    }

    #[test]
    fn bad_source_and_rate_are_explained() {
        let err = load("[capture]\nsource = \"webcam\"\n").unwrap_err().to_string();
        assert!(err.contains("unknown source 'webcam'") && err.contains("line 2"), "{err}");
        let err = load("[capture]\nrate = -3\n").unwrap_err().to_string();
        assert!(err.contains("\"max\""), "{err}");
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let config = Config::default();
        let again: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn shipped_config_parses_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/camnode.toml");
        let (config, origin) = Config::load(&path).unwrap();
        config.validate(&origin).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let documented = |section: &str, key: &str| {
            let mut current = "";
            text.lines().any(|line| {
                let line = line.trim().trim_start_matches("# ");
                if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    current = header;
                }
                current == section && line.split('=').next().map(str::trim) == Some(key)
            })
        };
        let everything: toml::Table = toml::from_str(&Config::default().to_toml()).unwrap();
        let mut missing = Vec::new();
        for (section, table) in &everything {
            for key in table.as_table().unwrap().keys() {
                if !documented(section, key) {
                    missing.push(format!("[{section}] {key}"));
                }
            }
        }
        assert!(missing.is_empty(), "deploy/camnode.toml does not document {missing:?}");
    }
}
