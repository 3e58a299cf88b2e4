//! MQTT: the fleet for Home Assistant and anything else on a broker.
//! Motion events, trigger presses, each node's availability and health,
//! and the image of each view's latest motion event are published under
//! `camnode/` ([`MqttConfig::topic_prefix`]), with Home Assistant's MQTT
//! discovery under `homeassistant/` so that every node appears as a device
//! with its entities, none configured by hand:
//!
//! | entity | discovery topic (`homeassistant/...`) | state topic (`camnode/...`) |
//! | --- | --- | --- |
//! | motion, per view (`binary_sensor`, `device_class: motion`) | `binary_sensor/camnode_NODE/VIEW_motion/config` | `NODE/VIEW/motion`: `ON` / `OFF`, retained |
//! | latest event image, per view (`camera`) | `camera/camnode_NODE/VIEW/config` | `NODE/VIEW/image`: JPEG, retained |
//! | trigger, per view that has one (`event`) | `event/camnode_NODE/VIEW_trigger/config` | `NODE/VIEW/trigger`: `{"event_type": "pressed"}` |
//! | capture rate, SoC temperature (`sensor`) | `sensor/camnode_NODE/fps/config`, `.../temperature/config` | `NODE/health`: the heartbeat's health as JSON, retained |
//!
//! Every discovery config is retained, has a `unique_id` and the node's
//! `device`, and is available while both the node (`NODE/availability`,
//! `online` / `offline` from its heartbeats: offline once stale) and the
//! hub (`camnode/status`, `offline` as its last will) are. Each motion and
//! trigger event also goes to `NODE/VIEW/event` as JSON, for automations.
//!
//! Never in the way of ingest: this runs on the services' runtime and reads
//! the fleet when it changes; it publishes the difference between what the
//! broker was last given and what the fleet is now, so a slow or absent
//! broker costs skipped intermediate states, never a wait. After every
//! (re)connection everything is published again, so a broker that lost its
//! retained messages gets them back. Reconnection waits 1 s, doubling to
//! 30 s while the broker stays away.
//!
//! Crate: rumqttc, the most used pure-Rust MQTT client (the bytebeam rumqtt
//! project), without its TLS features: a hub talks to a broker on its LAN.

pub mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use rumqttc::{AsyncClient, ConnectReturnCode, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch};

pub use config::MqttConfig;

use crate::fleet::{Event, Fleet, NodeSummary};
use crate::health::Health;
use crate::settings::read_secret;

/// Requests the client queues for the connection; past that, publishing waits for the next sync.
const QUEUE: usize = 256;
/// Largest message: a full-resolution event image.
const MAX_PACKET: usize = 16 << 20;
/// How often availability is looked at when nothing else happens.
const TICK: Duration = Duration::from_secs(1);
/// Least time between two rounds of publishing.
const PACE: Duration = Duration::from_millis(250);

/// A publisher for one broker, ready to run.
pub struct Mqtt {
    options: MqttOptions,
    topics: Topics,
    fleet: Arc<Fleet>,
    broker: String,
}

impl Mqtt {
    /// Reads the credentials; `config` was checked. `None` without `url`.
    pub fn new(config: &MqttConfig, fleet: Arc<Fleet>) -> Result<Option<Mqtt>> {
        let Some(broker) = config.broker() else { return Ok(None) };
        let (host, port) = broker.map_err(anyhow::Error::msg)?;
        let topics = Topics { own: config.topic_prefix.clone(), discovery: config.discovery_prefix.clone() };
        let client_id = format!("camnode-hub-{}-{}", crate::config::host_name(), std::process::id());
        let mut options = MqttOptions::new(client_id, host.clone(), port);
        options.set_keep_alive(Duration::from_secs(30));
        options.set_max_packet_size(64 << 10, MAX_PACKET);
        options.set_last_will(LastWill::new(topics.hub_status(), "offline", QoS::AtLeastOnce, true));
        if let Some(path) = &config.credentials_file {
            let line = read_secret("[mqtt] credentials_file", path)?;
            let Some((user, password)) = line.split_once(':') else {
                bail!("[mqtt] credentials_file = {path:?} must hold one line USER:PASSWORD");
            };
            options.set_credentials(user, password);
        }
        Ok(Some(Mqtt { options, topics, fleet, broker: format!("{host}:{port}") }))
    }

    /// Publishes until `stop`; then says the hub is offline and disconnects.
    pub async fn run(self, mut stop: oneshot::Receiver<()>) {
        let (client, eventloop) = AsyncClient::new(self.options, QUEUE);
        let (link_tx, mut link) = watch::channel(Link::default());
        let driver = tokio::spawn(drive(eventloop, link_tx, self.broker));
        let mut changes = self.fleet.subscribe();
        let after = self.fleet.last_event();
        let mut publisher = Publisher { client, topics: self.topics, fleet: self.fleet, session: 0, given: HashMap::new(), after, pictures: HashMap::new() };
        loop {
            tokio::select! {
                _ = &mut stop => break,
                Ok(()) = link.changed() => {}
                Ok(()) = changes.changed() => {}
                () = tokio::time::sleep(TICK) => {}
            }
            let now = *link.borrow_and_update();
            if now.connections != publisher.session {
                // A new session: the broker may have lost what it was given.
                publisher.session = now.connections;
                publisher.given.clear();
                publisher.pictures.clear();
            }
            if now.up {
                publisher.sync();
            }
            // At most four rounds a second, however fast the fleet changes;
            // events go out one by one all the same, from the timeline.
            tokio::select! {
                _ = &mut stop => break,
                () = tokio::time::sleep(PACE) => {}
            }
        }
        if link.borrow().up {
            let _ = publisher.client.try_publish(publisher.topics.hub_status(), QoS::AtLeastOnce, true, "offline");
            let _ = publisher.client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
        }
    }
}

