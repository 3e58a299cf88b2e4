//! The limit camnode is measured against: libjpeg-turbo encoding the I420
//! frames of a Y4M file at a given quality, and nothing else.
//!
//! Each frame is read, then compressed straight from its planes into a
//! preallocated buffer, with the same library build and settings camnode
//! uses (4:2:0, no RGB step) but without camnode in the way. The compress
//! call is timed (wall clock and this thread's CPU clock) after `--warmup`
//! untimed frames; so, apart, is reading the frame with camnode's own Y4M
//! reader (which maps the file: reading is the page faults), which is what
//! camnode pays on top for a file source and not for a camera. Every JPEG
//! is decoded again, untimed, and must come back at the frame's size and
//! content, so a broken encode cannot look fast.
//!
//! With `--threads N` it is the limit of N cores: N threads, each with its
//! own compressor, encode every N-th frame in rounds. All compress their
//! frame of a round at once, and the round's wall time ends when the last
//! is done; then all check theirs, untimed, so that no decoding competes
//! with an encode. Frames past the last whole round are left out.
//!
//! ```text
//! cargo run --release --example bare_jpeg -- FRAMES.y4m [--quality 90] [--warmup 10] [--threads 1] [--json OUT]
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use camnode::capture::{FrameSource, Y4mReader};
use camnode::frame::Frame;
use camnode::stats::thread_cpu_time;
use turbojpeg::{Compressor, Decompressor, Image, PixelFormat, Subsamp, YuvPlanesImage};

struct Args {
    y4m: PathBuf,
    quality: u8,
    warmup: usize,
    threads: usize,
    json: Option<PathBuf>,
}

const USAGE: &str = "FRAMES.y4m [--quality Q] [--warmup N] [--threads N] [--json OUT]";

fn parse_args() -> Result<Args> {
    let mut args = Args { y4m: PathBuf::new(), quality: 90, warmup: 10, threads: 1, json: None };
    let mut rest = std::env::args().skip(1);
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| rest.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quality" => args.quality = value("--quality")?.parse().context("--quality takes 1..100")?,
            "--warmup" => args.warmup = value("--warmup")?.parse().context("--warmup takes a frame count")?,
            "--threads" => args.threads = value("--threads")?.parse().context("--threads takes a thread count")?,
            "--json" => args.json = Some(value("--json")?.into()),
            flag if flag.starts_with("--") => bail!("unknown option {flag}: use {USAGE}"),
            path => args.y4m = path.into(),
        }
    }
    ensure!(!args.y4m.as_os_str().is_empty(), "give a Y4M file: bare_jpeg {USAGE}");
    ensure!((1..=100).contains(&args.quality), "--quality {} must be 1..100", args.quality);
    ensure!(args.threads >= 1, "--threads {} must be at least 1", args.threads);
    Ok(args)
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

/// What one thread timed.
#[derive(Default)]
struct Timed {
    frames: usize,
    cpu: Duration,
    read: Duration,
    bytes: u64,
    /// The rounds' wall time, kept by the first thread only.
    wall: Duration,
}

/// Thread `index` of `threads`: encodes frames index, index + threads, ...
/// for `rounds` rounds, in step with the others through `round`.
fn encode_share(args: &Args, index: usize, rounds: usize, round: &Barrier) -> Result<Timed> {
    let mut source = Y4mReader::open(&args.y4m)?;
    let (width, height) = source.size();
    let mut compressor = Compressor::new()?;
    compressor.set_quality(args.quality as i32)?;
    compressor.set_subsamp(Subsamp::Sub2x2)?;
    let mut decompressor = Decompressor::new()?;
    let mut out = vec![0u8; compressor.buf_len(width, height)?];
    let mut gray = vec![0u8; width * height];
    let mut timed = Timed::default();
    for number in 0..rounds {
        let first = number * args.threads;
        for _ in 0..index {
            source.next_frame()?; // another thread's
        }
        let read0 = thread_cpu_time();
        let frame = source.next_frame()?.context("the file ended early")?;
        // The reader maps the file: touching a byte of every page maps the
        // frame in here, so that the page faults count as reading and the
        // compress call below is timed on a frame in memory, as a camera's is.
        let touched = [frame.y.data, frame.u.data, frame.v.data].iter().flat_map(|plane| plane.iter().step_by(4096)).fold(0u8, |acc, &b| acc ^ b);
        std::hint::black_box(touched);
        let read_cpu = thread_cpu_time() - read0;
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
        round.wait();
        let (wall0, cpu0) = (Instant::now(), thread_cpu_time());
        let len = compressor.compress_yuv_planes_to_slice(&image, &mut out)?;
        let cpu = thread_cpu_time() - cpu0;
        round.wait();
        if first >= args.warmup {
            if index == 0 {
                timed.wall += wall0.elapsed();
            }
            timed.cpu += cpu;
            timed.read += read_cpu;
            timed.frames += 1;
            timed.bytes += len as u64;
        }
        check(&mut decompressor, &out[..len], &frame, &mut gray).with_context(|| format!("frame {}", first + index))?;
        for _ in index + 1..args.threads {
            source.next_frame()?;
        }
    }
    Ok(timed)
}

fn count_frames(path: &Path) -> Result<usize> {
    let mut source = Y4mReader::open(path)?;
    let mut frames = 0;
    while source.next_frame()?.is_some() {
        frames += 1;
    }
    Ok(frames)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let (width, height) = Y4mReader::open(&args.y4m)?.size();
    let rounds = count_frames(&args.y4m)? / args.threads;
    let round = Barrier::new(args.threads);
    let shares = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.threads).map(|index| scope.spawn({
            let (args, round) = (&args, &round);
            move || encode_share(args, index, rounds, round)
        })).collect();
        threads.into_iter().map(|thread| thread.join().expect("an encoding thread panicked")).collect::<Result<Vec<_>>>()
    })?;
    let timed = shares.iter().map(|share| share.frames).sum::<usize>();
    ensure!(timed > 0, "{} rounds of {} frames leave none to time after --warmup {}", rounds, args.threads, args.warmup);
    let sum = |part: fn(&Timed) -> Duration| shares.iter().map(part).sum::<Duration>().as_secs_f64();
    let (wall, cpu, read) = (sum(|t| t.wall), sum(|t| t.cpu), sum(|t| t.read));
    let bytes = shares.iter().map(|share| share.bytes).sum::<u64>();
    let report = serde_json::json!({
        "tool": format!("bare libjpeg-turbo (turbojpeg, {} thread{})", args.threads, if args.threads > 1 { "s" } else { "" }),
        "source": args.y4m,
        "width": width,
        "height": height,
        "quality": args.quality,
        "warmup": args.warmup,
        "threads": args.threads,
        "frames": timed,
        "wall_s": wall,
        "cpu_s": cpu,
        "fps": timed as f64 / wall,
        "cpu_ms_per_frame": cpu * 1000.0 / timed as f64,
        "read_cpu_ms_per_frame": read * 1000.0 / timed as f64,
        "bytes_per_frame": bytes / timed as u64,
    });
    let text = serde_json::to_string_pretty(&report)? + "\n";
    match &args.json {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write --json {}", path.display()))?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}
