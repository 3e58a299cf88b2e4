//! `[mqtt]`: the broker the hub publishes to, its credentials, and the
//! topic prefixes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::Checker;

/// `[mqtt]` (docs/console.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker, `tcp://HOST:PORT` (`--mqtt`; the port defaults to 1883);
    /// unset: no MQTT.
    pub url: Option<String>,
    /// File with `USER:PASSWORD` on one line for the broker
    /// (`--mqtt-credentials-file`, mode 0600); unset: anonymous.
    pub credentials_file: Option<PathBuf>,
    /// First level of camnode's own topics (default "camnode").
    pub topic_prefix: String,
    /// Home Assistant's discovery prefix (default "homeassistant").
    pub discovery_prefix: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig { url: None, credentials_file: None, topic_prefix: "camnode".into(), discovery_prefix: "homeassistant".into() }
    }
}

impl MqttConfig {
    /// The broker's host and port, from `url`.
    pub fn broker(&self) -> Option<Result<(String, u16), String>> {
        let url = self.url.as_deref()?;
        Some(parse_url(url))
    }

    pub fn check(&self, check: &mut Checker) {
        if let Some(Err(fix)) = self.broker() {
            check.fail("mqtt", "url", &format!("{:?}", self.url.as_deref().unwrap_or_default()), &fix);
        }
        for (key, prefix) in [("topic_prefix", &self.topic_prefix), ("discovery_prefix", &self.discovery_prefix)] {
            if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.starts_with('/') || prefix.ends_with('/') {
                check.fail("mqtt", key, &format!("{prefix:?}"), "use topic levels without '+' or '#' and without a leading or trailing '/'");
            }
        }
        if let (None, Some(credentials)) = (&self.url, &self.credentials_file) {
            check.fail("mqtt", "credentials_file", &format!("{credentials:?}"), "credentials are for a broker: set [mqtt] url (--mqtt tcp://HOST:PORT) too");
        }
    }
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let fix = "use tcp://HOST:PORT, e.g. tcp://127.0.0.1:1883 (TLS is not built in: reach a remote broker through a local one's bridge)";
    let rest = url.strip_prefix("tcp://").or_else(|| url.strip_prefix("mqtt://")).ok_or(fix)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(':') => (host, port.parse::<u16>().map_err(|_| fix)?),
        _ => (rest, 1883),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains('/') {
        return Err(fix.into());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(parse_url("tcp://10.0.0.2:1884"), Ok(("10.0.0.2".into(), 1884)));
        assert_eq!(parse_url("mqtt://broker.lan"), Ok(("broker.lan".into(), 1883)));
        assert_eq!(parse_url("tcp://[::1]:1883"), Ok(("::1".into(), 1883)));
        assert!(parse_url("ssl://broker:8883").unwrap_err().contains("TLS is not built in"));
        assert!(parse_url("tcp://:1883").is_err());
        assert!(parse_url("tcp://host:port").is_err());
    }
}
