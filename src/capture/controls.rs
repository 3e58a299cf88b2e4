//! Camera controls: exposure, white balance, image adjustments, HDR, focus
//! and crop, as `[capture]` keys named as rpicam-apps names its options, so
//! that a site's `rpicam-vid --shutter 20000 --awb daylight` carries over as
//! `shutter = 20000` and `awb = "daylight"`.
//!
//! Checking happens in two steps, as every setting does in camnode. When the
//! configuration loads, each value is parsed and checked on its own: an
//! unknown choice lists the valid ones, a number out of any sensible range
//! says so. When the camera opens, [`targets`] turns the keys into libcamera
//! controls and checks each against what the camera says it supports (its
//! ControlInfoMap, described here by [`CameraInfo`] so that this module needs
//! no libcamera): a control the camera lacks, or a value outside its range,
//! is an error naming the key, the camera and what it does support, or with
//! `strict_controls = false` a warning, and the key is left out.
//!
//! [`changes`] compares what two configurations ask of the camera, so that a
//! reload sends only what changed, and returns a key that was removed to the
//! camera's default (automatic exposure again after `shutter` goes). Keys
//! left unset leave the camera's own defaults alone, with one exception
//! taken from rpicam-apps: a camera with autofocus focuses continuously
//! unless `autofocus_mode` or `lens_position` says otherwise.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::{CaptureConfig, Rate};
use crate::settings::{number_or_text, serde_as_string, Checker};

/// Declares a key whose value is one of a few names, each mapped to the
/// value of the libcamera enum control it sets. Several names may map to one
/// value, as in rpicam-apps (`sport` and `short`).
macro_rules! choices {
    ($(#[$doc:meta])* $name:ident, $key:literal { $($variant:ident = $text:literal => $value:expr),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every name the key takes, in the order `--help` lists them.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The libcamera enumerator this choice sets.
            pub fn value(self) -> i64 {
                match self { $($name::$variant => $value),+ }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("{} \"{s}\" is not one of: {}", $key, Self::NAMES.join(", "))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

choices! {
    /// `metering`: how auto exposure weighs the picture (AeMeteringMode).
    Metering, "metering" {
        Centre = "centre" => 0,
        Spot = "spot" => 1,
        Average = "average" => 2,
        Matrix = "matrix" => 2,
        Custom = "custom" => 3,
    }
}

choices! {
    /// `exposure`: the auto exposure profile (AeExposureMode); `sport` keeps
    /// exposures short, `long` allows long ones.
    ExposureMode, "exposure" {
        Normal = "normal" => 0,
        Sport = "sport" => 1,
        Short = "short" => 1,
        Long = "long" => 2,
        Custom = "custom" => 3,
    }
}

choices! {
    /// `awb`: the white balance mode (AwbMode).
    Awb, "awb" {
        Auto = "auto" => 0,
        Normal = "normal" => 0,
        Incandescent = "incandescent" => 1,
        Tungsten = "tungsten" => 2,
        Fluorescent = "fluorescent" => 3,
        Indoor = "indoor" => 4,
        Daylight = "daylight" => 5,
        Cloudy = "cloudy" => 6,
        Custom = "custom" => 7,
    }
}

choices! {
    /// `denoise`: the ISP's noise reduction (draft NoiseReductionMode);
    /// `auto` leaves the camera's choice.
    Denoise, "denoise" {
        Auto = "auto" => -1,
        Off = "off" => 0,
        CdnOff = "cdn_off" => 3,
        CdnFast = "cdn_fast" => 1,
        CdnHq = "cdn_hq" => 2,
    }
}

choices! {
    /// `hdr`: `sensor` is the Camera Module 3's (imx708) own HDR mode,
    /// switched in the sensor before the camera opens; `single-exp` the
    /// Pi 5's multi-frame HDR (HdrMode); `auto` whichever the camera has.
    Hdr, "hdr" {
        Off = "off" => 0,
        Auto = "auto" => -1,
        Sensor = "sensor" => -1,
        SingleExp = "single-exp" => 3,
    }
}

choices! {
    /// `autofocus_mode` (AfMode): `auto` scans once at start and after a
    /// reload that sets it, `continuous` keeps focusing.
    AfMode, "autofocus_mode" {
        Manual = "manual" => 0,
        Auto = "auto" => 1,
        Continuous = "continuous" => 2,
    }
}

choices! {
    /// `autofocus_range` (AfRange): the distances autofocus searches.
    AfRange, "autofocus_range" {
        Normal = "normal" => 0,
        Macro = "macro" => 1,
        Full = "full" => 2,
    }
}

serde_as_string!(Metering, ExposureMode, Awb, Denoise, Hdr, AfMode, AfRange);

/// `shutter`: a fixed exposure time, in microseconds as a number, or with a
/// unit as rpicam-apps takes it: "20ms", "1.5s", "500us".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shutter {
    pub micros: u32,
}

impl FromStr for Shutter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        let (number, scale) = [("us", 1.0), ("ms", 1e3), ("s", 1e6)]
            .iter()
            .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
            .unwrap_or((text, 1.0));
        match number.trim().parse::<f64>() {
            Ok(n) if n * scale >= 1.0 && n * scale <= u32::MAX as f64 => Ok(Shutter { micros: (n * scale).round() as u32 }),
            _ => Err(format!(
                "shutter \"{s}\" must be an exposure time in microseconds, or with a unit (us, ms, s), e.g. 20000 or \"20ms\""
            )),
        }
    }
}

impl fmt::Display for Shutter {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}us", self.micros)
    }
}

