//! The fleet as the hub sees it: every node, its views, their latest image,
//! motion state and score over time, each node's health from its
//! heartbeats, and a fleet-wide timeline of events. [`Fleet`] is a hub
//! [`Observer`]: on each accepted message it updates this picture under a
//! short lock and returns (the payload is shared, never copied), then bumps
//! a generation counter that readers wait on. The console, `/metrics` and
//! MQTT only read it, on their own threads, when they are ready to, so a
//! slow browser or broker skips states rather than holding ingest back.
//!
//! Everything kept is bounded: the latest image per view, a ring of events
//! ([`TIMELINE`]), score points at most one per second per view for ten
//! minutes, and at most [`MAX_NODES`] nodes of [`MAX_VIEWS`] views (more are
//! not shown, and logged once).
//!
//! A node is *stale* when it has been silent for three of its heartbeat
//! periods (it says its period in each heartbeat, [`crate::health`]), or
//! for 90 s when it never said.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;

use crate::frame::unix_now;
use crate::health::Health;
use crate::hub::{Accepted, Kind, Observer};

/// Events the fleet-wide timeline keeps.
pub const TIMELINE: usize = 2000;
/// Nodes and views per node shown; more are ignored (a misconfigured or hostile sender).
pub const MAX_NODES: usize = 1000;
pub const MAX_VIEWS: usize = 32;
/// Score points kept per view: one per second, ten minutes.
const SCORE_POINTS: usize = 600;
/// The image rate of a view is counted over this many seconds.
const RATE_WINDOW: f64 = 5.0;
/// Silence after which a node that never said its heartbeat period is stale.
const DEFAULT_STALE_S: f64 = 90.0;

/// An image as a node sent it.
#[derive(Clone, Debug)]
pub struct Picture {
    pub payload: Bytes,
    /// `None` for a JPEG; the size of a raw BGR array otherwise.
    pub bgr: Option<(usize, usize)>,
    /// When the hub accepted it, Unix seconds.
    pub received: f64,
}

impl Picture {
    /// The picture as a JPEG: as sent, or a raw array encoded now (call it
    /// off the ingest path; it takes milliseconds).
    pub fn jpeg(&self) -> Result<Bytes> {
        let Some((width, height)) = self.bgr else { return Ok(self.payload.clone()) };
        let image = turbojpeg::Image { pixels: &self.payload[..], width, pitch: width * 3, height, format: turbojpeg::PixelFormat::BGR };
        let jpeg = turbojpeg::compress(image, 80, turbojpeg::Subsamp::Sub2x2).context("cannot encode a raw image as JPEG")?;
        Ok(Bytes::copy_from_slice(&jpeg))
    }

    /// Width and height, from the array's shape or the JPEG's header.
    fn size(&self) -> Option<(usize, usize)> {
        self.bgr.or_else(|| turbojpeg::read_header(&self.payload).ok().map(|h| (h.width, h.height)))
    }
}

/// One entry of the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Rising from 1 with each event this hub saw.
    pub id: u64,
    /// When the hub accepted it, Unix seconds.
    pub time: f64,
    pub node: String,
    pub view: Option<String>,
    /// `moving`, `still` (motion), `pressed`, `armed`, `disarmed` (trigger) or `restart`.
    pub what: String,
    pub score: Option<f32>,
    /// The event's image in the store, relative to it: the highest-scored
    /// image of the view while the event lasted.
    pub image: Option<String>,
}

/// A view (camera) of a node, as the console shows it on a tile.
#[derive(Clone, Debug, Serialize)]
pub struct ViewSummary {
    pub view: String,
    /// Images received; it names the latest one, which changes when this does.
    pub images: u64,
    pub bytes: u64,
    pub last_image: Option<f64>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Images per second over the last few seconds.
    pub rate: f64,
    pub moving: bool,
    pub score: Option<f32>,
    /// Motion events started, and trigger events.
    pub events: u64,
    pub triggers: u64,
    /// Trigger mode "arm": whether motion is armed, once the node said.
    pub armed: Option<bool>,
}

