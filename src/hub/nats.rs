//! JetStream, for fleets one hub machine cannot carry (`nats` build
//! feature). camnode grows no cluster of its own: replication, retention
//! and failover are JetStream's, and camnode only puts images in and takes
//! them out, with the well-kept async-nats client. Its tokio runtime runs
//! on a thread of its own per role, so the rest of the hub stays plain
//! threads and ZeroMQ.
//!
//! - [`Producer`] (`--nats`): the store hands it each image; it publishes
//!   header and payload to subject `camnode.NODE.VIEW` of the stream
//!   (created if missing: work-queue retention, so an image stays until a
//!   dispatcher acknowledges it, and publishing waits rather than dropping
//!   when the stream is full) and answers the node `OK` only once JetStream
//!   acknowledged it. The imagezmq header travels as the NATS header
//!   `Imagezmq-Header`; `Nats-Msg-Id` (node, boot, sequence) lets JetStream
//!   drop a repeat that a node sent to two hubs.
//! - [`Consumer`] (`--from-nats`): a durable pull consumer shared by every
//!   dispatcher, which fetches only while its dispatch queue has room, feeds
//!   the local workers, and acknowledges each message to JetStream once a
//!   worker replied. A dispatcher that dies leaves its messages
//!   unacknowledged, and JetStream redelivers them to another after
//!   `nats_ack_wait`: every image is processed at least once.
//!
//! Credentials and TLS come from the config file (`nats_credentials`,
//! `nats_tls_*`), never from the command line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer, stream, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use log::{debug, info, warn};
use tokio::sync::{mpsc, Semaphore};

use super::config::HubConfig;
use super::dispatch::{DispatchQueue, Outcome, Work};
use super::frontend::Replies;
use super::inspect::Incoming;
use super::status::{bump, HubStatus};
use super::store::Forward;

/// The NATS header that carries the imagezmq JSON header.
const HEADER: &str = "Imagezmq-Header";

/// Images published and not yet acknowledged by JetStream, at most.
const IN_FLIGHT: usize = 256;

/// A role's thread and how to end it.
pub(crate) struct Nats {
    thread: Option<JoinHandle<()>>,
    done: Arc<AtomicBool>,
}

