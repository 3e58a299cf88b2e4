//! The `[gpio]` config block: which pins carry the status LED and the trigger
//! input, how they are wired, and what a press does. Pins are BCM GPIO
//! numbers (what `pinout` prints as GPIO17, not the header's pin 11). The
//! section always parses, with or without the `gpio` cargo feature, so one
//! config file serves every build.

use serde::{Deserialize, Serialize};

use crate::settings::Checker;

/// Settings of the status LED and the trigger input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GpioConfig {
    /// BCM GPIO of the status LED; unset: no LED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub led_pin: Option<u8>,
    /// The LED lights when the pin is low (wired from 3.3 V through the LED to the pin) (default false).
    pub led_active_low: bool,
    /// BCM GPIO of the trigger input (a button or a PIR sensor); unset: no trigger.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_pin: Option<u8>,
    /// The trigger pin's internal resistor: "up", "down" or "none" (default "up", for a button to ground).
    pub trigger_pull: Pull,
    /// The level of the trigger pin while pressed: "high" or "low" (default "low", for a button to ground).
    pub trigger_active: ActiveLevel,
    /// Edges within this many milliseconds of the previous one are contact bounce, not presses (default 50).
    pub debounce_ms: u32,
    /// What a press does: "capture" sends an event and a burst of frames; "arm" switches motion sending on and off (default "capture").
    pub trigger_mode: TriggerMode,
    /// Frames sent for each press in "capture" mode (default 10).
    pub trigger_frames: u32,
    /// Refuse to start when the pins cannot be used; false runs without them after one warning (default true).
    pub required: bool,
}

impl Default for GpioConfig {
    fn default() -> Self {
        GpioConfig {
            led_pin: None,
            led_active_low: false,
            trigger_pin: None,
            trigger_pull: Pull::Up,
            trigger_active: ActiveLevel::Low,
            debounce_ms: 50,
            trigger_mode: TriggerMode::Capture,
            trigger_frames: 10,
            required: true,
        }
    }
}

/// The internal resistor of an input pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    Up,
    Down,
    None,
}

/// The level an input has while it is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActiveLevel {
    High,
    Low,
}

/// What a trigger press does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerMode {
    /// An event message and a burst of frames, whatever the motion state.
    Capture,
    /// Motion sending on and off, for a person who walks into the view on purpose.
    Arm,
}

/// The GPIOs of the 40-pin header, the only ones a LED or button can reach.
const HEADER_GPIOS: std::ops::RangeInclusive<u8> = 0..=27;

impl GpioConfig {
    /// True when any pin is set, i.e. the node wants GPIO at all.
    pub fn is_configured(&self) -> bool {
        self.led_pin.is_some() || self.trigger_pin.is_some()
    }

    /// The pins that are set, as `key = value` for messages.
    pub fn describe_pins(&self) -> String {
        let pins = [("led_pin", self.led_pin), ("trigger_pin", self.trigger_pin)];
        let set: Vec<String> = pins.iter().filter_map(|(key, pin)| pin.map(|p| format!("{key} = {p}"))).collect();
        set.join(", ")
    }

    pub(crate) fn check(&self, check: &mut Checker) {
        for (key, pin) in [("led_pin", self.led_pin), ("trigger_pin", self.trigger_pin)] {
            if let Some(pin) = pin.filter(|p| !HEADER_GPIOS.contains(p)) {
                check.fail("gpio", key, &pin.to_string(), "use a BCM GPIO number of the 40-pin header, 0 to 27 (e.g. 17 for header pin 11)");
            }
        }
        if let (Some(led), Some(trigger)) = (self.led_pin, self.trigger_pin) {
            if led == trigger {
                check.fail("gpio", "trigger_pin", &trigger.to_string(), "the LED already uses this GPIO: wire the trigger to another pin");
            }
        }
        check.range("gpio", "debounce_ms", self.debounce_ms as f64, 0.0, 1000.0);
        check.range("gpio", "trigger_frames", self.trigger_frames as f64, 1.0, 10000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigOrigin;

    fn problems(gpio: &GpioConfig) -> String {
        let origin = ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        gpio.check(&mut check);
        check.finish().err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn section_parses_with_its_defaults() {
        let gpio: GpioConfig = toml::from_str("led_pin = 17\ntrigger_pin = 27\ntrigger_mode = \"arm\"\ntrigger_pull = \"none\"\ntrigger_active = \"high\"\n").unwrap();
        assert_eq!((gpio.led_pin, gpio.trigger_pin), (Some(17), Some(27)));
        assert_eq!((gpio.trigger_mode, gpio.trigger_pull, gpio.trigger_active), (TriggerMode::Arm, Pull::None, ActiveLevel::High));
        assert_eq!((gpio.debounce_ms, gpio.trigger_frames, gpio.required), (50, 10, true));
        assert_eq!(gpio.describe_pins(), "led_pin = 17, trigger_pin = 27");
        assert!(!GpioConfig::default().is_configured());
    }

    #[test]
    fn bad_pins_are_named_with_a_fix() {
        let gpio = GpioConfig { led_pin: Some(40), trigger_pin: Some(40), trigger_frames: 0, ..Default::default() };
        let err = problems(&gpio);
        assert!(err.contains("[gpio] led_pin = 40") && err.contains("0 to 27"), "{err}");
        assert!(err.contains("[gpio] trigger_pin = 40") && err.contains("the LED already uses this GPIO"), "{err}");
        assert!(err.contains("[gpio] trigger_frames = 0"), "{err}");
    }

    #[test]
    fn unknown_choices_fail_at_load() {
        let err = toml::from_str::<GpioConfig>("trigger_pull = \"sideways\"\n").unwrap_err().to_string();
        assert!(err.contains("sideways") && err.contains("up"), "{err}");
    }
}