impl Serialize for Shutter {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.micros)
    }
}

impl<'de> Deserialize<'de> for Shutter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `lens_position`: where a manual lens focuses, in dioptres (1 / distance
/// in metres: 0 is infinity, 2 is 50 cm), or "default" for the lens's own
/// default, usually the hyperfocal distance.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LensPosition {
    Default,
    Dioptres(f32),
}

impl FromStr for LensPosition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "default" {
            return Ok(LensPosition::Default);
        }
        match s.trim().parse::<f32>() {
            Ok(d) if (0.0..=100.0).contains(&d) => Ok(LensPosition::Dioptres(d)),
            _ => Err(format!(
                "lens_position \"{s}\" must be dioptres from 0 (infinity) up, e.g. 0.5 for 2 m, or \"default\""
            )),
        }
    }
}

impl fmt::Display for LensPosition {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            LensPosition::Default => f.write_str("default"),
            LensPosition::Dioptres(d) => write!(f, "{d}"),
        }
    }
}

impl Serialize for LensPosition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            LensPosition::Default => s.serialize_str("default"),
            LensPosition::Dioptres(d) => s.serialize_f32(*d),
        }
    }
}

impl<'de> Deserialize<'de> for LensPosition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `awbgains`: fixed red and blue gains, which turn automatic white balance
/// off: "1.5,1.2" as rpicam-apps takes it, or `[1.5, 1.2]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwbGains {
    pub red: f32,
    pub blue: f32,
}

impl FromStr for AwbGains {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match numbers(s).as_deref() {
            Some(&[red, blue]) if red > 0.0 && blue > 0.0 => Ok(AwbGains { red, blue }),
            _ => Err(format!("awbgains \"{s}\" must be the red and blue gains, both above 0, e.g. \"1.5,1.2\"")),
        }
    }
}

impl fmt::Display for AwbGains {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{},{}", self.red, self.blue)
    }
}

/// `roi`: the part of the sensor to use (digital zoom), as fractions
/// `x,y,w,h` of the full field of view, applied as libcamera's ScalerCrop.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Roi {
    pub x: f32,
    pub y: f32,
    pub width: f32,
    pub height: f32,
}

impl FromStr for Roi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let fail = || {
            format!("roi \"{s}\" must be x,y,w,h in fractions of the sensor, inside 0..1, e.g. \"0.25,0.25,0.5,0.5\" for the middle")
        };
        let Some(&[x, y, width, height]) = numbers(s).as_deref() else { return Err(fail()) };
        let inside = [x, y, width, height].iter().all(|v| (0.0..=1.0).contains(v));
        if !inside || width <= 0.0 || height <= 0.0 || x + width > 1.0001 || y + height > 1.0001 {
            return Err(fail());
        }
        Ok(Roi { x, y, width, height })
    }
}

impl fmt::Display for Roi {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.width, self.height)
    }
}

/// Written as numbers: `[1.5, 1.2]`, `[0.25, 0.25, 0.5, 0.5]`.
macro_rules! serde_as_numbers {
    ($($ty:ty => [$($field:ident),+]),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                [$(self.$field),+].serialize(s)
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(untagged)]
                enum Repr {
                    Numbers(Vec<f32>),
                    Text(String),
                }
                let text = match Repr::deserialize(d)? {
                    Repr::Numbers(n) => n.iter().map(f32::to_string).collect::<Vec<_>>().join(","),
                    Repr::Text(t) => t,
                };
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_numbers!(AwbGains => [red, blue], Roi => [x, y, width, height]);

/// Comma-separated numbers, as rpicam-apps writes gains and crops.
fn numbers(text: &str) -> Option<Vec<f32>> {
    text.split(',').map(|n| n.trim().parse::<f32>().ok().filter(|v| v.is_finite())).collect()
}

/// Checks what can be checked without a camera: each plain number in a
/// sensible range, and keys that contradict each other.
pub(crate) fn check(capture: &CaptureConfig, check: &mut Checker) {
    let numbers = [
        ("gain", capture.gain, 1.0, 1000.0, "use a gain from 1.0 (no gain) up, or leave it out for automatic gain"),
        ("ev", capture.ev, -10.0, 10.0, "use an exposure compensation from -10 to 10 stops, 0 for none"),
        ("brightness", capture.brightness, -1.0, 1.0, "use a brightness from -1.0 to 1.0, 0 for none"),
        ("contrast", capture.contrast, 0.0, 1000.0, "use a contrast from 0 up, 1.0 for normal"),
        ("saturation", capture.saturation, 0.0, 1000.0, "use a saturation from 0 (greyscale) up, 1.0 for normal"),
        ("sharpness", capture.sharpness, 0.0, 1000.0, "use a sharpness from 0 up, 1.0 for normal"),
    ];
    for (key, value, min, max, fix) in numbers {
        if let Some(v) = value.filter(|v| !(min..=max).contains(v)) {
            check.fail("capture", key, &v.to_string(), fix);
        }
    }
    if let (Some(position), Some(mode)) = (capture.lens_position, capture.autofocus_mode) {
        if mode != AfMode::Manual {
            check.fail(
                "capture",
                "lens_position",
                &position.to_string(),
                &format!("a fixed lens position needs autofocus_mode = \"manual\", not \"{mode}\": remove one of the two"),
            );
        }
    }
}

/// A control value as camnode sets it or a camera describes it, without
/// libcamera's types.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f32),
    /// Several numbers: ColourGains, FrameDurationLimits.
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    Rect(Rect),
    /// Anything camnode never sets, as libcamera prints it (sizes, strings...).
    Other(String),
    None,
}

