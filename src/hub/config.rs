//! The `[hub]` config section: where the hub listens, what it keeps, whom it
//! hands images to. Every key has a `camnode hub` flag of the same name
//! (flags win); `--count`, `--idle`, `--jsonl` and `--summary-json` are
//! per-run flags only. CURVE keys stay in `[security]`, which the hub reads
//! too; the only hub-specific key there is `worker_cert`, here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::settings::Checker;
use crate::transport::Mode;

/// `[hub]`: how `camnode hub` takes messages in and hands them on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// "req": bind for REQ nodes, reply OK once a message is safe; "pub":
    /// connect SUB to PUB nodes in `connect` (default "req", or "pub" when `connect` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Address REQ nodes connect to (default "tcp://*:5555").
    pub bind: String,
    /// PUB nodes to subscribe to.
    pub connect: Vec<String>,
    /// Directory for images (`DIR/YYYY-MM-DD/NODE-VIEW-TIME.jpg`) and the
    /// event log, written and fsynced before OK; unset keeps nothing on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub save: Option<PathBuf>,
    /// imagezmq worker programs (each binds an `ImageHub`, REP): every image
    /// goes to exactly one free worker.
    pub workers: Vec<String>,
    /// Seconds a worker may take to reply before its image goes to another
    /// worker and it rests (1 s, doubling up to 60 s) (default 10).
    pub worker_timeout: f64,
    /// Hand-overs an image gets (timeouts, lost connections) before the hub
    /// gives it up as one no worker survives (default 5).
    pub worker_attempts: u32,
    /// Workers' public CURVE certificate (`NAME.key`) when they use CURVE
    /// (with `[security]`); without it, worker links are plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_cert: Option<PathBuf>,
    /// Bind PUB here and republish every message, imagezmq format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publish: Option<String>,
    /// Messages queued per subscriber before a slow one loses frames (default 4).
    pub publish_hwm: i32,
    /// Bind PUSH here and hand every image to one PULL worker (fire and forget).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    /// Megabytes of images waiting in memory for workers or JetStream; when
    /// full, the hub stops reading from nodes (default 256).
    pub queue_mb: u64,
    /// Largest message accepted, megabytes; a peer sending more is cut off (default 64).
    pub max_message_mb: u64,
    /// NATS servers: put every image into JetStream and reply OK once it is acknowledged.
    pub nats: Vec<String>,
    /// NATS servers: take images from JetStream and feed them to `workers`.
    pub from_nats: Vec<String>,
    /// JetStream stream (created if missing, subjects `camnode.>`) (default "CAMNODE").
    pub nats_stream: String,
    /// Replicas when the hub creates the stream (default 1; 3 on a 3-server cluster).
    pub nats_replicas: usize,
    /// Megabytes the stream may hold; when full, publishing waits (default 1024).
    pub nats_max_mb: u64,
    /// Durable consumer name the dispatchers share (default "camnode-workers").
    pub nats_consumer: String,
    /// Seconds JetStream waits for a dispatcher's acknowledgement before
    /// redelivering (default 60).
    pub nats_ack_wait: f64,
    /// NATS credentials file (`.creds`); never put secrets on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_credentials: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS servers with; setting it requires TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_tls_key: Option<PathBuf>,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            mode: None,
            bind: "tcp://*:5555".into(),
            connect: Vec::new(),
            save: None,
            workers: Vec::new(),
            worker_timeout: 10.0,
            worker_attempts: 5,
            worker_cert: None,
            publish: None,
            publish_hwm: 4,
            push: None,
            queue_mb: 256,
            max_message_mb: 64,
            nats: Vec::new(),
            from_nats: Vec::new(),
            nats_stream: "CAMNODE".into(),
            nats_replicas: 1,
            nats_max_mb: 1024,
            nats_consumer: "camnode-workers".into(),
            nats_ack_wait: 60.0,
            nats_credentials: None,
            nats_tls_ca: None,
            nats_tls_cert: None,
            nats_tls_key: None,
        }
    }
}

/// What a ZeroMQ address starts with.
const ZMQ_SCHEMES: [&str; 3] = ["tcp://", "ipc://", "inproc://"];

