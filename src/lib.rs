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
//! - [`pipeline`]: the main loop that joins the stages, decides which frames
//!   are encoded, and keeps pre-event frames.
//! - [`encode`]: JPEG from YUV planes with libjpeg-turbo, or BGR arrays.
//! - [`transport`]: the imagezmq wire format and the sender thread (REQ with
//!   reply timeouts and reconnects, or PUB), and CURVE encryption and
//!   authentication of its links (`[security]`).
//! - [`hub`]: the receiving side, `camnode hub`.
//! - [`gpio`]: the status LED and the trigger input (a button or PIR sensor),
//!   behind a small hardware trait with an rppal backend and a fake one.
//!
//! Around them: [`config`] (one struct, a section per stage), [`status`]
//! (shared health for LEDs and watchdogs), [`systemd`] (readiness and
//! watchdog keep-alives), [`stats`] (counters and timings), and [`cli`] (the thin command-line layer over all of it).

pub mod capture;
pub mod cli;
pub mod config;
pub mod encode;
pub mod flip;
pub mod frame;
pub mod gpio;
pub mod hub;
pub mod motion;
pub mod pipeline;
pub mod queue;
pub mod stats;
pub mod status;
pub mod systemd;
pub mod transport;
