//! The hub's console: one page at `/` that shows the fleet live (a tile per
//! node and view with its latest image, motion state, last seen and image
//! rate, stale nodes marked; a page per node with its health, its score
//! over time and its recent events with their images from the store; a
//! fleet-wide timeline), `/metrics` for Prometheus (`console/metrics.rs`), and the
//! JSON the page reads:
//!
//! | path | what |
//! | --- | --- |
//! | `/api/live` | server-sent events: the fleet ([`Snapshot`](crate::fleet::Snapshot)) on each change, at most [`PACE`] apart, and every [`IDLE`] anyway |
//! | `/api/fleet` | the same, once |
//! | `/api/node/NAME` | one node in depth |
//! | `/api/frame/NODE/VIEW` | the view's latest image, JPEG |
//! | `/store/PATH` | a JPEG the hub stored (`--save`), nothing else (`console/store.rs`) |
//!
//! Live without ever slowing ingest: the page is told a view has a new
//! image and fetches it when it has shown the last one, so each browser
//! takes images as fast as it can show them and no faster; a stream whose
//! browser does not read stops being polled (TCP pushes back), and the next
//! update it gets is the fleet as it is then. The hub never waits for any
//! of it ([`crate::fleet`]). The page's HTML, CSS and JavaScript are embedded
//! in the binary: no build step, no CDN, works on a fleet with no internet.
//!
//! Security (`console/auth.rs`): served on 127.0.0.1 unless told otherwise; any
//! other address needs a token, which browsers present once (a login form,
//! or `?token=` in a bookmark) and then as an HttpOnly cookie, and scrapers
//! as `Authorization: Bearer`.
//!
//! Crates: axum on hyper and tokio. hyper is the HTTP implementation most of
//! Rust's servers stand on, axum is its routing layer from the tokio
//! project, and server-sent events come with it; tokio is in the binary
//! anyway for the MQTT client (rumqttc). With HTTP/1.1 only and no default
//! features they add about 150 KB over a minimal synchronous server
//! (tiny_http), which would need a thread per open page and has no way to
//! flush a streamed response event by event.

pub mod config;
mod auth;
mod metrics;
mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::Stream;

pub use config::ConsoleConfig;

use crate::fleet::Fleet;
use crate::hub::HubStatus;
use crate::settings::read_secret;

/// Least time between two updates of a live page, and so between two
/// images of a tile: two a second keep a grid live, and halving it from four
/// took the cost of three open pages to a hub taking 100 images/s from 17 %
/// to 15 % more CPU per image (bench/console.py, docs/console.md).
pub const PACE: Duration = Duration::from_millis(500);
/// Most time between two updates: ages and staleness move on without news.
pub const IDLE: Duration = Duration::from_secs(2);
/// Timeline events a page gets when it opens.
const FIRST_EVENTS: usize = 100;
/// Events every update carries again.
const RESENT: u64 = 8;
/// Events on a node's page.
const NODE_EVENTS: usize = 60;

/// What every request handler shares.
struct App {
    fleet: Arc<Fleet>,
    hub: Arc<HubStatus>,
    token: Option<String>,
}

/// A console bound to its address, to be served on the services' runtime.
pub struct Console {
    listener: std::net::TcpListener,
    app: Arc<App>,
}

impl Console {
    /// Reads the token and binds now, so that a bad token file or a port in
    /// use stops the hub at start; `config` was checked.
    pub fn bind(config: &ConsoleConfig, fleet: Arc<Fleet>, hub: Arc<HubStatus>) -> Result<Option<Console>> {
        let Some(http) = &config.http else { return Ok(None) };
        let token = match &config.token_file {
            Some(path) => Some(auth::check_token(read_secret("[console] token_file", path)?, path)?),
            None => None,
        };
        let listener = std::net::TcpListener::bind(http.as_str())
            .with_context(|| format!("cannot serve the console on [console] http = {http:?}: is the port in use? choose another with --http HOST:PORT"))?;
        listener.set_nonblocking(true)?;
        Ok(Some(Console { listener, app: Arc::new(App { fleet, hub, token }) }))
    }

