//! An in-memory [`Backend`]: outputs record every level written to them,
//! inputs are driven by the caller. Tests use it to check LED patterns,
//! debouncing and trigger presses end to end on machines without GPIO; it
//! behaves like the hardware where that matters (a pin can be claimed once,
//! an input idles at the level its resistor pulls it to, edges reach the
//! handler one at a time, as from rppal's interrupt thread).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{Backend, Edge, EdgeHandler, InputPin, OutputPin, Pull};

/// One level written to an output pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub high: bool,
    pub at: Instant,
}

/// A fake GPIO chip; clones share the same pins.
#[derive(Clone, Default)]
pub struct FakeGpio {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled on every output write.
    written: Condvar,
    /// Edge handlers, apart from `state` so that a handler may use the fake.
    /// One lock for all: edges are delivered one at a time, as by one interrupt thread.
    handlers: Mutex<HashMap<u8, EdgeHandler>>,
}

#[derive(Default)]
struct State {
    claimed: HashSet<u8>,
    /// Levels written to each output, kept after the pin is released.
    writes: HashMap<u8, Vec<Write>>,
    /// Present levels of the claimed inputs.
    inputs: HashMap<u8, bool>,
}

impl FakeGpio {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handlers(&self) -> MutexGuard<'_, HashMap<u8, EdgeHandler>> {
        self.shared.handlers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives input `pin` to `high` at `at` (kernel time) and runs its
    /// handler, as an interrupt would. Nothing happens if the level does not change.
    pub fn edge(&self, pin: u8, high: bool, at: Duration) {
        match self.state().inputs.get_mut(&pin) {
            Some(level) if *level != high => *level = high,
            Some(_) => return,
            None => panic!("GPIO{pin} is not a claimed input"),
        }
        if let Some(handler) = self.handlers().get_mut(&pin) {
            handler(Edge { high, at });
        }
    }

    /// Every level written to output `pin` so far, oldest first.
    pub fn writes(&self, pin: u8) -> Vec<Write> {
        self.state().writes.get(&pin).cloned().unwrap_or_default()
    }

    /// Waits until the writes to `pin` satisfy `done`, at most `limit`;
    /// returns the writes either way.
    pub fn wait_for_writes(&self, pin: u8, limit: Duration, done: impl Fn(&[Write]) -> bool) -> Vec<Write> {
        let deadline = Instant::now() + limit;
        let mut state = self.state();
        loop {
            let writes = state.writes.get(&pin).map_or(&[][..], Vec::as_slice);
            let left = deadline.saturating_duration_since(Instant::now());
            if done(writes) || left.is_zero() {
                return writes.to_vec();
            }
            state = self.shared.written.wait_timeout(state, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// True while `pin` is claimed.
    pub fn is_claimed(&self, pin: u8) -> bool {
        self.state().claimed.contains(&pin)
    }

    fn claim(&self, pin: u8) -> Result<MutexGuard<'_, State>> {
        let mut state = self.state();
        if !state.claimed.insert(pin) {
            bail!("GPIO{pin} is already in use");
        }
        Ok(state)
    }
}

impl Backend for FakeGpio {
    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn OutputPin>> {
        self.claim(pin)?.writes.entry(pin).or_default().push(Write { high, at: Instant::now() });
        Ok(Box::new(FakeOutput { gpio: self.clone(), pin }))
    }

    fn input(&mut self, pin: u8, pull: Pull, on_edge: EdgeHandler) -> Result<Box<dyn InputPin>> {
        self.claim(pin)?.inputs.insert(pin, pull == Pull::Up);
        self.handlers().insert(pin, on_edge);
        Ok(Box::new(FakeInput { gpio: self.clone(), pin }))
    }
}

struct FakeOutput {
    gpio: FakeGpio,
    pin: u8,
}

impl OutputPin for FakeOutput {
    fn set(&mut self, high: bool) {
        self.gpio.state().writes.entry(self.pin).or_default().push(Write { high, at: Instant::now() });
        self.gpio.shared.written.notify_all();
    }
}

impl Drop for FakeOutput {
    fn drop(&mut self) {
        self.gpio.state().claimed.remove(&self.pin);
    }
}

struct FakeInput {
    gpio: FakeGpio,
    pin: u8,
}

impl InputPin for FakeInput {
    fn is_high(&self) -> bool {
        self.gpio.state().inputs.get(&self.pin).copied().unwrap_or(false)
    }
}

impl Drop for FakeInput {
    fn drop(&mut self) {
        self.gpio.handlers().remove(&self.pin);
        let mut state = self.gpio.state();
        state.inputs.remove(&self.pin);
        state.claimed.remove(&self.pin);
    }
}