/// A node, as the console's grid and `/metrics` show it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub first_seen: f64,
    pub last_seen: f64,
    pub stale: bool,
    /// Seconds of silence after which the node is stale.
    pub stale_after: f64,
    pub health: Option<Health>,
    /// When the last heartbeat with health came.
    pub health_at: Option<f64>,
    /// The host it last said it restarted on.
    pub host: Option<String>,
    pub messages: u64,
    pub heartbeats: u64,
    pub restarts: u64,
    pub views: Vec<ViewSummary>,
}

/// Everything at one moment, with the events after the one a reader saw last.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The hub's clock, Unix seconds: ages are measured against it.
    pub now: f64,
    pub nodes: Vec<NodeSummary>,
    pub events: Vec<Event>,
}

/// A node in depth, for its page.
#[derive(Clone, Debug, Serialize)]
pub struct NodeDetail {
    pub now: f64,
    pub node: NodeSummary,
    /// Per view: `[time, highest score in that second]`, oldest first.
    pub scores: BTreeMap<String, Vec<(f64, f32)>>,
    /// Its latest events, newest first.
    pub events: Vec<Event>,
}

#[derive(Default)]
struct Tile {
    latest: Option<Picture>,
    images: u64,
    bytes: u64,
    arrivals: VecDeque<f64>,
    moving: bool,
    score: Option<f32>,
    scores: VecDeque<(f64, f32)>,
    events: u64,
    triggers: u64,
    armed: Option<bool>,
    /// The motion event in progress: its id and the best score of its images so far.
    open_event: Option<(u64, Option<f32>)>,
    /// The image of the latest motion event, and how often it changed.
    event_picture: Option<Picture>,
    event_pictures: u64,
}

struct NodeState {
    first_seen: f64,
    last_seen: f64,
    health: Option<Health>,
    health_at: Option<f64>,
    host: Option<String>,
    messages: u64,
    heartbeats: u64,
    restarts: u64,
    views: BTreeMap<String, Tile>,
}

#[derive(Default)]
struct State {
    nodes: BTreeMap<String, NodeState>,
    timeline: VecDeque<Event>,
    last_event: u64,
}

/// The fleet's picture, shared by the hub (which writes) and its readers.
pub struct Fleet {
    state: Mutex<State>,
    /// Where the hub stores images, for the store-relative paths of event images.
    store: Option<PathBuf>,
    /// Bumped after every change; readers wait on it.
    changes: watch::Sender<u64>,
    /// A sender past [`MAX_NODES`] or [`MAX_VIEWS`] was logged.
    over_limit_logged: AtomicBool,
}

impl Fleet {
    /// `store`: the hub's `--save` directory, if it stores images.
    pub fn new(store: Option<PathBuf>) -> Fleet {
        Fleet { state: Mutex::default(), store, changes: watch::channel(0).0, over_limit_logged: AtomicBool::new(false) }
    }

    /// Where event images are, relative to which [`Event::image`] is given.
    pub fn store(&self) -> Option<&Path> {
        self.store.as_deref()
    }

    /// A receiver whose value changes after every change to the fleet.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every node, and the events after `after` (the newest `limit` of them).
    pub fn snapshot(&self, after: u64, limit: usize) -> Snapshot {
        let now = unix_now();
        let state = self.lock();
        let nodes = state.nodes.iter().map(|(name, node)| node.summary(name, now)).collect();
        let mut events: Vec<Event> = state.timeline.iter().rev().take_while(|e| e.id > after).take(limit).cloned().collect();
        events.reverse();
        Snapshot { now, nodes, events }
    }

    /// One node in depth, or `None` if the hub never heard of it.
    pub fn node(&self, name: &str, events: usize) -> Option<NodeDetail> {
        let now = unix_now();
        let state = self.lock();
        let node = state.nodes.get(name)?;
        Some(NodeDetail {
            now,
            node: node.summary(name, now),
            scores: node.views.iter().map(|(view, tile)| (view.clone(), tile.scores.iter().copied().collect())).collect(),
            events: state.timeline.iter().rev().filter(|e| e.node == name).take(events).cloned().collect(),
        })
    }

    /// The latest image of a view.
    pub fn latest(&self, node: &str, view: &str) -> Option<Picture> {
        self.lock().nodes.get(node)?.views.get(view)?.latest.clone()
    }