impl Value {
    fn number(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::Float(v) => Some(*v as f64),
            Value::Ints(v) => v.first().map(|&v| v as f64),
            Value::Floats(v) => v.first().map(|&v| v as f64),
            _ => None,
        }
    }

    fn rect(&self) -> Option<Rect> {
        match self {
            Value::Rect(r) => Some(*r),
            _ => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let list = |items: Vec<String>| format!("[{}]", items.join(", "));
        match self {
            Value::Bool(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Floats(v) => f.write_str(&list(v.iter().map(f32::to_string).collect())),
            Value::Ints(v) => f.write_str(&list(v.iter().map(i64::to_string).collect())),
            Value::Rect(r) => write!(f, "{}x{}+{}+{}", r.width, r.height, r.x, r.y),
            Value::Other(text) => f.write_str(text),
            Value::None => f.write_str("-"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Int(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f32(*v),
            Value::Floats(v) => v.serialize(s),
            Value::Ints(v) => v.serialize(s),
            Value::Rect(r) => [r.x as i64, r.y as i64, r.width as i64, r.height as i64].serialize(s),
            Value::Other(text) => s.serialize_str(text),
            Value::None => s.serialize_none(),
        }
    }
}

/// A rectangle on the sensor, in pixels, as libcamera's ScalerCrop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rect {
    pub x: i32,
    pub y: i32,
    pub width: u32,
    pub height: u32,
}

/// One control of a camera as its ControlInfoMap describes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ControlInfo {
    pub name: String,
    #[serde(skip)]
    pub id: u32,
    pub min: Value,
    pub max: Value,
    pub default: Value,
    /// The values an enumerated control takes; empty for ranges.
    pub values: Vec<Choice>,
}

/// One value of an enumerated control, with libcamera's name for it where
/// it has one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Choice {
    pub value: Value,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl ControlInfo {
    /// "-1 to 1, default 0", "AwbAuto (0), AwbDaylight (5)...".
    pub fn describe(&self) -> String {
        let values = if self.values.is_empty() {
            format!("{} to {}", self.min, self.max)
        } else {
            let each: Vec<String> = self
                .values
                .iter()
                .map(|c| if c.name.is_empty() { c.value.to_string() } else { format!("{} ({})", c.name, c.value) })
                .collect();
            each.join(", ")
        };
        match self.default {
            Value::None => values,
            ref default => format!("{values}, default {default}"),
        }
    }

    fn takes(&self, value: &Value) -> bool {
        if !self.values.is_empty() {
            return self.values.iter().any(|c| c.value == *value);
        }
        let (Some(min), Some(max)) = (self.min.number(), self.max.number()) else { return true };
        // Pipelines that do not know a range say 0 to 0.
        if min >= max {
            return true;
        }
        let values: Vec<f64> = match value {
            Value::Floats(v) => v.iter().map(|&x| x as f64).collect(),
            Value::Ints(v) => v.iter().map(|&x| x as f64).collect(),
            other => other.number().into_iter().collect(),
        };
        values.iter().all(|v| (min - 1e-6..=max + 1e-6).contains(v))
    }
}

/// What camnode needs to know about a camera to set its controls.
#[derive(Clone, Debug, Default)]
pub struct CameraInfo {
    pub id: String,
    pub model: String,
    pub controls: Vec<ControlInfo>,
}

impl CameraInfo {
    pub fn control(&self, name: &str) -> Option<&ControlInfo> {
        self.controls.iter().find(|c| c.name == name)
    }

    /// The camera has its own HDR mode, switched in the sensor (Camera Module 3).
    pub fn has_sensor_hdr(&self) -> bool {
        self.model.contains("imx708")
    }

    /// The control names, for messages.
    fn control_names(&self) -> String {
        let mut names: Vec<&str> = self.controls.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if names.is_empty() {
            return "none".into();
        }
        names.join(", ")
    }

    /// The frame rates the camera can run at now: `(lowest, highest)` fps.
    pub fn rate_range(&self) -> Option<(f64, f64)> {
        let limits = self.control("FrameDurationLimits")?;
        let (shortest, longest) = (limits.min.number()?, limits.max.number()?);
        (shortest > 0.0 && longest > 0.0).then(|| (1e6 / longest, 1e6 / shortest))
    }
}

/// The highest rate a camera runs at when no rate is set.
pub const DEFAULT_MAX_FPS: f64 = 30.0;

/// A value for one libcamera control, and the key that asked for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub key: &'static str,
    pub value: Value,
}

/// libcamera control name to the value camnode wants it at.
pub type Targets = BTreeMap<&'static str, Target>;

/// What a configuration asks of a camera, once checked against it.
#[derive(Debug, Default)]
pub struct Planned {
    pub targets: Targets,
    /// Worth a line in the log: the rate chosen when none is set.
    pub notes: Vec<String>,
    /// Keys left out with `strict_controls = false`, each with why.
    pub left_out: Vec<String>,
}