    /// Where it is served (with the port the system chose for port 0).
    pub fn address(&self) -> Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Serves until the runtime stops.
    pub async fn serve(self) {
        let address = self.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let listener = match tokio::net::TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(e) => return log::error!("the console cannot serve on {address}: {e}"),
        };
        if let Err(e) = axum::serve(listener, router(self.app)).await {
            log::error!("the console on {address} stopped: {e}");
        }
    }
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", include_str!("assets/index.html")) }))
        .route("/app.js", get(|| async { asset("text/javascript; charset=utf-8", include_str!("assets/app.js")) }))
        .route("/app.css", get(|| async { asset("text/css; charset=utf-8", include_str!("assets/app.css")) }))
        .route("/icon.svg", get(|| async { asset("image/svg+xml", include_str!("assets/icon.svg")) }))
        .route("/api/live", get(live))
        .route("/api/fleet", get(|State(app): State<Arc<App>>| async move { Json(app.fleet.snapshot(0, FIRST_EVENTS)) }))
        .route("/api/node/{name}", get(node))
        .route("/api/frame/{node}/{view}", get(frame))
        .route("/store/{*path}", get(store::serve))
        .route("/metrics", get(metrics::serve))
        .route("/login", post(auth::login))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::require_token))
        .with_state(app)
}

/// An embedded file. `no-cache`: a browser checks back, so a new hub
/// binary's page is never mixed with an old script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The fleet, pushed: now, with the latest [`FIRST_EVENTS`] events, then
/// after each change (no sooner than [`PACE`] after the last push, and no
/// later than [`IDLE`]) with the events since, and the last [`RESENT`] again:
/// an event's image is chosen while the event lasts.
async fn live(State(app): State<Arc<App>>) -> Sse<impl Stream<Item = Result<Event, axum::Error>>> {
    let changes = app.fleet.subscribe();
    let updates = futures_util::stream::unfold((app, changes, None), |(app, mut changes, newest): (Arc<App>, _, Option<u64>)| async move {
        if newest.is_some() {
            tokio::time::sleep(PACE).await;
            // Either a change or the idle time: both end in an update.
            let _ = tokio::time::timeout(IDLE - PACE, changes.changed()).await;
        }
        changes.borrow_and_update();
        let snapshot = match newest {
            Some(newest) => app.fleet.snapshot(newest.saturating_sub(RESENT), usize::MAX),
            None => app.fleet.snapshot(0, FIRST_EVENTS),
        };
        let newest = snapshot.events.last().map_or(newest.unwrap_or(0), |e| e.id);
        let event = Event::default().event("fleet").json_data(&snapshot);
        Some((event, (app, changes, Some(newest))))
    });
    Sse::new(updates)
}

async fn node(State(app): State<Arc<App>>, Path(name): Path<String>) -> Response {
    match app.fleet.node(&name, NODE_EVENTS) {
        Some(detail) => Json(detail).into_response(),
        None => (StatusCode::NOT_FOUND, "no such node").into_response(),
    }
}

async fn frame(State(app): State<Arc<App>>, Path((node, view)): Path<(String, String)>) -> Response {
    let Some(picture) = app.fleet.latest(&node, &view) else {
        return (StatusCode::NOT_FOUND, "no image from that view yet").into_response();
    };
    // A raw array is encoded here, off the runtime's thread; a JPEG is shared as it came.
    let jpeg = match picture.bgr {
        None => Ok(picture.payload),
        Some(_) => tokio::task::spawn_blocking(move || picture.jpeg()).await.unwrap_or_else(|e| Err(e.into())),
    };
    match jpeg {
        Ok(jpeg) => jpeg_response(jpeg, "no-store"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response(),
    }
}

fn jpeg_response(jpeg: bytes::Bytes, cache: &'static str) -> Response {
    let mut response = jpeg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/jpeg"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}
