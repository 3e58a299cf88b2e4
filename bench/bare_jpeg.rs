//! The limit camnode is measured against: libjpeg-turbo encoding the I420
//! frames of a Y4M file at a given quality, and nothing else.
//!
//! Each frame is read, then compressed straight from its planes into a
//! preallocated buffer, with the same library build and settings camnode
//! uses (4:2:0, no RGB step) but without camnode in the way. The compress
//! call is timed (wall clock and this thread's CPU clock) after `--warmup`
//! untimed frames; so, apart, is reading the frame with camnode's own Y4M
//! reader (which maps the file: reading is the page faults), which is what
//! camnode pays on top for a file source and not for a camera. Every JPEG is decoded again, untimed, and must come back at the
//! frame's size and content, so a broken encode cannot look fast.
//!
//! ```text
//! cargo run --release --example bare_jpeg -- FRAMES.y4m [--quality 90] [--warmup 10] [--json OUT]
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use camnode::capture::{FrameSource, Y4mReader};
use camnode::frame::Frame;
use turbojpeg::{Compressor, Decompressor, Image, PixelFormat, Subsamp, YuvPlanesImage};

struct Args {
    y4m: PathBuf,
    quality: u8,
    warmup: u64,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args { y4m: PathBuf::new(), quality: 90, warmup: 10, json: None };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| rest.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quality" => args.quality = value("--quality")?.parse().context("--quality takes 1..100")?,
            "--warmup" => args.warmup = value("--warmup")?.parse().context("--warmup takes a frame count")?,
            "--json" => args.json = Some(value("--json")?.into()),
            flag if flag.starts_with("--") => bail!("unknown option {flag}: use FRAMES.y4m [--quality Q] [--warmup N] [--json OUT]"),
            path => args.y4m = path.into(),
        }
    }
    ensure!(!args.y4m.as_os_str().is_empty(), "give a Y4M file: bare_jpeg FRAMES.y4m [--quality Q] [--warmup N] [--json OUT]");
    ensure!((1..=100).contains(&args.quality), "--quality {} must be 1..100", args.quality);
    Ok(args)
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; the clock id is valid on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Decodes `jpeg` and compares its luma with the frame's: the size must
/// match and the pixels differ by little, as they do at any sane quality.
fn check(decompressor: &mut Decompressor, jpeg: &[u8], frame: &Frame, gray: &mut [u8]) -> Result<()> {
    let (width, height) = (frame.width, frame.height);
    let header = decompressor.read_header(jpeg).context("the JPEG header does not parse")?;
    ensure!((header.width, header.height) == (width, height), "decodes to {}x{}, not {width}x{height}", header.width, header.height);
    let image = Image { pixels: &mut gray[..], width, pitch: width, height, format: PixelFormat::GRAY };
    decompressor.decompress(jpeg, image).context("the JPEG does not decode")?;
    let error: u64 = (0..height)
        .flat_map(|y| frame.y.row(y, width).iter().zip(&gray[y * width..(y + 1) * width]))
        .map(|(a, b)| a.abs_diff(*b) as u64)
        .sum();
    let mean = error as f64 / (width * height) as f64;
    ensure!(mean < 4.0, "decoded luma is off by {mean:.1} on average");
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let mut source = Y4mReader::open(&args.y4m)?;
    let (width, height) = source.size();
    let mut compressor = Compressor::new()?;
    compressor.set_quality(args.quality as i32)?;
    compressor.set_subsamp(Subsamp::Sub2x2)?;
    let mut decompressor = Decompressor::new()?;
    let mut out = vec![0u8; compressor.buf_len(width, height)?];
    let mut gray = vec![0u8; width * height];
    let (mut frames, mut timed, mut bytes) = (0u64, 0u64, 0u64);
    let (mut wall, mut cpu, mut read) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    loop {
        let read0 = thread_cpu();
        let Some(frame) = source.next_frame()? else { break };
        // The reader maps the file: touching a byte of every page maps the
        // frame in here, so that the page faults count as reading and the
        // compress call below is timed on a frame in memory, as a camera's is.
        let touched = [frame.y.data, frame.u.data, frame.v.data].iter().flat_map(|plane| plane.iter().step_by(4096)).fold(0u8, |acc, &b| acc ^ b);
        std::hint::black_box(touched);
        let read_cpu = thread_cpu() - read0;
        let image = YuvPlanesImage {
            y_plane: frame.y.data,
            u_plane: frame.u.data,
            v_plane: frame.v.data,
            width,
            height,
            y_stride: frame.y.stride,
            u_stride: frame.u.stride,
            v_stride: frame.v.stride,
            subsamp: Subsamp::Sub2x2,
        };
        let (wall0, cpu0) = (Instant::now(), thread_cpu());
        let len = compressor.compress_yuv_planes_to_slice(&image, &mut out)?;
        let (wall1, cpu1) = (Instant::now(), thread_cpu());
        if frames >= args.warmup {
            wall += wall1 - wall0;
            cpu += cpu1 - cpu0;
            read += read_cpu;
            timed += 1;
            bytes += len as u64;
        }
        check(&mut decompressor, &out[..len], &frame, &mut gray).with_context(|| format!("frame {frames}"))?;
        frames += 1;
    }
    ensure!(timed > 0, "{frames} frames leave none to time after --warmup {}", args.warmup);
    let report = serde_json::json!({
        "tool": "bare libjpeg-turbo (turbojpeg, one thread)",
        "source": args.y4m,
        "width": width,
        "height": height,
        "quality": args.quality,
        "warmup": args.warmup,
        "frames": timed,
        "wall_s": wall.as_secs_f64(),
        "cpu_s": cpu.as_secs_f64(),
        "fps": timed as f64 / wall.as_secs_f64(),
        "cpu_ms_per_frame": cpu.as_secs_f64() * 1000.0 / timed as f64,
        "read_cpu_ms_per_frame": read.as_secs_f64() * 1000.0 / timed as f64,
        "bytes_per_frame": bytes / timed,
    });
    let text = serde_json::to_string_pretty(&report)? + "\n";
    match &args.json {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write --json {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}