/// The controls a configuration asks of a camera, checked against it: a
/// control the camera lacks or a value out of its range is an error, or
/// with `strict_controls = false` a key left out.
pub fn targets(capture: &CaptureConfig, camera: &CameraInfo) -> anyhow::Result<Planned> {
    let mut plan = Plan { camera, targets: Targets::new(), problems: Vec::new(), notes: Vec::new() };
    plan.rate(capture.rate)?;
    if let Some(shutter) = capture.shutter {
        plan.companion("shutter", "ExposureTimeMode", Value::Int(1));
        plan.want("shutter", &shutter.to_string(), "ExposureTime", Value::Int(shutter.micros.into()));
    }
    if let Some(gain) = capture.gain {
        plan.companion("gain", "AnalogueGainMode", Value::Int(1));
        plan.want("gain", &gain.to_string(), "AnalogueGain", Value::Float(gain));
    }
    let simple = [
        ("ev", capture.ev, "ExposureValue"),
        ("brightness", capture.brightness, "Brightness"),
        ("contrast", capture.contrast, "Contrast"),
        ("saturation", capture.saturation, "Saturation"),
        ("sharpness", capture.sharpness, "Sharpness"),
    ];
    for (key, value, control) in simple {
        if let Some(v) = value {
            plan.want(key, &v.to_string(), control, Value::Float(v));
        }
    }
    let choices = [
        ("metering", capture.metering.map(|c| (c.name(), c.value())), "AeMeteringMode"),
        ("exposure", capture.exposure.map(|c| (c.name(), c.value())), "AeExposureMode"),
        ("awb", capture.awb.map(|c| (c.name(), c.value())), "AwbMode"),
        ("denoise", capture.denoise.filter(|d| *d != Denoise::Auto).map(|c| (c.name(), c.value())), "NoiseReductionMode"),
        ("autofocus_range", capture.autofocus_range.map(|c| (c.name(), c.value())), "AfRange"),
    ];
    for (key, choice, control) in choices {
        if let Some((name, value)) = choice {
            plan.want(key, &format!("\"{name}\""), control, Value::Int(value));
        }
    }
    if let Some(gains) = capture.awbgains {
        plan.companion("awbgains", "AwbEnable", Value::Bool(false));
        plan.want("awbgains", &format!("\"{gains}\""), "ColourGains", Value::Floats(vec![gains.red, gains.blue]));
    }
    plan.hdr(capture.hdr);
    plan.focus(capture);
    if let Some(roi) = capture.roi {
        plan.crop(roi);
    }
    if !plan.problems.is_empty() && capture.strict_controls {
        let advice = format!(
            "`camnode cameras` lists what camera {} supports; remove the key, or set [capture] strict_controls = false to run without it",
            camera.id
        );
        anyhow::bail!("{}\n  {advice}", plan.problems.join("\n  "));
    }
    let left_out = plan.problems.into_iter().map(|p| format!("{p}; left out (strict_controls = false)")).collect();
    Ok(Planned { targets: plan.targets, notes: plan.notes, left_out })
}

/// The controls to send to go from `before` to `after`: those whose value
/// changed, and for those `after` no longer sets, the value that returns
/// the camera to its own behaviour (automatic exposure, gain and white
/// balance again; a control's default otherwise).
pub fn changes(before: &Targets, after: &Targets, camera: &CameraInfo) -> Vec<(&'static str, Value)> {
    let mut out: Vec<(&'static str, Value)> =
        after.iter().filter(|(name, t)| before.get(*name) != Some(t)).map(|(name, t)| (*name, t.value.clone())).collect();
    for name in before.keys().filter(|name| !after.contains_key(*name)) {
        let reset = match *name {
            "ExposureTimeMode" | "AnalogueGainMode" => Some(Value::Int(0)),
            "AwbEnable" => Some(Value::Bool(true)),
            // The automatic modes above take over from these.
            "ExposureTime" if before.contains_key("ExposureTimeMode") => None,
            "AnalogueGain" if before.contains_key("AnalogueGainMode") => None,
            "ColourGains" if before.contains_key("AwbEnable") => None,
            // A scan is started once; nothing to undo.
            "AfTrigger" => None,
            _ => camera.control(name).map(|c| c.default.clone()).filter(|v| *v != Value::None),
        };
        if let Some(value) = reset {
            out.push((name, value));
        }
    }
    out
}

/// Builds the targets of one configuration for one camera.
struct Plan<'a> {
    camera: &'a CameraInfo,
    targets: Targets,
    problems: Vec<String>,
    notes: Vec<String>,
}

