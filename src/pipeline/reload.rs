//! What a reload may change in a running node, and what must wait for a
//! restart.
//!
//! A running node takes new motion settings, send policy, JPEG quality,
//! heartbeat, what a trigger press does, and the camera's rate and controls:
//! each is read where it is used, or swapped between two frames. Everything
//! else (the source and its size, the hub address and mode, the spool, the
//! pins, the node's name...) is built into sockets, buffers and threads at
//! start, so a change to it is named in a warning and left as it is until
//! the next start. The comparison is key by key on the configurations as
//! TOML tables, so that a new key is covered by the rules below without a
//! list to keep up to date.

use anyhow::Result;

use crate::capture::controls;
use crate::config::Config;

/// A reload's outcome before it is applied.
pub struct Plan {
    /// The running configuration with every key that may change taken
    /// from the new one.
    pub config: Config,
    /// `[section] key` of what changes.
    pub changed: Vec<String>,
    /// `[section] key` of what changed in the file but needs a restart.
    pub restart: Vec<String>,
}

/// Whether a running node can take a new value of `[section] key`.
fn reloadable(section: &str, key: &str) -> bool {
    match section {
        "node" => key == "heartbeat",
        // The camera's controls go with its next request; HDR changes the
        // sensor's modes, which needs the camera opened again.
        "capture" => key == "strict_controls" || (key != "hdr" && controls::KEYS.iter().any(|(k, _)| *k == key)),
        // The frame buffers of the pre-event ring are counted at start.
        "motion" => key != "pre_event_frames",
        "encode" => matches!(key, "send" | "quality"),
        "gpio" => matches!(key, "trigger_mode" | "trigger_frames"),
        _ => false,
    }
}

/// Compares the running configuration with a new one.
pub fn plan(running: &Config, new: &Config) -> Result<Plan> {
    // Through TOML text, which `camnode config` already prints and reads:
    // going through `toml::Value` instead would take a second copy of every
    // section's (de)serializer, some 100 KB of binary.
    let old: toml::Table = running.to_toml().parse()?;
    let new: toml::Table = new.to_toml().parse()?;
    let mut merged = old.clone();
    let (mut changed, mut restart) = (Vec::new(), Vec::new());
    let empty = toml::Table::new();
    let mut sections: Vec<&String> = old.keys().chain(new.keys()).collect();
    sections.sort();
    sections.dedup();
    for section in sections {
        let table = |t: &toml::Table| t.get(section).and_then(toml::Value::as_table).cloned().unwrap_or_else(|| empty.clone());
        let (before, after) = (table(&old), table(&new));
        let mut keys: Vec<&String> = before.keys().chain(after.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if before.get(key) == after.get(key) {
                continue;
            }
            let name = format!("[{section}] {key}");
            if !reloadable(section, key) {
                restart.push(name);
                continue;
            }
            changed.push(name);
            let slot = merged.entry(section.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let Some(slot) = slot.as_table_mut() {
                match after.get(key) {
                    Some(value) => slot.insert(key.clone(), value.clone()),
                    None => slot.remove(key),
                };
            }
        }
    }
    Ok(Plan { config: toml::from_str(&merged.to_string())?, changed, restart })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::controls::Awb;
    use crate::encode::SendPolicy;

    #[test]
    fn takes_what_a_running_node_can_and_names_the_rest() {
        let running = Config::default();
        let mut new = running.clone();
        new.encode.send = SendPolicy::All;
        new.encode.quality = 70;
        new.motion.min_area_percent = 1.0;
        new.motion.pre_event_frames = 9;
        new.capture.awb = Some(Awb::Daylight);
        new.capture.size = Some("1280x720".parse().unwrap());
        new.transport.hub = Some("tcp://elsewhere:5555".into());
        new.node.heartbeat = 5.0;
        let plan = plan(&running, &new).unwrap();
        assert_eq!(
            plan.changed,
            ["[capture] awb", "[encode] quality", "[encode] send", "[motion] min_area_percent", "[node] heartbeat"]
        );
        assert_eq!(plan.restart, ["[capture] size", "[motion] pre_event_frames", "[transport] hub"]);
        let mut expected = new.clone();
        expected.motion.pre_event_frames = running.motion.pre_event_frames;
        expected.capture.size = None;
        expected.transport.hub = None;
        assert_eq!(plan.config, expected);
    }

    #[test]
    fn a_removed_key_goes_back_to_unset_and_nothing_changes_nothing() {
        let mut running = Config::default();
        running.capture.awb = Some(Awb::Cloudy);
        let plan = plan(&running, &Config { node: running.node.clone(), ..Config::default() }).unwrap();
        assert_eq!(plan.changed, ["[capture] awb"]);
        assert_eq!(plan.config.capture.awb, None);
        let same = super::plan(&running, &running).unwrap();
        assert!(same.changed.is_empty() && same.restart.is_empty());
    }
}