    /// The image of a view's latest motion event, with a number that
    /// changes whenever it does.
    pub fn event_picture(&self, node: &str, view: &str) -> Option<(u64, Picture)> {
        let state = self.lock();
        let tile = state.nodes.get(node)?.views.get(view)?;
        Some((tile.event_pictures, tile.event_picture.clone()?))
    }

    /// The id of the newest event.
    pub fn last_event(&self) -> u64 {
        self.lock().last_event
    }

    fn note_over_limit(&self, what: &str) {
        if !self.over_limit_logged.swap(true, Ordering::Relaxed) {
            log::warn!("the console shows at most {MAX_NODES} nodes of {MAX_VIEWS} views each: {what} is left out (logged once)");
        }
    }

    fn relative(&self, stored: &Path) -> Option<String> {
        let relative = stored.strip_prefix(self.store.as_ref()?).ok()?;
        relative.to_str().map(str::to_string)
    }
}

impl Observer for Fleet {
    fn accepted(&self, message: &Accepted) {
        // Parsed before the lock: heartbeats are rare, and this is their only cost.
        let health = match message.kind {
            Kind::Heartbeat => Health::from_header(&message.raw_header),
            _ => None,
        };
        let image = message.stored.as_deref().and_then(|p| self.relative(p));
        {
            let mut state = self.lock();
            if !state.nodes.contains_key(&message.node) && state.nodes.len() >= MAX_NODES {
                drop(state);
                self.note_over_limit(&format!("node {:?}", message.node));
                return;
            }
            let now = message.received;
            let node = state.nodes.entry(message.node.clone()).or_insert_with(|| NodeState::new(now));
            node.last_seen = now;
            node.messages += 1;
            let event = match message.kind {
                Kind::Heartbeat => {
                    node.heartbeats += 1;
                    if health.is_some() {
                        (node.health, node.health_at) = (health, Some(now));
                    }
                    None
                }
                Kind::Text => node.text(&message.header.msg, now),
                Kind::Jpeg | Kind::Array | Kind::Event => {
                    let view = message.view.as_deref().unwrap_or("");
                    if !node.views.contains_key(view) && node.views.len() >= MAX_VIEWS {
                        drop(state);
                        self.note_over_limit(&format!("view {view:?} of node {:?}", message.node));
                        return;
                    }
                    let tile = node.views.entry(view.to_string()).or_default();
                    match message.kind {
                        Kind::Event => tile.event(message),
                        _ => {
                            let best = tile.image(message);
                            if let (Some(id), true) = (tile.open_event.map(|(id, _)| id), best) {
                                state.set_event_image(id, image);
                            }
                            None
                        }
                    }
                }
            };
            if let Some(mut event) = event {
                state.last_event += 1;
                event.id = state.last_event;
                if let (Some(view), "moving") = (&event.view, event.what.as_str()) {
                    if let Some(tile) = state.nodes.get_mut(&event.node).and_then(|n| n.views.get_mut(view)) {
                        tile.open_event = Some((event.id, None));
                    }
                }
                if state.timeline.len() == TIMELINE {
                    state.timeline.pop_front();
                }
                state.timeline.push_back(event);
            }
        }
        self.changes.send_modify(|generation| *generation += 1);
    }
}

impl State {
    fn set_event_image(&mut self, id: u64, image: Option<String>) {
        let Some(front) = self.timeline.front().map(|e| e.id) else { return };
        if let Some(event) = id.checked_sub(front).and_then(|index| self.timeline.get_mut(index as usize)) {
            if image.is_some() {
                event.image = image;
            }
        }
    }
}

impl NodeState {
    fn new(now: f64) -> NodeState {
        NodeState {
            first_seen: now,
            last_seen: now,
            health: None,
            health_at: None,
            host: None,
            messages: 0,
            heartbeats: 0,
            restarts: 0,
            views: BTreeMap::new(),
        }
    }

    /// Node-wide texts: a restart (`NODE|Restart|HOST|...`) is an event.
    fn text(&mut self, msg: &str, now: f64) -> Option<Event> {
        let mut parts = msg.split('|');
        let node = parts.next()?;
        if parts.next()? != "Restart" {
            return None;
        }
        self.restarts += 1;
        self.host = parts.next().map(str::to_string);
        Some(Event { id: 0, time: now, node: node.to_string(), view: None, what: "restart".into(), score: None, image: None })
    }

