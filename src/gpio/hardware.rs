//! The Raspberry Pi backend: rppal, which drives outputs through
//! `/dev/gpiomem` (`/dev/mem` on kernels without it) and gets input edges from the kernel's GPIO character
//! device (`/dev/gpiochipN`), on a thread of its own that sleeps in the
//! kernel until an edge arrives — no polling.
//!
//! Edges are requested without the kernel's debounce: [`super::trigger`]
//! debounces on the kernel's edge timestamps instead, so that the rule is one
//! piece of code, tested on any machine, and a press is reported on its first
//! edge rather than after a quiet period. Pins are put back as they were
//! found when they are dropped (rppal's reset on drop).

use anyhow::{anyhow, Result};
use rppal::gpio::{Error, Event, Gpio, Trigger};

use super::{Backend, Edge, EdgeHandler, InputPin, OutputPin, Pull};

/// This Pi's GPIO.
pub struct Rppal {
    gpio: Gpio,
}

impl Rppal {
    /// Fails off a Pi (unknown model) or without access to the GPIO devices.
    pub fn open() -> Result<Rppal> {
        let gpio = Gpio::new().map_err(|e| match e {
            Error::UnknownModel => anyhow!("this machine is not a Raspberry Pi model that rppal knows"),
            // Upstream kernels (Debian's, on the Pi image of scripts/pi-vm.sh)
            // have no /dev/gpiomem, and rppal falls back to /dev/mem, which
            // no group membership opens.
            Error::PermissionDenied(path) if path == "/dev/mem" => anyhow!(
                "permission denied on /dev/mem (this kernel has no /dev/gpiomem): the service needs \
                 CAP_SYS_RAWIO, write access to /dev/mem and `iomem=relaxed` on the kernel command line, \
                 as the camnode Pi image sets them up (docs/raspberry-pi.md)"
            ),
            Error::PermissionDenied(path) => {
                anyhow!("permission denied on {path}: add the user to the `gpio` group (sudo usermod -aG gpio USER)")
            }
            e => anyhow!(e).context("cannot open the GPIO"),
        })?;
        Ok(Rppal { gpio })
    }
}

impl Backend for Rppal {
    fn output(&mut self, pin: u8, high: bool) -> Result<Box<dyn OutputPin>> {
        let pin = self.gpio.get(pin)?;
        let output = if high { pin.into_output_high() } else { pin.into_output_low() };
        Ok(Box::new(output))
    }

    fn input(&mut self, pin: u8, pull: Pull, mut on_edge: EdgeHandler) -> Result<Box<dyn InputPin>> {
        let pin = self.gpio.get(pin)?;
        let mut input = match pull {
            Pull::Up => pin.into_input_pullup(),
            Pull::Down => pin.into_input_pulldown(),
            Pull::None => pin.into_input(),
        };
        input.set_async_interrupt(Trigger::Both, None, move |event: Event| {
            on_edge(Edge { high: event.trigger == Trigger::RisingEdge, at: event.timestamp });
        })?;
        Ok(Box::new(input))
    }
}

impl OutputPin for rppal::gpio::OutputPin {
    fn set(&mut self, high: bool) {
        if high {
            self.set_high();
        } else {
            self.set_low();
        }
    }
}

impl InputPin for rppal::gpio::InputPin {
    fn is_high(&self) -> bool {
        rppal::gpio::InputPin::is_high(self)
    }
}
