//! The status LED: one light that tells a person at a glance what the node
//! is doing, rendered from [`NodeStatus`] on a thread of its own.
//!
//! | Pattern    | Looks like                       | Shown while                                |
//! |------------|----------------------------------|--------------------------------------------|
//! | `Starting` | even blink, once per second      | the camera and the transport are opening   |
//! | `Running`  | a short flash every 3 seconds    | running, hub reachable, nothing going on   |
//! | `Event`    | steadily on                      | a motion event or a trigger burst is sent  |
//! | `Trouble`  | double flash every second        | hub unreachable, or messages being dropped |
//! | `Fatal`    | fast flicker, 10 per second, 3 s | a fatal error, just before camnode exits   |
//! | `Off`      | off                              | stopped cleanly                            |
//!
//! A running node flashes rather than staying dark, so a dead node (or a dead
//! LED) is told apart from a quiet one. A change of pattern restarts it from
//! its first step, so the LED answers within a tenth of a second, the period at
//! which the thread re-reads the status between steps.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::OutputPin;
use crate::status::{NodeStatus, Phase, StatusSnapshot};

/// What the LED shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Off,
    Starting,
    Running,
    Event,
    Trouble,
    Fatal,
}

impl Pattern {
    /// The pattern for a status: the most urgent thing a person should know.
    pub fn of(status: StatusSnapshot) -> Pattern {
        match status.phase {
            Phase::Failed => Pattern::Fatal,
            Phase::Stopped => Pattern::Off,
            Phase::Starting => Pattern::Starting,
            // Trouble wins over an event: frames that do not arrive matter more than the fact that they are sent.
            Phase::Running if !status.hub_reachable || status.dropping => Pattern::Trouble,
            Phase::Running if status.event_active => Pattern::Event,
            Phase::Running => Pattern::Running,
        }
    }

    /// One cycle as (lit, milliseconds) steps, repeated while the pattern holds.
    pub fn steps(self) -> &'static [(bool, u32)] {
        match self {
            Pattern::Off => &[(false, 1000)],
            Pattern::Starting => &[(true, 500), (false, 500)],
            Pattern::Running => &[(true, 100), (false, 2900)],
            Pattern::Event => &[(true, 1000)],
            Pattern::Trouble => &[(true, 100), (false, 150), (true, 100), (false, 650)],
            Pattern::Fatal => &[(true, 50), (false, 50)],
        }
    }
}

/// Where in its pattern the LED is: a pure function of time, so that the
/// waveforms are tested without a clock.
#[derive(Clone, Debug)]
pub struct Blinker {
    pattern: Pattern,
    /// When the current pattern began.
    since: Duration,
}

impl Default for Blinker {
    fn default() -> Self {
        Blinker { pattern: Pattern::Off, since: Duration::ZERO }
    }
}

impl Blinker {
    /// Whether the LED is lit at `now` showing `pattern`, and for how much
    /// longer it stays so if the pattern holds.
    pub fn at(&mut self, now: Duration, pattern: Pattern) -> (bool, Duration) {
        if pattern != self.pattern {
            self.pattern = pattern;
            self.since = now;
        }
        let steps = pattern.steps();
        let cycle: u64 = steps.iter().map(|&(_, ms)| u64::from(ms) * 1000).sum();
        let mut into = (now.saturating_sub(self.since).as_micros() as u64) % cycle;
        for &(lit, ms) in steps {
            let length = u64::from(ms) * 1000;
            if into < length {
                return (lit, Duration::from_micros(length - into));
            }
            into -= length;
        }
        unreachable!("a position inside the cycle lies in one of its steps")
    }
}

/// How often the thread looks at the status while a step lasts.
const RECHECK: Duration = Duration::from_millis(100);
/// How long the fatal pattern shows before camnode exits.
pub const FATAL_SHOW: Duration = Duration::from_secs(3);