impl Nats {
    /// Lets the thread finish what it has (the producer's acknowledgements,
    /// the consumer's last acks to JetStream) and waits for it.
    pub fn finish(mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Connects to the servers, with the config's credentials and TLS.
async fn connect(config: &HubConfig, urls: &[String]) -> Result<async_nats::Client> {
    let mut options = match &config.nats_credentials {
        Some(path) => async_nats::ConnectOptions::with_credentials_file(path)
            .await
            .with_context(|| format!("cannot read [hub] nats_credentials = {}", path.display()))?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &config.nats_tls_ca {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&config.nats_tls_cert, &config.nats_tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let addresses: Vec<async_nats::ServerAddr> =
        urls.iter().map(|u| u.parse().map_err(|e| anyhow!("NATS server {u:?}: {e}"))).collect::<Result<_>>()?;
    options
        .connection_timeout(Duration::from_secs(5))
        .name("camnode hub")
        .connect(addresses)
        .await
        .with_context(|| format!("cannot reach NATS at {}: is nats-server running there, with JetStream on (-js)?", urls.join(", ")))
}

/// The stream: as it is, or created with work-queue retention.
async fn stream(js: &jetstream::Context, config: &HubConfig) -> Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: config.nats_stream.clone(),
        subjects: vec!["camnode.>".into()],
        retention: stream::RetentionPolicy::WorkQueue,
        discard: stream::DiscardPolicy::New,
        max_bytes: (config.nats_max_mb as i64) << 20,
        num_replicas: config.nats_replicas,
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .with_context(|| format!("cannot create or find the JetStream stream {:?} ([hub] nats_stream)", config.nats_stream))
}

/// How long a hub waits at start for JetStream to take its stream.
const JETSTREAM_START: Duration = Duration::from_secs(30);

/// Connects and finds the stream at start, so an unreachable server fails the start.
fn open(config: &HubConfig, urls: &[String]) -> Result<(tokio::runtime::Runtime, jetstream::Context, stream::Stream)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the NATS runtime")?;
    let (js, stream) = runtime.block_on(async {
        let client = connect(config, urls).await?;
        let js = jetstream::new(client);
        // A cluster that has just started (or lost a server) answers
        // JetStream requests only once it has elected its leaders.
        let mut waited = Duration::ZERO;
        let stream = loop {
            match stream(&js, config).await {
                Ok(stream) => break stream,
                Err(e) if waited < JETSTREAM_START => {
                    info!("JetStream is not ready ({:#}); trying again", e);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    waited += Duration::from_secs(1);
                }
                Err(e) => return Err(e),
            }
        };
        Ok::<_, anyhow::Error>((js, stream))
    })?;
    Ok((runtime, js, stream))
}

/// `camnode.NODE.VIEW`, each token made safe for a subject.
fn subject(incoming: &Incoming) -> String {
    format!("camnode.{}.{}", token(&incoming.node), token(incoming.view.as_deref().unwrap_or("_")))
}

fn token(text: &str) -> String {
    let token: String = text.chars().take(64).map(|c| if c.is_whitespace() || c.is_control() || ".*>".contains(c) { '_' } else { c }).collect();
    if token.is_empty() {
        "_".into()
    } else {
        token
    }
}

/// An image for JetStream, with whom to answer.
struct Outgoing {
    subject: String,
    headers: async_nats::HeaderMap,
    payload: Bytes,
    reply_to: Option<Bytes>,
}

/// `--nats`: the store's way into JetStream.
pub(crate) struct Producer {
    tx: mpsc::Sender<Outgoing>,
}

impl Producer {
    /// Connects, finds or creates the stream, and starts publishing.
    pub fn start(config: &HubConfig, replies: Replies, status: Arc<HubStatus>) -> Result<(Producer, Nats)> {
        let (runtime, js, _stream) = open(config, &config.nats)?;
        info!("JetStream: images go to stream {} at {}", config.nats_stream, config.nats.join(", "));
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let done = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new().name("nats-out".into()).spawn(move || runtime.block_on(publish(js, rx, replies, status)))?;
        Ok((Producer { tx }, Nats { thread: Some(thread), done }))
    }
}

impl Forward for Producer {
    fn forward(&self, incoming: &Incoming, reply_to: Option<Bytes>, _stop: &AtomicBool) -> bool {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER, header_text(&incoming.raw_header));
        if let Some((node, boot, seq, msg)) = incoming.id() {
            headers.insert("Nats-Msg-Id", format!("{}:{boot}:{seq}:{:08x}", token(&node), crc32fast::hash(msg.as_bytes())));
        }
        let outgoing = Outgoing { subject: subject(incoming), headers, payload: incoming.payload.clone(), reply_to };
        // Waits while IN_FLIGHT images wait for JetStream: the store's backpressure.
        self.tx.blocking_send(outgoing).is_ok()
    }
}

/// The imagezmq header as one line of text, as NATS headers must be.
fn header_text(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    if !text.contains(['\r', '\n']) {
        return text.into_owned();
    }
    serde_json::from_slice::<serde_json::Value>(raw).map(|v| v.to_string()).unwrap_or_else(|_| text.replace(['\r', '\n'], " "))
}

/// Publishes in order, and answers each node when its ack comes.
async fn publish(js: jetstream::Context, mut rx: mpsc::Receiver<Outgoing>, replies: Replies, status: Arc<HubStatus>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(out) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
        let sent = js.publish_with_headers(out.subject, out.headers, out.payload).await;
        let (replies, status) = (replies.clone(), status.clone());
        tokio::spawn(async move {
            let acked = match sent {
                Ok(ack) => ack.await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(_) => {
                    bump(&status.nats_acked);
                    replies.send(out.reply_to, true);
                }
                Err(e) => {
                    bump(&status.nats_failed);
                    warn!("JetStream did not take an image ({e}); its node will send it again");
                    replies.send(out.reply_to, false);
                }
            }
            drop(permit);
        });
    }
    // The store is done: wait for the last acknowledgements before the replies close.
    let _ = in_flight.acquire_many(IN_FLIGHT as u32).await;
}

/// `--from-nats`: a durable consumer feeding the local workers.
pub(crate) struct Consumer;