impl HubConfig {
    /// The mode: as set, or "pub" when the hub connects to PUB nodes.
    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or(if self.connect.is_empty() { Mode::Req } else { Mode::Pub })
    }

    /// Whether the hub binds sockets that nodes or consumers connect to (CURVE server).
    pub fn binds(&self) -> bool {
        self.mode() == Mode::Req || self.publish.is_some() || self.push.is_some()
    }

    /// Checks values that parse but cannot work, each with its fix.
    pub fn check(&self, check: &mut Checker) {
        let zmq_address = |check: &mut Checker, key: &str, address: &str| {
            if !ZMQ_SCHEMES.iter().any(|p| address.starts_with(p)) {
                check.fail("hub", key, &format!("{address:?}"), "use a ZeroMQ address such as \"tcp://*:5555\" or \"tcp://worker1:5555\"");
            }
        };
        match self.mode() {
            Mode::Req => zmq_address(check, "bind", &self.bind),
            Mode::Pub if self.connect.is_empty() => {
                check.fail("hub", "connect", "[]", "a \"pub\" hub subscribes to PUB nodes: list them, e.g. --connect tcp://garage:5555")
            }
            Mode::Pub => {}
        }
        for address in &self.connect {
            zmq_address(check, "connect", address);
        }
        for address in &self.workers {
            zmq_address(check, "workers", address);
        }
        for (key, address) in [("publish", &self.publish), ("push", &self.push)] {
            if let Some(address) = address {
                zmq_address(check, key, address);
            }
        }
        check.range("hub", "worker_timeout", self.worker_timeout, 0.05, 3600.0);
        check.range("hub", "worker_attempts", self.worker_attempts as f64, 1.0, 100.0);
        check.range("hub", "publish_hwm", self.publish_hwm as f64, 1.0, 100_000.0);
        check.range("hub", "queue_mb", self.queue_mb as f64, 1.0, 1_048_576.0);
        check.range("hub", "max_message_mb", self.max_message_mb as f64, 1.0, 4096.0);
        if self.max_message_mb > self.queue_mb {
            check.fail("hub", "max_message_mb", &self.max_message_mb.to_string(), "the queue must hold the largest message: make it at most queue_mb");
        }
        self.check_nats(check);
    }

    fn check_nats(&self, check: &mut Checker) {
        let uses_nats = !self.nats.is_empty() || !self.from_nats.is_empty();
        if uses_nats && !cfg!(feature = "nats") {
            let key = if self.nats.is_empty() { "from_nats" } else { "nats" };
            check.fail("hub", key, &format!("{:?}", if self.nats.is_empty() { &self.from_nats } else { &self.nats }), "this camnode was built without NATS: build it with `cargo build --release --features nats`");
        }
        if !self.from_nats.is_empty() && self.workers.is_empty() {
            check.fail("hub", "from_nats", &format!("{:?}", self.from_nats), "a dispatcher feeds workers: add --workers tcp://WORKER:PORT,...");
        }
        if !self.nats.is_empty() && self.from_nats.is_empty() && !self.workers.is_empty() {
            check.fail("hub", "workers", &format!("{:?}", self.workers), "with --nats, images reach workers through JetStream: add --from-nats (here or on other machines)");
        }
        for (key, urls) in [("nats", &self.nats), ("from_nats", &self.from_nats)] {
            for url in urls {
                if url.is_empty() || url.contains(char::is_whitespace) || url.contains('@') {
                    check.fail("hub", key, &format!("{url:?}"), "use server URLs such as \"nats://127.0.0.1:4222\"; credentials go into nats_credentials, never into a URL");
                }
            }
        }
        if self.nats_stream.is_empty() || self.nats_stream.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)) {
            check.fail("hub", "nats_stream", &format!("{:?}", self.nats_stream), "use a name of letters, digits, '-' and '_', e.g. \"CAMNODE\"");
        }
        if self.nats_consumer.is_empty() || self.nats_consumer.contains(|c: char| c.is_whitespace() || ".*>/\\".contains(c)) {
            check.fail("hub", "nats_consumer", &format!("{:?}", self.nats_consumer), "use a name of letters, digits, '-' and '_', e.g. \"camnode-workers\"");
        }
        check.range("hub", "nats_replicas", self.nats_replicas as f64, 1.0, 5.0);
        check.range("hub", "nats_max_mb", self.nats_max_mb as f64, 1.0, 1_048_576.0);
        check.range("hub", "nats_ack_wait", self.nats_ack_wait, 1.0, 86400.0);
        if !self.from_nats.is_empty() && self.nats_ack_wait < self.worker_timeout * 2.0 {
            check.fail("hub", "nats_ack_wait", &self.nats_ack_wait.to_string(), "JetStream would redeliver images a worker is still on: make it at least twice worker_timeout");
        }
        if self.nats_tls_cert.is_some() != self.nats_tls_key.is_some() {
            let (key, value) = if self.nats_tls_cert.is_some() { ("nats_tls_key", "(not set)") } else { ("nats_tls_cert", "(not set)") };
            check.fail("hub", key, value, "a client certificate needs both nats_tls_cert and nats_tls_key");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigOrigin;

    fn problems(config: &HubConfig) -> String {
        let origin = ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        config.check(&mut check);
        check.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn defaults_are_valid_and_mode_follows_connect() {
        assert_eq!(problems(&HubConfig::default()), "");
        assert_eq!(HubConfig::default().mode(), Mode::Req);
        let sub = HubConfig { connect: vec!["tcp://pi:5555".into()], ..Default::default() };
        assert_eq!((sub.mode(), sub.binds()), (Mode::Pub, false));
    }

    #[test]
    fn bad_addresses_and_a_dispatcher_without_workers_are_explained() {
        let config = HubConfig {
            workers: vec!["localhost:5556".into()],
            publish: Some("*:5557".into()),
            from_nats: vec!["nats://a:4222".into()],
            worker_timeout: 0.0,
            ..Default::default()
        };
        let err = problems(&config);
        assert!(err.contains("[hub] workers = \"localhost:5556\"") && err.contains("tcp://worker1:5555"), "{err}");
        assert!(err.contains("[hub] publish = \"*:5557\""), "{err}");
        assert!(err.contains("[hub] worker_timeout = 0"), "{err}");
        let config = HubConfig { from_nats: vec!["nats://a:4222".into()], ..Default::default() };
        assert!(problems(&config).contains("add --workers"), "{}", problems(&config));
    }

    #[test]
    fn secrets_never_go_into_nats_urls() {
        let config = HubConfig { nats: vec!["nats://user:pass@a:4222".into()], ..Default::default() };
        assert!(problems(&config).contains("nats_credentials"), "{}", problems(&config));
    }
}