/// The LED thread; dropping it ends the display (see [`Led::drop`]).
pub struct Led {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Led {
    /// Starts rendering `status` on `output`.
    pub fn start(output: Box<dyn OutputPin>, active_low: bool, status: Arc<NodeStatus>) -> Result<Led> {
        let (stop, stopped) = channel();
        let mut renderer = Renderer { output, active_low, lit: None, blinker: Blinker::default(), epoch: Instant::now() };
        let thread = std::thread::Builder::new()
            .name("led".into())
            .spawn(move || {
                // Follow the status until told to stop (or until the Led is gone).
                loop {
                    let wait = renderer.show(Pattern::of(status.snapshot()));
                    match stopped.recv_timeout(wait.min(RECHECK)) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                if status.snapshot().phase == Phase::Failed {
                    let until = Instant::now() + FATAL_SHOW;
                    while let Some(left) = until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) {
                        // Nothing can end this early: the process is on its way out, and this is the last it says.
                        std::thread::sleep(renderer.show(Pattern::Fatal).min(left));
                    }
                }
                renderer.show(Pattern::Off);
            })
            .context("cannot start the LED thread")?;
        Ok(Led { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Led {
    /// Turns the LED off; after a fatal error (phase `Failed`), shows the
    /// fatal pattern for [`FATAL_SHOW`] first. Returns when the LED is off.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Drives the pin, writing only when the level changes.
struct Renderer {
    output: Box<dyn OutputPin>,
    active_low: bool,
    lit: Option<bool>,
    blinker: Blinker,
    epoch: Instant,
}

impl Renderer {
    /// Shows `pattern` now; returns how long the LED stays as it is.
    fn show(&mut self, pattern: Pattern) -> Duration {
        let (lit, left) = self.blinker.at(self.epoch.elapsed(), pattern);
        if self.lit != Some(lit) {
            self.output.set(lit != self.active_low);
            self.lit = Some(lit);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waveform a blinker renders for `pattern` over `span`, as
    /// (lit, ms) runs, walking from change to change as the thread does.
    fn waveform(pattern: Pattern, span_ms: u64) -> Vec<(bool, u64)> {
        let mut blinker = Blinker::default();
        let mut runs: Vec<(bool, u64)> = Vec::new();
        let mut now = Duration::ZERO;
        while now < Duration::from_millis(span_ms) {
            let (lit, left) = blinker.at(now, pattern);
            match runs.last_mut() {
                Some((last, ms)) if *last == lit => *ms += left.as_millis() as u64,
                _ => runs.push((lit, left.as_millis() as u64)),
            }
            now += left;
        }
        runs
    }

    fn status(phase: Phase, hub_reachable: bool, event_active: bool, dropping: bool) -> StatusSnapshot {
        StatusSnapshot { phase, hub_reachable, event_active, dropping }
    }

    #[test]
    fn each_state_has_its_pattern() {
        use Phase::*;
        let cases = [
            (status(Starting, false, false, false), Pattern::Starting),
            (status(Running, true, false, false), Pattern::Running),
            (status(Running, true, true, false), Pattern::Event),
            (status(Running, false, false, false), Pattern::Trouble),
            (status(Running, true, false, true), Pattern::Trouble),
            (status(Running, false, true, false), Pattern::Trouble),
            (status(Failed, true, true, false), Pattern::Fatal),
            (status(Stopped, true, false, false), Pattern::Off),
        ];
        for (snapshot, pattern) in cases {
            assert_eq!(Pattern::of(snapshot), pattern, "{snapshot:?}");
        }
    }

    #[test]
    fn waveforms_over_two_cycles() {
        assert_eq!(waveform(Pattern::Starting, 2000), [(true, 500), (false, 500), (true, 500), (false, 500)]);
        assert_eq!(waveform(Pattern::Running, 6000), [(true, 100), (false, 2900), (true, 100), (false, 2900)]);
        assert_eq!(waveform(Pattern::Event, 6000), [(true, 6000)]);
        assert_eq!(waveform(Pattern::Off, 6000), [(false, 6000)]);
        assert_eq!(
            waveform(Pattern::Trouble, 2000),
            [(true, 100), (false, 150), (true, 100), (false, 650), (true, 100), (false, 150), (true, 100), (false, 650)]
        );
        let fatal = waveform(Pattern::Fatal, 1000);
        assert_eq!(fatal.len(), 20);
        assert!(fatal.iter().enumerate().all(|(i, &(lit, ms))| lit == (i % 2 == 0) && ms == 50), "{fatal:?}");
    }

    #[test]
    fn patterns_are_told_apart_by_their_waveforms() {
        let all = [Pattern::Off, Pattern::Starting, Pattern::Running, Pattern::Event, Pattern::Trouble, Pattern::Fatal];
        let forms: Vec<_> = all.iter().map(|&p| waveform(p, 6000)).collect();
        for (i, a) in forms.iter().enumerate() {
            for b in &forms[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn a_new_pattern_starts_from_its_first_step() {
        let mut blinker = Blinker::default();
        // Running, 1 s in: dark for 2 s more.
        blinker.at(Duration::ZERO, Pattern::Running);
        assert_eq!(blinker.at(Duration::from_secs(1), Pattern::Running), (false, Duration::from_millis(2000)));
        // An event starts: lit at once, not at the end of the dark step.
        assert_eq!(blinker.at(Duration::from_millis(1050), Pattern::Event), (true, Duration::from_millis(1000)));
        assert_eq!(blinker.at(Duration::from_millis(1100), Pattern::Running), (true, Duration::from_millis(100)));
    }
}
