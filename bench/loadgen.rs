//! A fleet of simulated cameras in one process, for `camnode hub`'s
//! benchmarks: N REQ sockets, each a node named `camNNN` sending one
//! pre-encoded JPEG over and over, with the headers camnode nodes send
//! (`{"msg": "camNNN Cam|jpg", "node", "boot", "seq", "ts"}`).
//!
//! Each camera captures at `--fps` (0: as fast as replies come). Like a REQ
//! node it has one request out at a time; a frame due while the previous one
//! waits for its reply is skipped, counted as offered and not acknowledged.
//! A reply that does not come within `--timeout` is given up (a new socket,
//! as camnode's sender does). With `--tag`, every JPEG carries a comment
//! segment "camNNN SEQ" after its SOI marker (still a valid JPEG), so a
//! worker can say which image it processed; `--acked FILE` lists the
//! acknowledged ones the same way, to check that every acknowledged image
//! was processed.
//!
//! ```text
//! cargo run --release --example loadgen -- --hub tcp://127.0.0.1:5555 --nodes 100 --fps 5 --seconds 20 \
//!     [--jpeg FILE] [--tag] [--acked FILE] [--json OUT]
//! ```
//! It prints (and with `--json` writes) offered, acknowledged, skipped,
//! timed out, refused (a reply other than OK), msg/s and reply latency
//! p50/p99/max in milliseconds.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The hub (or imagezmq ImageHub) to send to.
    #[arg(long)]
    hub: String,
    /// Simulated cameras, each a REQ socket of its own.
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    /// Frames per second per camera; 0 sends the next as soon as the reply comes.
    #[arg(long, default_value_t = 5.0)]
    fps: f64,
    /// How long to send.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// The JPEG to send (default: a 768x576 test card made here).
    #[arg(long)]
    jpeg: Option<PathBuf>,
    /// Put "camNNN SEQ" into each JPEG as a comment segment.
    #[arg(long)]
    tag: bool,
    /// Seconds to wait for a reply before giving the frame up.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Write the acknowledged frames here, one "camNNN SEQ" per line.
    #[arg(long)]
    acked: Option<PathBuf>,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// First camera number (so that two generators use different names).
    #[arg(long, default_value_t = 0)]
    first: usize,
}

struct Camera {
    name: String,
    socket: zmq::Socket,
    seq: u64,
    /// When the request out was sent, and its sequence number.
    waiting: Option<(Instant, u64)>,
    next_due: Instant,
    header: Vec<u8>,
    payload: Vec<u8>,
}

