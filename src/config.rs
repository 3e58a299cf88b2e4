//! Configuration: one struct with a section per stage, assembled here.
//!
//! Each stage owns its section (`[capture]` in `capture`, `[motion]` in
//! `motion`, ...) with its defaults and its checks; this module only puts
//! them together, reads the file, and runs every section's checks. Settings
//! are resolved in two steps, as ripgrep does: first parse and validate
//! (defaults, then the TOML file, then command-line flags, flags win), with
//! no side effects; only then does anything get opened. Every problem is
//! reported at once, each naming the key, the value, where it came from
//! (file and line, or the flag) and what to do about it.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::capture::CaptureConfig;
use crate::console::ConsoleConfig;
use crate::encode::EncodeConfig;
use crate::gpio::GpioConfig;
use crate::hub::HubConfig;
use crate::motion::MotionConfig;
use crate::mqtt::MqttConfig;
use crate::settings::{Checker, ConfigOrigin};
use crate::stats::StatsConfig;
use crate::transport::security::{Role, SecurityConfig};
use crate::transport::{Mode, SpoolConfig, TransportConfig};

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
    /// `camnode hub` reads this section and `[security]`; a node ignores it.
    pub hub: HubConfig,
    /// The hub's console and MQTT (`camnode hub --config`); a node ignores them.
    pub console: ConsoleConfig,
    pub mqtt: MqttConfig,
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

impl NodeConfig {
    fn check(&self, check: &mut Checker) {
        if self.name.is_empty() || self.name.contains(['|', ' ']) {
            check.fail("node", "name", &format!("{:?}", self.name), "use a non-empty name without spaces or '|', e.g. \"garage\"");
        }
        if self.view.contains('|') {
            check.fail("node", "view", &format!("{:?}", self.view), "use a view name without '|'");
        }
        check.range("node", "heartbeat", self.heartbeat, 0.0, 86400.0);
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
        Ok((config, ConfigOrigin::file(path.to_path_buf(), text)))
    }

    /// Checks values that parse but make no sense, section by section.
    pub fn validate(&self, origin: &ConfigOrigin) -> Result<()> {
        let mut check = Checker::new(origin);
        self.node.check(&mut check);
        self.capture.check(&mut check);
        self.encode.check(&mut check);
        self.transport.check(&mut check);
        self.motion.check(&mut check);
        self.spool.check(&mut check);
        self.gpio.check(&mut check);
        self.security.check(&mut check, Role::of_node(self.transport.mode));
        check.finish()
    }

    /// Checks what `camnode hub` uses: `[hub]`, and `[security]` for each
    /// end the hub has (a server for what it binds, a client for what it
    /// connects to).
    pub fn validate_hub(&self, origin: &ConfigOrigin) -> Result<()> {
        let mut check = Checker::new(origin);
        self.hub.check(&mut check);
        match (self.hub.mode(), self.hub.binds()) {
            (Mode::Req, _) => self.security.check(&mut check, Role::Server),
            (Mode::Pub, false) => self.security.check(&mut check, Role::Client),
            (Mode::Pub, true) if self.security.enabled() => check.fail(
                "hub",
                "mode",
                "\"pub\"",
                "with [security], a hub that subscribes to PUB nodes cannot also bind --publish or --push: republish from a REQ hub",
            ),
            (Mode::Pub, true) => {}
        }
        if self.hub.worker_cert.is_some() && !self.security.enabled() {
            check.fail("hub", "worker_cert", &format!("{:?}", self.hub.worker_cert.as_deref().unwrap_or(Path::new(""))), "CURVE to workers needs this hub's own keys: set [security] secret_cert too");
        }
        self.console.check(&mut check);
        self.mqtt.check(&mut check);
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
    use crate::capture::{Rate, SourceSpec};
    use crate::encode::SendPolicy;
    use crate::flip::Flip;

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
        assert_eq!(config.capture.rate, Some(Rate::Max));
        assert_eq!(config.capture.flip, Flip::Rotate180);
        assert_eq!(config.encode.quality, 75);
        assert_eq!(config.encode.send, SendPolicy::All);
        assert_eq!(config.transport.addresses(), ["tcp://*:5555"]);
    }

    #[test]
    fn several_hubs_are_a_string_or_a_list() {
        for text in ["hub = \"tcp://a:1, tcp://b:2\"", "hub = [\"tcp://a:1\", \"tcp://b:2\"]"] {
            let (config, origin) = load(&format!("[transport]\n{text}\n")).unwrap();
            config.validate(&origin).unwrap();
            assert_eq!(config.transport.addresses(), ["tcp://a:1", "tcp://b:2"]);
        }
        let (config, origin) = load("[transport]\nhub = \"tcp://a:1,b:2\"\n").unwrap();
        let err = config.validate(&origin).unwrap_err().to_string();
        assert!(err.contains("[transport] hub = \"b:2\""), "{err}");
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
    fn unknown_camera_control_choice_names_key_and_choices() {
        let err = load("[capture]\nawb = \"banana\"\n").unwrap_err().to_string();
        assert!(err.contains("line 2") && err.contains("awb \"banana\" is not one of: auto, normal, incandescent"), "{err}");
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
        // Keys with no default are shown commented out; the camera controls are such keys.
        let mut missing: Vec<String> = crate::capture::controls::KEYS
            .iter()
            .filter(|(key, _)| !documented("capture", key))
            .map(|(key, _)| format!("[capture] {key}"))
            .collect();
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