    fn stale_after(&self) -> f64 {
        self.health.as_ref().and_then(|h| h.heartbeat_s).filter(|s| *s > 0.0).map_or(DEFAULT_STALE_S, |s| (3.0 * s).max(3.0))
    }

    fn summary(&self, name: &str, now: f64) -> NodeSummary {
        let stale_after = self.stale_after();
        NodeSummary {
            name: name.to_string(),
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            stale: now - self.last_seen > stale_after,
            stale_after,
            health: self.health.clone(),
            health_at: self.health_at,
            host: self.host.clone(),
            messages: self.messages,
            heartbeats: self.heartbeats,
            restarts: self.restarts,
            views: self.views.iter().map(|(view, tile)| tile.summary(view, now)).collect(),
        }
    }
}

impl Tile {
    /// Takes an image in; true if it is the best of the motion event in progress.
    fn image(&mut self, message: &Accepted) -> bool {
        let now = message.received;
        let bgr = match message.kind {
            Kind::Array => message.header.shape.as_deref().and_then(|s| match s {
                [height, width, 3] => Some((*width, *height)),
                _ => None,
            }),
            _ => None,
        };
        let picture = Picture { payload: message.payload.clone(), bgr, received: now };
        self.images += 1;
        self.bytes += message.payload.len() as u64;
        if self.arrivals.len() == 256 {
            self.arrivals.pop_front();
        }
        self.arrivals.push_back(now);
        let score = message.header.score;
        if let Some(score) = score {
            self.note_score(now, score);
        }
        let best = match &mut self.open_event {
            Some((_, best)) if score.is_some() && (best.is_none() || score > *best) => {
                *best = score;
                self.event_picture = Some(picture.clone());
                self.event_pictures += 1;
                true
            }
            _ => false,
        };
        self.latest = Some(picture);
        best
    }

    fn note_score(&mut self, now: f64, score: f32) {
        self.score = Some(score);
        let second = now.floor();
        match self.scores.back_mut() {
            Some((at, highest)) if *at == second => *highest = highest.max(score),
            _ => {
                if self.scores.len() == SCORE_POINTS {
                    self.scores.pop_front();
                }
                self.scores.push_back((second, score));
            }
        }
    }

    /// A motion or trigger event (`NODE VIEW|motion|moving`, `...|trigger|pressed`).
    fn event(&mut self, message: &Accepted) -> Option<Event> {
        let mut parts = message.header.msg.split('|').skip(1);
        let (family, what) = (parts.next()?, parts.next()?);
        match (family, what) {
            ("motion", "moving") => {
                self.moving = true;
                self.events += 1;
            }
            ("motion", "still") => {
                self.moving = false;
                self.open_event = None;
            }
            ("trigger", _) => {
                self.triggers += 1;
                match what {
                    "armed" => self.armed = Some(true),
                    "disarmed" => self.armed = Some(false),
                    _ => {}
                }
            }
            _ => return None,
        }
        if let Some(score) = message.header.score {
            self.note_score(message.received, score);
        }
        Some(Event {
            id: 0,
            time: message.received,
            node: message.node.clone(),
            view: message.view.clone(),
            what: what.to_string(),
            score: message.header.score,
            image: None,
        })
    }

    fn summary(&self, view: &str, now: f64) -> ViewSummary {
        let recent = self.arrivals.iter().rev().take_while(|t| now - **t <= RATE_WINDOW).count();
        let size = self.latest.as_ref().and_then(Picture::size);
        ViewSummary {
            view: view.to_string(),
            images: self.images,
            bytes: self.bytes,
            last_image: self.latest.as_ref().map(|p| p.received),
            width: size.map(|s| s.0),
            height: size.map(|s| s.1),
            rate: recent as f64 / RATE_WINDOW,
            moving: self.moving,
            score: self.score,
            events: self.events,
            triggers: self.triggers,
            armed: self.armed,
        }
    }
}

#[cfg(test)]
mod tests;
