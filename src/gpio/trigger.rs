//! The trigger input: a button or a PIR sensor on one pin, turned into one
//! [`Pressed`] message per press on the pipeline's control channel.
//!
//! A mechanical contact bounces for a few milliseconds when it closes and
//! again when it opens, and each bounce is an edge. The rule used here: an
//! edge to the active level is a press only if the line had been quiet for
//! the debounce period before it. The first edge of a press counts at once;
//! the bounces that follow it are too close to their predecessors; the
//! bounces of the release, though some go to the active level, come right
//! after the release edge. A PIR sensor's clean output passes untouched. The
//! rule needs only the edges and their kernel timestamps, so it runs in the
//! interrupt callback, with no timer and no polling.

use std::sync::mpsc::Sender;
use std::time::Duration;

use anyhow::Result;
use log::{debug, info};

use super::{ActiveLevel, Backend, Edge, GpioConfig, InputPin};

/// A debounced press of the trigger input. The control channel's message
/// type is made from it (`From<Pressed>`), so that this module needs to know
/// nothing of what else travels there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pressed;

/// Turns raw edges into presses.
#[derive(Clone, Debug)]
pub struct Debouncer {
    active_high: bool,
    period: Duration,
    /// When the line last changed, if it has since the start.
    last_edge: Option<Duration>,
}

impl Debouncer {
    pub fn new(active: ActiveLevel, period: Duration) -> Self {
        Debouncer { active_high: active == ActiveLevel::High, period, last_edge: None }
    }

    /// Feeds one edge; true if it is a press.
    pub fn edge(&mut self, edge: Edge) -> bool {
        let quiet = self.last_edge.map_or(true, |last| edge.at.saturating_sub(last) >= self.period);
        self.last_edge = Some(edge.at);
        edge.high == self.active_high && quiet
    }
}

/// Claims the trigger pin; until the returned pin is dropped, each press
/// sends [`Pressed`] to `controls`.
pub fn watch<C: From<Pressed> + Send + 'static>(
    backend: &mut dyn Backend,
    pin: u8,
    config: &GpioConfig,
    controls: Sender<C>,
) -> Result<Box<dyn InputPin>> {
    let mut debouncer = Debouncer::new(config.trigger_active, Duration::from_millis(config.debounce_ms.into()));
    let input = backend.input(
        pin,
        config.trigger_pull,
        Box::new(move |edge| {
            if debouncer.edge(edge) {
                debug!("trigger pressed (GPIO{pin})");
                // A closed channel means the pipeline has stopped: the press has nowhere to go.
                let _ = controls.send(Pressed.into());
            } else {
                debug!("GPIO{pin} edge to {} ignored", if edge.high { "high" } else { "low" });
            }
        }),
    )?;
    let level = if input.is_high() { "high" } else { "low" };
    info!("trigger on GPIO{pin}: pull {:?}, active {:?}, now {level}", config.trigger_pull, config.trigger_active);
    Ok(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn presses(active: ActiveLevel, edges: &[(bool, u64)]) -> Vec<u64> {
        let mut debouncer = Debouncer::new(active, Duration::from_millis(50));
        edges.iter().filter(|&&(high, ms)| debouncer.edge(Edge { high, at: Duration::from_millis(ms) })).map(|&(_, ms)| ms).collect()
    }

    #[test]
    fn a_bouncing_button_press_and_release_is_one_press() {
        // Active low: press at 1000 ms bounces for 3 ms, release at 1400 ms bounces too.
        let edges = [(false, 1000), (true, 1001), (false, 1002), (true, 1003), (false, 1004), (true, 1400), (false, 1401), (true, 1402)];
        assert_eq!(presses(ActiveLevel::Low, &edges), vec![1000]);
    }

    #[test]
    fn presses_apart_by_more_than_the_period_all_count() {
        let edges = [(false, 100), (true, 200), (false, 260), (true, 300), (false, 400)];
        assert_eq!(presses(ActiveLevel::Low, &edges), vec![100, 260, 400]);
    }

    #[test]
    fn a_press_too_soon_after_a_release_is_bounce() {
        let edges = [(false, 100), (true, 200), (false, 230)];
        assert_eq!(presses(ActiveLevel::Low, &edges), vec![100]);
    }

    #[test]
    fn an_active_high_sensor_counts_rising_edges() {
        // A PIR output: high for a few seconds per detection.
        let edges = [(true, 5_000), (false, 8_000), (true, 12_000), (false, 14_500)];
        assert_eq!(presses(ActiveLevel::High, &edges), vec![5_000, 12_000]);
    }

    #[test]
    fn zero_debounce_counts_every_active_edge() {
        let mut debouncer = Debouncer::new(ActiveLevel::High, Duration::ZERO);
        let edges = [(true, 1), (false, 1), (true, 1)];
        assert_eq!(edges.iter().filter(|&&(high, ms)| debouncer.edge(Edge { high, at: Duration::from_millis(ms) })).count(), 2);
    }
}
