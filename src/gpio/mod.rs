//! The node's GPIO: one status LED and one trigger input (a button or a PIR
//! sensor), for headless Pis that talk to people through nothing else.
//!
//! The hardware sits behind [`Backend`], a trait with two calls: claim an
//! output pin, claim an input pin and have its edges reported from an
//! interrupt thread. The Raspberry Pi backend implements it with rppal
//! (cargo feature `gpio`); [`fake::FakeGpio`] implements it in memory, so
//! everything above the pins — the LED patterns ([`led`]), debouncing and
//! what a press does ([`trigger`]) — is the same code in tests on any machine
//! and in the field.
//!
//! Nothing here is called from the capture path. The LED renders
//! [`NodeStatus`] on its own thread; the trigger turns debounced presses into
//! [`trigger::Pressed`] messages on the pipeline's control channel, and the
//! pipeline decides what a press means.

mod config;
pub mod fake;
#[cfg(feature = "gpio")]
mod hardware;
pub mod led;
pub mod trigger;

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use log::{info, warn};

pub use config::{ActiveLevel, GpioConfig, Pull, TriggerMode};
use led::Led;

use crate::status::NodeStatus;
use trigger::Pressed;

/// A level change on an input pin, as the kernel reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Edge {
    /// The level after the change.
    pub high: bool,
    /// When it happened, on the kernel's monotonic clock (time since boot).
    pub at: Duration,
}

/// Called for every edge of an input pin, on the backend's interrupt thread.
pub type EdgeHandler = Box<dyn FnMut(Edge) + Send>;

/// GPIO hardware: what the LED and the trigger need from it, nothing more.
pub trait Backend {
    /// Claims `pin` as an output, driven to `high` from the start.
    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn OutputPin>>;
    /// Claims `pin` as an input with the given resistor, and calls `on_edge`
    /// for each of its rising and falling edges until the returned pin is dropped.
    fn input(&mut self, pin: u8, pull: Pull, on_edge: EdgeHandler) -> Result<Box<dyn InputPin>>;
}

/// A claimed output pin; dropping it releases the pin.
pub trait OutputPin: Send {
    fn set(&mut self, high: bool);
}

/// A claimed input pin with its edge interrupt; dropping it stops both.
pub trait InputPin: Send {
    fn is_high(&self) -> bool;
}

/// The running LED and trigger.
pub struct Gpio {
    trigger: Option<Box<dyn InputPin>>,
    led: Option<Led>,
}

impl Gpio {
    /// Starts what `[gpio]` configures on this machine's GPIO. `None` when no
    /// pin is configured, or when the pins cannot be used and `required =
    /// false` (after one warning).
    pub fn start<C: From<Pressed> + Send + 'static>(
        config: &GpioConfig,
        status: Arc<NodeStatus>,
        controls: Sender<C>,
    ) -> Result<Option<Gpio>> {
        if !config.is_configured() {
            return Ok(None);
        }
        let started = open_hardware()
            .with_context(|| format!("cannot use GPIO for [gpio] {}", config.describe_pins()))
            .and_then(|mut backend| Gpio::with_backend(backend.as_mut(), config, status, controls));
        match started {
            Ok(gpio) => Ok(Some(gpio)),
            Err(e) if !config.required => {
                warn!("running without GPIO: {e:#} ([gpio] required = false)");
                Ok(None)
            }
            Err(e) => anyhow::bail!("{e:#}; to run without GPIO, remove the pins from [gpio] or set [gpio] required = false"),
        }
    }

    /// Starts the LED and the trigger on `backend`.
    pub fn with_backend<C: From<Pressed> + Send + 'static>(
        backend: &mut dyn Backend,
        config: &GpioConfig,
        status: Arc<NodeStatus>,
        controls: Sender<C>,
    ) -> Result<Gpio> {
        let led = match config.led_pin {
            Some(pin) => {
                let output = backend.output(pin, config.led_active_low).with_context(|| format!("cannot drive [gpio] led_pin = {pin}"))?;
                info!("status LED on GPIO{pin}{}", if config.led_active_low { " (active low)" } else { "" });
                Some(Led::start(output, config.led_active_low, status)?)
            }
            None => None,
        };
        let trigger = match config.trigger_pin {
            Some(pin) => Some(trigger::watch(backend, pin, config, controls).with_context(|| format!("cannot watch [gpio] trigger_pin = {pin}"))?),
            None => None,
        };
        Ok(Gpio { trigger, led })
    }
}

impl Drop for Gpio {
    /// The trigger stops first, so that no press arrives while the LED shows
    /// the end: off after a clean run, the fatal pattern after an error.
    fn drop(&mut self) {
        drop(self.trigger.take());
        drop(self.led.take());
    }
}

#[cfg(feature = "gpio")]
fn open_hardware() -> Result<Box<dyn Backend>> {
    Ok(Box::new(hardware::Rppal::open()?))
}

#[cfg(not(feature = "gpio"))]
fn open_hardware() -> Result<Box<dyn Backend>> {
    anyhow::bail!("this camnode was built without the `gpio` feature; rebuild it with `cargo build --release --features gpio`")
}
