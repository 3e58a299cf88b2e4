//! camnode: a lean camera node that speaks imagezmq.
//!
//! # Layout
//!
//! One frame's path, in the order it runs:
//!
//! - [`capture`]: frame sources (synthetic scene, Y4M, a folder of JPEGs, raw
//!   I420 from a pipe, libcamera). Each yields borrowed YUV 4:2:0 [`frame::Frame`]s.
//! - [`flip`]: software flip, for sources whose hardware cannot.
//! - [`motion`]: the detector on a downscaled luma grid, with event hysteresis.
//! - [`encode`]: JPEG from YUV planes with libjpeg-turbo, or BGR arrays.
//! - [`transport`]: the imagezmq wire format and the sender thread (REQ with
//!   reply timeouts and reconnects, or PUB), and CURVE encryption and
//!   authentication of its links (`[security]`).
//! - [`gpio`]: the status LED and the trigger input (a button or PIR sensor),
//!   behind a small hardware trait with an rppal backend and a fake one.
//!
//! Each stage owns its config section, its types and its checks, and imports
//! no layer above it. Above the stages:
//!
//! - [`config`]: assembles the sections into one [`config::Config`] and reads
//!   the file; [`settings`] is what every section uses to check itself.
//! - [`pipeline`]: the node's main loop that joins the stages, decides which
//!   frames are encoded, and keeps pre-event frames; [`control`] carries what
//!   reaches it from outside the camera (signals, the trigger).
//! - [`hub`]: the receiving side, `camnode hub`: the broker between many
//!   nodes and the programs that use their images (a store, a pool of
//!   imagezmq workers, subscribers, JetStream); its `mod.rs` follows one
//!   message through it. It shows every message it accepts to its
//!   observers. One is [`fleet`]: each node and view as the hub sees it
//!   (latest image, motion, health from heartbeats, staleness, an events
//!   timeline). It is read by [`console`] (the page at `/`, its JSON API and
//!   `/metrics`) and [`mqtt`] (Home Assistant discovery and events), which
//!   [`services`] runs on a thread of their own.
//! - [`doctor`]: `camnode doctor`, a checklist of what a node needs where it runs.
//! - [`cli`]: the thin command-line layer over all of it.
//!
//! Shared by all: [`frame`] (frame buffers), [`queue`] (allocation-free
//! hand-over between threads), [`status`] (health for LEDs and watchdogs),
//! [`health`] (what a node reports in its heartbeats, and the hub reads),
//! [`systemd`] (readiness and watchdog keep-alives) and [`stats`] (counters
//! and timings).

pub mod capture;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod doctor;
pub mod encode;
pub mod fleet;
pub mod flip;
pub mod frame;
pub mod gpio;
pub mod health;
pub mod hub;
pub mod motion;
pub mod mqtt;
pub mod pipeline;
pub mod queue;
pub mod services;
pub mod settings;
pub mod stats;
pub mod status;
pub mod systemd;
pub mod transport;
