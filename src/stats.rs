//! Counters and per-stage timings of a run, logged at exit and written to
//! `--stats-json` so benchmarks and tests read numbers, not log lines.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::transport::SpoolCounts;

/// `[stats]`: how a run is measured.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatsConfig {
    /// Frames at the start of a run left out of the `steady` numbers, which
    /// then exclude one-time costs (buffers growing, connecting) (default 0).
    pub warmup: u64,
}

/// Microseconds spent in each pipeline stage, summed over the run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageMicros {
    pub capture: u64,
    pub flip: u64,
    pub motion: u64,
    pub encode: u64,
    pub send: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunStats {
    /// Frames captured.
    pub frames: u64,
    /// Frames in which the detector saw motion (before hysteresis).
    pub moving_frames: u64,
    /// Motion events started.
    pub events: u64,
    /// Images encoded (JPEG or raw) and sent.
    pub encoded: u64,
    /// Frames encoded ahead in case an event started (the detector was
    /// following something) that were then forgotten: encoding spent for nothing.
    pub encoded_unsent: u64,
    /// Messages the transport delivered (REQ: replied to; PUB: handed to ZeroMQ).
    pub sent: u64,
    /// Messages dropped because the queue was full or the run ended before they went out.
    pub dropped: u64,
    /// Frames the source dropped because the pipeline was late.
    pub source_dropped: u64,
    /// Payload bytes delivered.
    pub bytes: u64,
    /// Times the REQ socket was recreated after a silent hub.
    pub reconnects: u64,
    /// Event messages kept on disk while the hub could not take them, and
    /// what became of them.
    pub spool: SpoolCounts,
    pub wall_s: f64,
    pub cpu_s: f64,
    /// The part of `cpu_s` the encoders spent encoding, on whichever thread.
    pub encode_cpu_s: f64,
    /// Frames per wall-clock second.
    pub fps: f64,
    /// Capture-to-hub latency of delivered images, milliseconds.
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    /// Peak resident memory, kilobytes.
    pub max_rss_kb: u64,
    pub stage_us: StageMicros,
    /// The run after its first `[stats] warmup` frames: what benchmarks compare.
    pub steady: Steady,
    /// Where the steady part began: time, CPU seconds, encoding CPU seconds, frames.
    #[serde(skip)]
    steady_start: Option<(Instant, f64, f64, u64)>,
}

/// Rates over the steady part of a run, from the start of frame
/// `[stats] warmup` to the end, the sending of the last frame included.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Steady {
    pub frames: u64,
    pub wall_s: f64,
    /// CPU seconds of the whole process (every thread).
    pub cpu_s: f64,
    pub fps: f64,
    pub cpu_ms_per_frame: f64,
    /// The encoders' share of `cpu_ms_per_frame`. Both are measured over the
    /// same frames, so the difference, what camnode spends besides encoding,
    /// holds however fast the machine runs at the time.
    pub encode_cpu_ms_per_frame: f64,
}

impl RunStats {
    /// Marks the start of the steady part: call before the first frame
    /// that counts, with the encoders' CPU time so far.
    pub fn start_steady(&mut self, encode_cpu: Duration) {
        self.steady_start = Some((Instant::now(), resource_usage().0, encode_cpu.as_secs_f64(), self.frames));
    }

    /// Fills the derived fields at the end of a run, given the encoders' CPU time.
    pub fn finish(&mut self, started: Instant, encode_cpu: Duration) {
        self.wall_s = started.elapsed().as_secs_f64();
        let usage = resource_usage();
        self.cpu_s = usage.0;
        self.encode_cpu_s = encode_cpu.as_secs_f64();
        self.max_rss_kb = usage.1;
        self.fps = if self.wall_s > 0.0 { self.frames as f64 / self.wall_s } else { 0.0 };
        if let Some((since, cpu, encode_cpu, frames)) = self.steady_start {
            let frames = self.frames - frames;
            let wall_s = since.elapsed().as_secs_f64();
            let per_frame = |seconds: f64| if frames > 0 { seconds * 1000.0 / frames as f64 } else { 0.0 };
            self.steady = Steady {
                frames,
                wall_s,
                cpu_s: usage.0 - cpu,
                fps: if wall_s > 0.0 { frames as f64 / wall_s } else { 0.0 },
                cpu_ms_per_frame: per_frame(usage.0 - cpu),
                encode_cpu_ms_per_frame: per_frame(self.encode_cpu_s - encode_cpu),
            };
        }
    }

    /// One log line for the end of a run.
    pub fn summary(&self) -> String {
        format!(
            "{} frames in {:.1}s ({:.1} fps, {:.2}s CPU, {:.2}s of it encoding): {} moving, {} events, {} encoded, {} sent ({} KiB), {} dropped, {} spooled ({} still waiting)",
            self.frames,
            self.wall_s,
            self.fps,
            self.cpu_s,
            self.encode_cpu_s,
            self.moving_frames,
            self.events,
            self.encoded,
            self.sent,
            self.bytes / 1024,
            self.dropped + self.source_dropped,
            self.spool.stored,
            self.spool.waiting
        )
    }
}

/// The calling thread's CPU time: what a stage costs, whatever else runs
/// on the machine at the time (a build, the other encoder threads).
pub fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// User+system CPU seconds and peak RSS (KiB) of this process.
pub fn resource_usage() -> (f64, u64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime) + secs(usage.ru_stime), peak_rss_kb().unwrap_or(usage.ru_maxrss as u64))
}

/// The high-water mark of this process's own memory (VmHWM). `ru_maxrss`
/// is not that: it survives exec, so a node started by a big process (a
/// Python benchmark) would report its parent's size.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// Adds the time since `start` to a stage counter and returns now, so stages
/// can be timed back to back with one clock read each.
#[inline]
pub fn lap(counter: &mut u64, start: Instant) -> Instant {
    let now = Instant::now();
    *counter += now.duration_since(start).as_micros() as u64;
    now
}

/// A fixed-size record of latencies for percentiles without growing per frame.
#[derive(Debug)]
pub struct LatencyRecorder {
    samples: Vec<f32>,
    next: usize,
    filled: bool,
}

impl LatencyRecorder {
    pub fn new(capacity: usize) -> Self {
        LatencyRecorder { samples: vec![0.0; capacity.max(1)], next: 0, filled: false }
    }

    pub fn record(&mut self, latency: Duration) {
        self.samples[self.next] = latency.as_secs_f32() * 1000.0;
        self.next = (self.next + 1) % self.samples.len();
        self.filled |= self.next == 0;
    }

    /// The `p`-th percentile (0..100) of what was recorded, in ms.
    pub fn percentile(&self, p: f64) -> f64 {
        let n = if self.filled { self.samples.len() } else { self.next };
        if n == 0 {
            return 0.0;
        }
        let mut sorted = self.samples[..n].to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        sorted[((p / 100.0) * (n - 1) as f64).round() as usize] as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_recent_samples() {
        let mut rec = LatencyRecorder::new(100);
        assert_eq!(rec.percentile(50.0), 0.0);
        for ms in 1..=100 {
            rec.record(Duration::from_millis(ms));
        }
        assert!((rec.percentile(50.0) - 50.0).abs() <= 1.0);
        assert!((rec.percentile(99.0) - 99.0).abs() <= 1.0);
    }

    #[test]
    fn cpu_time_and_rss_are_measured() {
        let (cpu, rss) = resource_usage();
        assert!(cpu > 0.0 && rss > 0);
    }
}