/// The connection as the driver sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Link {
    /// Connections made so far.
    connections: u64,
    up: bool,
}

/// Polls the client's event loop, which connects, reconnects and moves the
/// packets; logs each outage once.
async fn drive(mut eventloop: EventLoop, link: watch::Sender<Link>, broker: String) {
    let mut delay = Duration::from_secs(1);
    // An outage is logged once, when it starts.
    let mut logged = false;
    loop {
        match eventloop.poll().await {
            Ok(rumqttc::Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                log::info!("MQTT: connected to {broker}");
                (delay, logged) = (Duration::from_secs(1), false);
                link.send_modify(|l| {
                    l.connections += 1;
                    l.up = true;
                });
            }
            Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if !logged {
                    log::warn!("MQTT: broker {broker}: {e}; trying again every 1 to 30 s");
                    logged = true;
                }
                link.send_modify(|l| l.up = false);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Topic names.
struct Topics {
    own: String,
    discovery: String,
}

impl Topics {
    fn hub_status(&self) -> String {
        format!("{}/status", self.own)
    }

    fn node(&self, node: &str) -> String {
        format!("{}/{}", self.own, level(node))
    }

    fn view(&self, node: &str, view: &str) -> String {
        format!("{}/{}/{}", self.own, level(node), level(view))
    }

    fn config(&self, component: &str, node: &str, object: &str) -> String {
        format!("{}/{component}/camnode_{}/{}/config", self.discovery, id(node), id(object))
    }
}

/// A name as one topic level: no wildcards, separators or control characters.
fn level(name: &str) -> String {
    let cleaned: String = name.chars().map(|c| if matches!(c, '+' | '#' | '/') || c.is_control() { '_' } else { c }).collect();
    if cleaned.is_empty() { "_".into() } else { cleaned }
}

/// A name as Home Assistant ids want it: letters, digits, `_` and `-`.
fn id(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Publishes the fleet's changes.
struct Publisher {
    client: AsyncClient,
    topics: Topics,
    fleet: Arc<Fleet>,
    /// The connection (counted from 1) that `given` and `pictures` are about.
    session: u64,
    /// Retained topics and what the broker was given on them in this session.
    given: HashMap<String, Vec<u8>>,
    /// The last timeline event published.
    after: u64,
    /// Per view topic: the version of the event image published.
    pictures: HashMap<String, u64>,
}

impl Publisher {
    /// Publishes what changed since the last call: the events in order
    /// (a motion event that started and ended between two rounds is still
    /// ON, then OFF), then each node's configs and states as they are now.
    fn sync(&mut self) {
        let snapshot = self.fleet.snapshot(self.after, usize::MAX);
        self.retain(self.topics.hub_status(), b"online".to_vec());
        if self.events(&snapshot.events) {
            for node in &snapshot.nodes {
                self.node(node);
            }
        }
    }

    /// Each event as JSON, triggers for the event entity, motion as ON/OFF;
    /// false when the queue filled up and the rest waits for the next round.
    fn events(&mut self, events: &[Event]) -> bool {
        for event in events {
            let (Some(view), true) = (&event.view, matches!(event.what.as_str(), "moving" | "still" | "pressed" | "armed" | "disarmed")) else {
                self.after = event.id;
                continue;
            };
            let topic = self.topics.view(&event.node, view);
            let mut sent = self.publish(format!("{topic}/event"), false, serde_json::to_vec(event).unwrap_or_default());
            match event.what.as_str() {
                "moving" => sent &= self.retain(format!("{topic}/motion"), b"ON".to_vec()),
                "still" => sent &= self.retain(format!("{topic}/motion"), b"OFF".to_vec()),
                _ => sent &= self.publish(format!("{topic}/trigger"), false, json!({ "event_type": event.what }).to_string().into_bytes()),
            }
            if !sent {
                return false;
            }
            self.after = event.id;
        }
        true
    }

    /// A node's discovery configs and states.
    fn node(&mut self, node: &NodeSummary) {
        let base = self.topics.node(&node.name);
        let availability = json!([{"topic": format!("{base}/availability")}, {"topic": self.topics.hub_status()}]);
        let device = json!({
            "identifiers": [format!("camnode_{}", id(&node.name))],
            "name": node.name,
            "manufacturer": "camnode",
            "model": "camnode node",
            "sw_version": node.health.as_ref().and_then(|h| h.version.clone()),
        });
        let entity = |name: &str, object: &str, more: Value| {
            let mut config = json!({
                "name": name,
                "unique_id": format!("camnode_{}_{}", id(&node.name), id(object)),
                "device": device,
                "availability": availability,
                "availability_mode": "all",
            });
            if let (Some(config), Some(more)) = (config.as_object_mut(), more.as_object()) {
                config.extend(more.clone());
            }
            config.to_string().into_bytes()
        };
        let health_topic = format!("{base}/health");
        let fps = entity("Capture rate", "fps", json!({"state_topic": health_topic, "value_template": "{{ value_json.fps }}", "unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:camera-timer"}));
        self.retain(self.topics.config("sensor", &node.name, "fps"), fps);
        let temperature = entity("SoC temperature", "temperature", json!({"state_topic": health_topic, "value_template": "{{ value_json.temp_c }}", "unit_of_measurement": "°C", "device_class": "temperature", "state_class": "measurement"}));
        self.retain(self.topics.config("sensor", &node.name, "temperature"), temperature);
        for view in &node.views {
            let topic = self.topics.view(&node.name, &view.view);
            let motion = entity(&format!("{} motion", view.view), &format!("{}_motion", view.view), json!({"state_topic": format!("{topic}/motion"), "device_class": "motion", "payload_on": "ON", "payload_off": "OFF"}));
            self.retain(self.topics.config("binary_sensor", &node.name, &format!("{}_motion", view.view)), motion);
            let camera = entity(&view.view, &view.view, json!({"topic": format!("{topic}/image")}));
            self.retain(self.topics.config("camera", &node.name, &view.view), camera);
            if view.triggers > 0 {
                let trigger = entity(&format!("{} trigger", view.view), &format!("{}_trigger", view.view), json!({"state_topic": format!("{topic}/trigger"), "event_types": ["pressed", "armed", "disarmed"]}));
                self.retain(self.topics.config("event", &node.name, &format!("{}_trigger", view.view)), trigger);
            }
            self.retain(format!("{topic}/motion"), if view.moving { b"ON".to_vec() } else { b"OFF".to_vec() });
            self.picture(&node.name, &view.view, format!("{topic}/image"));
        }
        self.retain(format!("{base}/health"), health_json(node.health.as_ref()));
        self.retain(format!("{base}/availability"), if node.stale { b"offline".to_vec() } else { b"online".to_vec() });
    }

    /// The view's latest event image, when it changed.
    fn picture(&mut self, node: &str, view: &str, topic: String) {
        let Some((version, picture)) = self.fleet.event_picture(node, view) else { return };
        if self.pictures.get(&topic) == Some(&version) {
            return;
        }
        // A raw array is encoded here: event images are few.
        match picture.jpeg() {
            Ok(jpeg) if self.publish(topic.clone(), true, jpeg.to_vec()) => {
                self.pictures.insert(topic, version);
            }
            Ok(_) => {}
            Err(e) => log::warn!("MQTT: {e:#}"),
        }
    }

    /// Publishes a retained state unless the broker has it already; false
    /// when the queue is full.
    fn retain(&mut self, topic: String, payload: Vec<u8>) -> bool {
        if self.given.get(&topic) == Some(&payload) {
            return true;
        }
        let sent = self.publish(topic.clone(), true, payload.clone());
        if sent {
            self.given.insert(topic, payload);
        }
        sent
    }

    /// Queues a message; false when the queue is full (it goes at the next sync).
    fn publish(&self, topic: String, retain: bool, payload: Vec<u8>) -> bool {
        self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload).is_ok()
    }
}

/// The health topic's JSON: every key the sensors read, `null` when unknown.
fn health_json(health: Option<&Health>) -> Vec<u8> {
    let mut value = serde_json::to_value(health.cloned().unwrap_or_default()).unwrap_or_else(|_| json!({}));
    if let Some(object) = value.as_object_mut() {
        for key in ["fps", "temp_c"] {
            object.entry(key).or_insert(Value::Null);
        }
    }
    value.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_safe_topic_levels_and_ids() {
        assert_eq!(level("front door"), "front door");
        assert_eq!(level("a/b+#"), "a_b__");
        assert_eq!(id("front door"), "front_door");
        let topics = Topics { own: "camnode".into(), discovery: "homeassistant".into() };
        assert_eq!(topics.config("binary_sensor", "yard", "gate_motion"), "homeassistant/binary_sensor/camnode_yard/gate_motion/config");
        assert_eq!(topics.view("yard", "gate"), "camnode/yard/gate");
    }

    #[test]
    fn health_json_has_every_sensor_key() {
        let text = String::from_utf8(health_json(None)).unwrap();
        assert_eq!(text, r#"{"fps":null,"temp_c":null}"#);
        let health = Health { temp_c: Some(50.5), uptime_s: Some(3.0), ..Default::default() };
        let value: Value = serde_json::from_slice(&health_json(Some(&health))).unwrap();
        assert_eq!((value["temp_c"].as_f64(), value["fps"].is_null(), value["uptime_s"].as_f64()), (Some(50.5), true, Some(3.0)));
    }
}