#[derive(Default, serde::Serialize)]
struct Figures {
    nodes: usize,
    fps: f64,
    seconds: f64,
    offered: u64,
    acked: u64,
    skipped: u64,
    timed_out: u64,
    refused: u64,
    msg_per_s: f64,
    ack_ratio: f64,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    latency_ms_max: f64,
    jpeg_bytes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let jpeg = match &args.jpeg {
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read --jpeg {}", path.display()))?,
        None => test_card()?,
    };
    let context = zmq::Context::new();
    let boot = (camnode::frame::unix_now() * 1e6) as u64;
    let start = Instant::now();
    let period = if args.fps > 0.0 { Duration::from_secs_f64(1.0 / args.fps) } else { Duration::ZERO };
    let mut cameras = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let socket = connect(&context, &args.hub)?;
        // Spread the cameras over one period, as independent cameras are.
        let offset = period.mul_f64(i as f64 / args.nodes as f64);
        cameras.push(Camera { name: format!("cam{:03}", args.first + i), socket, seq: 0, waiting: None, next_due: start + offset, header: Vec::new(), payload: Vec::new() });
    }
    let end = start + Duration::from_secs_f64(args.seconds);
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut figures = Figures { nodes: args.nodes, fps: args.fps, seconds: args.seconds, jpeg_bytes: jpeg.len(), ..Figures::default() };
    let mut latencies: Vec<f64> = Vec::new();
    let mut acked_out = match &args.acked {
        Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
        None => None,
    };
    loop {
        let now = Instant::now();
        let sending = now < end;
        for camera in &mut cameras {
            if sending && now >= camera.next_due {
                figures.offered += 1;
                if camera.waiting.is_some() {
                    figures.skipped += 1;
                } else {
                    camera.seq += 1;
                    build(camera, &jpeg, boot, args.tag);
                    camera.socket.send(&camera.header[..], zmq::SNDMORE)?;
                    camera.socket.send(&camera.payload[..], 0)?;
                    camera.waiting = Some((now, camera.seq));
                }
                camera.next_due = if period.is_zero() { now } else { (camera.next_due + period).max(now - period) };
            }
            if let Some((sent, _)) = camera.waiting {
                if now - sent >= timeout {
                    figures.timed_out += 1;
                    camera.waiting = None;
                    camera.socket = connect(&context, &args.hub)?;
                }
            }
        }
        let waiting = cameras.iter().filter(|c| c.waiting.is_some()).count();
        if !sending && waiting == 0 {
            break;
        }
        let next = if sending { cameras.iter().map(|c| c.next_due).min().unwrap_or(end).min(end) } else { now + Duration::from_millis(50) };
        let wait_ms = next.saturating_duration_since(Instant::now()).as_millis() as i64;
        let mut items: Vec<zmq::PollItem> = cameras.iter().map(|c| c.socket.as_poll_item(if c.waiting.is_some() { zmq::POLLIN } else { zmq::PollEvents::empty() })).collect();
        zmq::poll(&mut items, wait_ms.clamp(0, 50))?;
        let ready: Vec<bool> = items.iter().map(|i| i.is_readable()).collect();
        drop(items);
        for (camera, ready) in cameras.iter_mut().zip(ready) {
            if !ready {
                continue;
            }
            let reply = camera.socket.recv_bytes(0)?;
            let Some((sent, seq)) = camera.waiting.take() else { continue };
            if reply == b"OK" {
                figures.acked += 1;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                if let Some(out) = &mut acked_out {
                    writeln!(out, "{} {seq}", camera.name)?;
                }
            } else {
                figures.refused += 1;
            }
        }
    }
    if let Some(mut out) = acked_out {
        out.flush()?;
    }
    let wall = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| if latencies.is_empty() { 0.0 } else { latencies[((latencies.len() - 1) as f64 * p / 100.0).round() as usize] };
    figures.msg_per_s = figures.acked as f64 / wall.min(args.seconds.max(0.001)).max(0.001);
    figures.ack_ratio = if figures.offered > 0 { figures.acked as f64 / figures.offered as f64 } else { 0.0 };
    figures.latency_ms_p50 = percentile(50.0);
    figures.latency_ms_p99 = percentile(99.0);
    figures.latency_ms_max = latencies.last().copied().unwrap_or(0.0);
    let text = serde_json::to_string_pretty(&figures)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, text + "\n")?;
    }
    Ok(())
}

fn connect(context: &zmq::Context, hub: &str) -> Result<zmq::Socket> {
    let socket = context.socket(zmq::REQ)?;
    socket.set_linger(0)?;
    socket.connect(hub).with_context(|| format!("cannot connect to {hub}"))?;
    Ok(socket)
}

/// Writes the camera's next header and payload into its buffers.
fn build(camera: &mut Camera, jpeg: &[u8], boot: u64, tag: bool) {
    let ts = camnode::frame::unix_now();
    camera.header.clear();
    let name = &camera.name;
    write!(camera.header, r#"{{"msg": "{name} Cam|jpg", "node": "{name}", "boot": {boot}, "seq": {}, "ts": {ts:.6}}}"#, camera.seq).unwrap();
    camera.payload.clear();
    if tag {
        let text = format!("{name} {}", camera.seq);
        camera.payload.extend_from_slice(&jpeg[..2]);
        camera.payload.extend_from_slice(&[0xFF, 0xFE]);
        camera.payload.extend_from_slice(&((text.len() + 2) as u16).to_be_bytes());
        camera.payload.extend_from_slice(text.as_bytes());
        camera.payload.extend_from_slice(&jpeg[2..]);
    } else {
        camera.payload.extend_from_slice(jpeg);
    }
}

/// A 768x576 JPEG of the synthetic scene, for runs without footage.
fn test_card() -> Result<Vec<u8>> {
    use camnode::capture::FrameSource;
    let mut scene = camnode::capture::Synthetic::new(768, 576, 1);
    let frame = scene.next_frame()?.context("the synthetic scene gave no frame")?;
    let mut out = Vec::new();
    camnode::encode::Encoder::new(camnode::encode::Format::Jpg, 90)?.encode(&frame, &mut out)?;
    Ok(out)
}