impl Plan<'_> {
    /// Sets `control` for `key`, which asks for `shown`: the camera must
    /// have the control and take the value.
    fn want(&mut self, key: &'static str, shown: &str, control: &'static str, value: Value) {
        let id = &self.camera.id;
        match self.camera.control(control) {
            None => self.problems.push(format!(
                "[capture] {key} = {shown}: camera {id} has no {control} control; it has: {}",
                self.camera.control_names()
            )),
            Some(info) if !info.takes(&value) => self.problems.push(format!(
                "[capture] {key} = {shown}: camera {id} takes {control} values {}",
                info.describe()
            )),
            Some(_) => {
                self.targets.insert(control, Target { key, value });
            }
        }
    }

    /// Sets `control` along with `key` where the camera has it (the manual
    /// mode that makes a fixed exposure take effect); older pipelines without
    /// it take the value alone.
    fn companion(&mut self, key: &'static str, control: &'static str, value: Value) {
        if self.camera.control(control).is_some_and(|info| info.takes(&value)) {
            self.targets.insert(control, Target { key, value });
        }
    }

    /// FrameDurationLimits for the rate: a set rate the camera cannot do is
    /// an error whatever `strict_controls` says (frames would come at
    /// another rate than asked); with no rate set, the camera's highest up
    /// to 30 fps.
    fn rate(&mut self, rate: Option<Rate>) -> anyhow::Result<()> {
        let id = &self.camera.id;
        let Some((lowest, highest)) = self.camera.rate_range() else {
            if let Some(Rate::Fps(fps)) = rate {
                self.notes.push(format!("camera {id} has no frame rate control; it runs at its own rate, not {fps} fps"));
            }
            return Ok(());
        };
        let fps = match rate {
            Some(Rate::Max) => return Ok(()),
            Some(Rate::Fps(fps)) => {
                let duration = (1e6 / fps).round();
                if !(1e6 / highest - 0.5..=1e6 / lowest + 0.5).contains(&duration) {
                    anyhow::bail!(
                        "camera {id} cannot run at {fps} fps: it supports {lowest:.2} to {highest:.2} fps at this size; \
                         set [capture] rate (--rate) in that range, or leave it out for the camera's highest up to {DEFAULT_MAX_FPS}"
                    );
                }
                fps
            }
            None => {
                let fps = highest.min(DEFAULT_MAX_FPS);
                let why = if highest < DEFAULT_MAX_FPS { "the most it can do at this size" } else { "its highest up to 30" };
                self.notes.push(format!("camera {id} runs at {fps:.2} fps, {why}: no [capture] rate is set"));
                fps
            }
        };
        let duration = (1e6 / fps).round() as i64;
        self.targets.insert("FrameDurationLimits", Target { key: "rate", value: Value::Ints(vec![duration, duration]) });
        Ok(())
    }

    fn hdr(&mut self, hdr: Option<Hdr>) {
        let shown = |h: Hdr| format!("\"{h}\"");
        match hdr {
            None => {}
            Some(Hdr::Sensor) if !self.camera.has_sensor_hdr() => self.problems.push(format!(
                "[capture] hdr = \"sensor\": camera {} ({}) has no HDR mode of its own; that is the Camera Module 3's (imx708); \
                 \"single-exp\" is the Pi 5's HDR",
                self.camera.id, self.camera.model
            )),
            // The sensor's mode was switched before the camera opened.
            Some(Hdr::Sensor) => {}
            Some(Hdr::Auto) if self.camera.has_sensor_hdr() => {}
            Some(Hdr::Auto) => {
                self.companion("hdr", "HdrMode", Value::Int(Hdr::SingleExp.value()));
                if !self.targets.contains_key("HdrMode") {
                    self.notes.push(format!("[capture] hdr = \"auto\": camera {} has no HDR mode; running without", self.camera.id));
                }
            }
            Some(h @ Hdr::SingleExp) => self.want("hdr", &shown(h), "HdrMode", Value::Int(h.value())),
            Some(h @ Hdr::Off) => self.companion("hdr", "HdrMode", Value::Int(h.value())),
        }
    }

    /// AfMode, AfRange, LensPosition and the scan trigger. A camera with
    /// autofocus and neither `autofocus_mode` nor `lens_position` set
    /// focuses continuously, as with rpicam-apps.
    fn focus(&mut self, capture: &CaptureConfig) {
        match (capture.autofocus_mode, capture.lens_position) {
            (Some(mode), _) => self.want("autofocus_mode", &format!("\"{mode}\""), "AfMode", Value::Int(mode.value())),
            (None, Some(_)) => self.companion("lens_position", "AfMode", Value::Int(AfMode::Manual.value())),
            (None, None) => self.companion("autofocus_mode", "AfMode", Value::Int(AfMode::Continuous.value())),
        }
        if capture.autofocus_mode == Some(AfMode::Auto) {
            self.companion("autofocus_mode", "AfTrigger", Value::Int(0));
        }
        match capture.lens_position {
            Some(LensPosition::Dioptres(d)) => self.want("lens_position", &d.to_string(), "LensPosition", Value::Float(d)),
            Some(LensPosition::Default) => {
                let default = self.camera.control("LensPosition").map_or(Value::None, |c| c.default.clone());
                self.want("lens_position", "\"default\"", "LensPosition", default);
            }
            None => {}
        }
    }

    /// ScalerCrop from fractions of the largest crop the camera offers.
    fn crop(&mut self, roi: Roi) {
        let shown = format!("\"{roi}\"");
        let Some(info) = self.camera.control("ScalerCrop") else {
            return self.want("roi", &shown, "ScalerCrop", Value::None);
        };
        let Some(area) = info.max.rect().filter(|a| a.width > 0 && a.height > 0) else {
            return self.problems.push(format!(
                "[capture] roi = {shown}: camera {} does not say how large its sensor is (ScalerCrop {})",
                self.camera.id,
                info.describe()
            ));
        };
        let crop = Rect {
            x: area.x + (roi.x * area.width as f32) as i32,
            y: area.y + (roi.y * area.height as f32) as i32,
            width: (roi.width * area.width as f32) as u32,
            height: (roi.height * area.height as f32) as u32,
        };
        // The crop is checked against the sensor here, not by ControlInfo's
        // min/max, which are rectangles.
        self.targets.insert("ScalerCrop", Target { key: "roi", value: Value::Rect(crop) });
    }
}