impl Consumer {
    pub fn start(config: &HubConfig, queue: Arc<DispatchQueue>, status: Arc<HubStatus>, stop: Arc<AtomicBool>) -> Result<Nats> {
        let (runtime, _js, stream) = open(config, &config.from_nats)?;
        let consumer = runtime
            .block_on(stream.get_or_create_consumer(
                &config.nats_consumer,
                consumer::pull::Config {
                    durable_name: Some(config.nats_consumer.clone()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs_f64(config.nats_ack_wait),
                    max_ack_pending: 4096,
                    ..Default::default()
                },
            ))
            .with_context(|| format!("cannot create or find the JetStream consumer {:?} ([hub] nats_consumer)", config.nats_consumer))?;
        info!("JetStream: taking images from stream {} as {} at {}", config.nats_stream, config.nats_consumer, config.from_nats.join(", "));
        let done = Arc::new(AtomicBool::new(false));
        let finished = done.clone();
        let thread = std::thread::Builder::new()
            .name("nats-in".into())
            .spawn(move || runtime.block_on(consume(consumer, queue, status, stop, finished)))?;
        Ok(Nats { thread: Some(thread), done })
    }
}

/// Messages fetched at a time, and how long the server may hold a fetch open.
const BATCH: usize = 16;
const FETCH_EXPIRY: Duration = Duration::from_millis(500);

/// Room the queue must have before a fetch: a batch of large images.
const FETCH_ROOM: usize = 4 << 20;

async fn consume(consumer: consumer::PullConsumer, queue: Arc<DispatchQueue>, status: Arc<HubStatus>, stop: Arc<AtomicBool>, done: Arc<AtomicBool>) {
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(jetstream::Message, Outcome)>();
    // Acknowledgements to JetStream, as workers answer.
    let acks = {
        let status = status.clone();
        tokio::spawn(async move {
            while let Some((message, outcome)) = ack_rx.recv().await {
                let kind = if outcome == Outcome::Processed { AckKind::Ack } else { AckKind::Term };
                match message.ack_with(kind).await {
                    Ok(()) => bump(&status.nats_done),
                    Err(e) => debug!("an acknowledgement to JetStream was lost ({e}); it will redeliver the image"),
                }
            }
        })
    };
    let mut intake = true;
    while intake && !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
        if !queue.has_room(FETCH_ROOM) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let batch = consumer.fetch().max_messages(BATCH).expires(FETCH_EXPIRY).messages().await;
        let mut batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                debug!("fetch from JetStream failed: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        loop {
            // A pull request can go unanswered (sent while the consumer's
            // leader changes, or to a server that then died): ask again.
            let message = match tokio::time::timeout(FETCH_EXPIRY * 4, batch.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => {
                    debug!("a fetch from JetStream failed: {e}");
                    continue;
                }
                Ok(None) => break,
                Err(_) => {
                    debug!("a fetch from JetStream went unanswered; asking again");
                    break;
                }
            };
            bump(&status.nats_consumed);
            let header = message.headers.as_ref().and_then(|h| h.get(HEADER)).map(|v| v.as_str().to_string()).unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&header).ok().and_then(|v| v["msg"].as_str().map(str::to_string)).unwrap_or_default();
            let payload = message.payload.clone();
            let ack = ack_tx.clone();
            let work = Work {
                header: Bytes::from(header),
                payload,
                msg,
                failures: 0,
                done: Some(Box::new(move |outcome| {
                    let _ = ack.send((message, outcome));
                })),
            };
            if queue.push(work, &stop).is_err() {
                // Closed: the hub is finishing; JetStream redelivers what was fetched and not handed on.
                intake = false;
                break;
            }
        }
    }
    drop(ack_tx);
    // Wait for the workers' last answers: `done` comes after the pool finished.
    while !done.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = acks.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_safe_tokens_and_headers_one_line() {
        assert_eq!(token("garage"), "garage");
        assert_eq!(token("a.b *>\n"), "a_b____");
        assert_eq!(token(""), "_");
        assert_eq!(header_text(b"{\"msg\": \"a b|jpg\"}"), "{\"msg\": \"a b|jpg\"}");
        assert_eq!(header_text(b"{\n  \"msg\": \"a b|jpg\"\n}"), "{\"msg\":\"a b|jpg\"}");
    }
}