/// Every key of this module, for `camnode cameras` and the docs test.
pub const KEYS: &[(&str, &str)] = &[
    ("rate", "FrameDurationLimits"),
    ("shutter", "ExposureTime"),
    ("gain", "AnalogueGain"),
    ("ev", "ExposureValue"),
    ("metering", "AeMeteringMode"),
    ("exposure", "AeExposureMode"),
    ("awb", "AwbMode"),
    ("awbgains", "ColourGains"),
    ("denoise", "NoiseReductionMode"),
    ("sharpness", "Sharpness"),
    ("contrast", "Contrast"),
    ("brightness", "Brightness"),
    ("saturation", "Saturation"),
    ("hdr", "HdrMode"),
    ("autofocus_mode", "AfMode"),
    ("autofocus_range", "AfRange"),
    ("lens_position", "LensPosition"),
    ("roi", "ScalerCrop"),
];

/// The `[capture]` key that sets a libcamera control, if one does.
pub fn key_of(control: &str) -> Option<&'static str> {
    KEYS.iter().find(|(_, c)| *c == control).map(|(k, _)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ConfigOrigin;

    fn range(name: &str, min: Value, max: Value, default: Value) -> ControlInfo {
        ControlInfo { name: name.into(), id: 0, min, max, default, values: Vec::new() }
    }

    fn choice(name: &str, values: &[i64], default: i64) -> ControlInfo {
        let values = values.iter().map(|&v| Choice { value: Value::Int(v), name: String::new() }).collect();
        ControlInfo { name: name.into(), id: 0, min: Value::None, max: Value::None, default: Value::Int(default), values }
    }

    /// Shaped after what the Raspberry Pi pipeline reports for a Camera
    /// Module 3 (imx708) at 1536x864, as picamera2's `camera_controls` shows it.
    fn camera_module_3() -> CameraInfo {
        let f = Value::Float;
        let sensor = Rect { x: 0, y: 0, width: 4608, height: 2592 };
        let controls = vec![
            range("ExposureTime", Value::Int(26), Value::Int(220_417_486), Value::Int(20000)),
            choice("ExposureTimeMode", &[0, 1], 0),
            range("AnalogueGain", f(1.12), f(16.0), f(1.0)),
            choice("AnalogueGainMode", &[0, 1], 0),
            range("ExposureValue", f(-8.0), f(8.0), f(0.0)),
            choice("AeMeteringMode", &[0, 1, 2, 3], 0),
            choice("AeExposureMode", &[0, 1, 2, 3], 0),
            choice("AwbMode", &[0, 1, 2, 3, 4, 5, 6, 7], 0),
            range("AwbEnable", Value::Bool(false), Value::Bool(true), Value::None),
            range("ColourGains", f(0.0), f(32.0), Value::None),
            choice("NoiseReductionMode", &[0, 1, 2, 3, 4], 0),
            range("Brightness", f(-1.0), f(1.0), f(0.0)),
            range("Contrast", f(0.0), f(32.0), f(1.0)),
            range("Saturation", f(0.0), f(32.0), f(1.0)),
            range("Sharpness", f(0.0), f(16.0), f(1.0)),
            choice("HdrMode", &[0, 1, 2, 3, 4], 0),
            choice("AfMode", &[0, 1, 2], 0),
            choice("AfRange", &[0, 1, 2], 0),
            choice("AfTrigger", &[0, 1], 0),
            range("LensPosition", f(0.0), f(15.0), f(1.0)),
            range("ScalerCrop", Value::Rect(Rect { width: 128, height: 128, ..sensor }), Value::Rect(sensor), Value::Rect(sensor)),
            range("FrameDurationLimits", Value::Int(8333), Value::Int(120_000_000), Value::None),
        ];
        CameraInfo { id: "/base/soc/i2c0mux/i2c@1/imx708@1a".into(), model: "imx708".into(), controls }
    }

    /// libcamera's virtual camera: a frame rate and face detection, nothing else.
    fn virtual_camera(fps: (i64, i64)) -> CameraInfo {
        let controls = vec![
            choice("FaceDetectMode", &[0], 0),
            range("FrameDurationLimits", Value::Int(1_000_000 / fps.1), Value::Int(1_000_000 / fps.0), Value::None),
        ];
        CameraInfo { id: "pattern".into(), model: "camnode test pattern".into(), controls }
    }

    fn capture(toml_text: &str) -> CaptureConfig {
        let capture: CaptureConfig = toml::from_str(toml_text).unwrap();
        let origin = ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        capture.check(&mut check);
        check.finish().unwrap();
        capture
    }

    fn target(planned: &Planned, control: &str) -> Option<(&'static str, Value)> {
        planned.targets.get(control).map(|t| (t.key, t.value.clone()))
    }

    #[test]
    fn every_key_sets_the_control_rpicam_apps_sets() {
        let config = capture(
            "rate = 25\nshutter = \"20ms\"\ngain = 2\nev = -0.5\nmetering = \"spot\"\nexposure = \"sport\"\n\
             awb = \"daylight\"\nawbgains = \"1.5,1.2\"\ndenoise = \"cdn_fast\"\nsharpness = 1.5\ncontrast = 1.2\n\
             brightness = 0.1\nsaturation = 0\nhdr = \"single-exp\"\nautofocus_range = \"macro\"\nlens_position = 0.5\n\
             roi = [0.25, 0.25, 0.5, 0.5]\n",
        );
        let planned = targets(&config, &camera_module_3()).unwrap();
        let expected = [
            ("FrameDurationLimits", "rate", Value::Ints(vec![40000, 40000])),
            ("ExposureTime", "shutter", Value::Int(20000)),
            ("ExposureTimeMode", "shutter", Value::Int(1)),
            ("AnalogueGain", "gain", Value::Float(2.0)),
            ("AnalogueGainMode", "gain", Value::Int(1)),
            ("ExposureValue", "ev", Value::Float(-0.5)),
            ("AeMeteringMode", "metering", Value::Int(1)),
            ("AeExposureMode", "exposure", Value::Int(1)),
            ("AwbMode", "awb", Value::Int(5)),
            ("ColourGains", "awbgains", Value::Floats(vec![1.5, 1.2])),
            ("AwbEnable", "awbgains", Value::Bool(false)),
            ("NoiseReductionMode", "denoise", Value::Int(1)),
            ("Sharpness", "sharpness", Value::Float(1.5)),
            ("Contrast", "contrast", Value::Float(1.2)),
            ("Brightness", "brightness", Value::Float(0.1)),
            ("Saturation", "saturation", Value::Float(0.0)),
            ("HdrMode", "hdr", Value::Int(3)),
            ("AfRange", "autofocus_range", Value::Int(1)),
            // A fixed lens position switches autofocus to manual.
            ("AfMode", "lens_position", Value::Int(0)),
            ("LensPosition", "lens_position", Value::Float(0.5)),
            ("ScalerCrop", "roi", Value::Rect(Rect { x: 1152, y: 648, width: 2304, height: 1296 })),
        ];
        for (control, key, value) in &expected {
            assert_eq!(target(&planned, control), Some((*key, value.clone())), "{control}");
        }
        assert_eq!(planned.targets.len(), expected.len(), "{:?}", planned.targets.keys());
        assert!(planned.notes.is_empty() && planned.left_out.is_empty());
    }

    #[test]
    fn autofocus_is_continuous_unless_told_otherwise_and_auto_scans_once() {
        let cm3 = camera_module_3();
        let planned = targets(&capture(""), &cm3).unwrap();
        assert_eq!(target(&planned, "AfMode"), Some(("autofocus_mode", Value::Int(2))));
        let planned = targets(&capture("autofocus_mode = \"auto\"\n"), &cm3).unwrap();
        assert_eq!(target(&planned, "AfMode"), Some(("autofocus_mode", Value::Int(1))));
        assert_eq!(target(&planned, "AfTrigger"), Some(("autofocus_mode", Value::Int(0))));
        let planned = targets(&capture("lens_position = \"default\"\n"), &cm3).unwrap();
        assert_eq!(target(&planned, "LensPosition"), Some(("lens_position", Value::Float(1.0))));
        // A camera without autofocus gets no AfMode, and no complaint.
        let planned = targets(&capture(""), &virtual_camera((1, 60))).unwrap();
        assert!(target(&planned, "AfMode").is_none());
    }

    #[test]
    fn a_control_the_camera_lacks_names_key_camera_and_what_it_has() {
        let config = capture("awb = \"daylight\"\nbrightness = 0.2\n");
        let err = targets(&config, &virtual_camera((1, 60))).unwrap_err().to_string();
        assert!(err.contains("[capture] awb = \"daylight\": camera pattern has no AwbMode control"), "{err}");
        assert!(err.contains("[capture] brightness = 0.2: camera pattern has no Brightness control"), "{err}");
        assert!(err.contains("it has: FaceDetectMode, FrameDurationLimits"), "{err}");
        assert!(err.contains("strict_controls = false"), "{err}");

        let lenient = capture("awb = \"daylight\"\nstrict_controls = false\n");
        let planned = targets(&lenient, &virtual_camera((1, 60))).unwrap();
        assert_eq!(planned.left_out.len(), 1);
        assert!(planned.left_out[0].contains("no AwbMode control") && planned.left_out[0].contains("left out"), "{:?}", planned.left_out);
        assert!(target(&planned, "AwbMode").is_none() && target(&planned, "FrameDurationLimits").is_some());
    }

    #[test]
    fn values_outside_the_cameras_range_are_refused_with_the_range() {
        let cm3 = camera_module_3();
        let err = targets(&capture("gain = 64\n"), &cm3).unwrap_err().to_string();
        assert!(err.contains("[capture] gain = 64: camera") && err.contains("takes AnalogueGain values 1.12 to 16, default 1"), "{err}");
        let mut camera = camera_module_3();
        camera.controls.retain(|c| c.name != "AwbMode");
        camera.controls.push(choice("AwbMode", &[0, 5], 0));
        let err = targets(&capture("awb = \"cloudy\"\n"), &camera).unwrap_err().to_string();
        assert!(err.contains("[capture] awb = \"cloudy\"") && err.contains("takes AwbMode values 0, 5"), "{err}");
        let err = targets(&capture("hdr = \"sensor\"\n"), &virtual_camera((1, 60))).unwrap_err().to_string();
        assert!(err.contains("no HDR mode of its own") && err.contains("imx708"), "{err}");
    }

    #[test]
    fn without_a_rate_a_camera_runs_at_its_highest_up_to_30() {
        let none = capture("");
        let planned = targets(&none, &virtual_camera((1, 60))).unwrap();
        assert_eq!(target(&planned, "FrameDurationLimits"), Some(("rate", Value::Ints(vec![33333, 33333]))));
        assert!(planned.notes[0].contains("30.00 fps, its highest up to 30"), "{:?}", planned.notes);
        let planned = targets(&none, &virtual_camera((10, 10))).unwrap();
        assert_eq!(target(&planned, "FrameDurationLimits"), Some(("rate", Value::Ints(vec![100000, 100000]))));
        assert!(planned.notes[0].contains("10.00 fps, the most it can do"), "{:?}", planned.notes);
        // A rate the user set stays an error when the camera cannot do it,
        // strict or not; "max" leaves the camera its own rate.
        let err = targets(&capture("rate = 30\nstrict_controls = false\n"), &virtual_camera((10, 10))).unwrap_err().to_string();
        assert!(err.contains("cannot run at 30 fps: it supports 10.00 to 10.00 fps"), "{err}");
        assert!(target(&targets(&capture("rate = \"max\"\n"), &virtual_camera((10, 10))).unwrap(), "FrameDurationLimits").is_none());
    }

    #[test]
    fn changes_send_what_changed_and_undo_what_was_removed() {
        let cm3 = camera_module_3();
        let before = targets(&capture("shutter = 20000\nawbgains = \"1.5,1.2\"\nbrightness = 0.2\nautofocus_mode = \"auto\"\n"), &cm3).unwrap();
        let after = targets(&capture("brightness = 0.3\nautofocus_mode = \"auto\"\n"), &cm3).unwrap();
        let mut sent = changes(&before.targets, &after.targets, &cm3);
        sent.sort_by(|a, b| a.0.cmp(b.0));
        assert_eq!(sent, vec![
            ("AwbEnable", Value::Bool(true)),
            ("Brightness", Value::Float(0.3)),
            ("ExposureTimeMode", Value::Int(0)),
        ]);
        // At start everything goes; nothing when nothing changed.
        assert_eq!(changes(&Targets::new(), &after.targets, &cm3).len(), after.targets.len());
        assert!(changes(&after.targets, &after.targets, &cm3).is_empty());
        // A removed key without an automatic mode goes back to its default.
        let plain = targets(&capture(""), &cm3).unwrap();
        assert!(changes(&after.targets, &plain.targets, &cm3).contains(&("Brightness", Value::Float(0.0))));
    }

    #[test]
    fn values_parse_as_rpicam_apps_writes_them() {
        assert_eq!("20000".parse::<Shutter>().unwrap().micros, 20000);
        assert_eq!("20ms".parse::<Shutter>().unwrap().micros, 20000);
        assert_eq!("1.5s".parse::<Shutter>().unwrap().micros, 1_500_000);
        assert!("fast".parse::<Shutter>().unwrap_err().contains("microseconds"));
        assert_eq!("0.5".parse::<LensPosition>(), Ok(LensPosition::Dioptres(0.5)));
        assert_eq!("default".parse::<LensPosition>(), Ok(LensPosition::Default));
        assert_eq!("1.5,1.2".parse::<AwbGains>(), Ok(AwbGains { red: 1.5, blue: 1.2 }));
        assert!("1.5".parse::<AwbGains>().is_err());
        assert!("0.5,0.5,0.6,0.5".parse::<Roi>().unwrap_err().contains("inside 0..1"));
        assert_eq!("sport".parse::<ExposureMode>().unwrap().value(), ExposureMode::Short.value());
        let err = "banana".parse::<Awb>().unwrap_err();
        assert_eq!(err, "awb \"banana\" is not one of: auto, normal, incandescent, tungsten, fluorescent, indoor, daylight, cloudy, custom");
    }

    #[test]
    fn printed_values_read_back() {
        let config = capture("shutter = \"20ms\"\nawbgains = [1.5, 1.2]\nroi = \"0.1,0.2,0.3,0.4\"\nlens_position = \"default\"\nawb = \"cloudy\"\n");
        let again: CaptureConfig = toml::from_str(&toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(again, config);
        assert_eq!(config.controls_set(), ["shutter", "awb", "awbgains", "lens_position", "roi"]);
    }

    #[test]
    fn contradictions_and_nonsense_fail_at_load() {
        let config: CaptureConfig = toml::from_str("lens_position = 2\nautofocus_mode = \"continuous\"\ngain = 0.5\nbrightness = 3\n").unwrap();
        let origin = ConfigOrigin::default();
        let mut check = Checker::new(&origin);
        config.check(&mut check);
        let err = check.finish().unwrap_err().to_string();
        assert!(err.contains("[capture] lens_position = 2") && err.contains("autofocus_mode = \"manual\""), "{err}");
        assert!(err.contains("[capture] gain = 0.5") && err.contains("[capture] brightness = 3"), "{err}");
    }
}
