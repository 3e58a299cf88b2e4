//! The `[capture]` config block: where frames come from, at what size and
//! rate, and how many, and the camera controls (see [`super::controls`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::controls::{self, AfMode, AfRange, Awb, AwbGains, Denoise, ExposureMode, Hdr, LensPosition, Metering, Roi, Shutter};
use super::{parse_size, SourceSpec};
use crate::flip::Flip;
use crate::settings::{number_or_text, serde_as_string, Checker};

/// `[capture]`: where frames come from and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Frame source (default "synthetic:640x480").
    pub source: SourceSpec,
    /// Camera capture size as "WxH" (cameras only; default: the camera's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Frames per second: paces file sources, sets a camera's frame rate; "max" for as fast as possible
    /// (default: files 30, cameras their highest rate up to 30 at the chosen size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// Stop after this many frames; 0 runs until the source ends or a signal (default 0).
    pub frames: u64,
    /// Flip: "none", "h", "v" or "180" (default "none").
    pub flip: Flip,
    /// Seed of the synthetic scene (default 1).
    pub seed: u64,
    // Camera controls, named as rpicam-apps names its options; unset leaves
    // the camera's own automatic behaviour.
    /// Fixed exposure time: microseconds, or with a unit ("20ms") (`--shutter`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shutter: Option<Shutter>,
    /// Fixed analogue gain, 1.0 = none (`--gain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gain: Option<f32>,
    /// Exposure compensation in stops, -10 to 10 (`--ev`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ev: Option<f32>,
    /// Metering: "centre", "spot", "average" (or "matrix"), "custom" (`--metering`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metering: Option<Metering>,
    /// Exposure profile: "normal", "sport" (or "short"), "long", "custom" (`--exposure`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<ExposureMode>,
    /// White balance: "auto", "incandescent", "tungsten", "fluorescent", "indoor", "daylight", "cloudy", "custom" (`--awb`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awb: Option<Awb>,
    /// Fixed red and blue gains, "1.5,1.2"; turns automatic white balance off (`--awbgains`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub awbgains: Option<AwbGains>,
    /// Noise reduction: "auto", "off", "cdn_off", "cdn_fast", "cdn_hq" (`--denoise`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denoise: Option<Denoise>,
    /// Sharpening, 1.0 = normal (`--sharpness`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharpness: Option<f32>,
    /// Contrast, 1.0 = normal (`--contrast`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contrast: Option<f32>,
    /// Brightness, -1.0 to 1.0, 0 = normal (`--brightness`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub brightness: Option<f32>,
    /// Colour saturation, 1.0 = normal, 0 = greyscale (`--saturation`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<f32>,
    /// HDR: "off", "auto", "sensor" (Camera Module 3), "single-exp" (Pi 5) (`--hdr`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hdr: Option<Hdr>,
    /// Autofocus: "manual", "auto" (one scan), "continuous" (`--autofocus-mode`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autofocus_mode: Option<AfMode>,
    /// Autofocus distances: "normal", "macro", "full" (`--autofocus-range`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autofocus_range: Option<AfRange>,
    /// Fixed focus in dioptres (0 = infinity, 2 = 50 cm), or "default" (`--lens-position`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lens_position: Option<LensPosition>,
    /// Digital zoom: "x,y,w,h" in fractions of the sensor, applied as ScalerCrop (`--roi`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<Roi>,
    /// A control the camera lacks, or a value out of its range, stops camnode;
    /// false runs without that key after a warning (default true).
    pub strict_controls: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            source: SourceSpec::Synthetic { width: 640, height: 480 },
            size: None,
            rate: None,
            frames: 0,
            flip: Flip::None,
            seed: 1,
            shutter: None,
            gain: None,
            ev: None,
            metering: None,
            exposure: None,
            awb: None,
            awbgains: None,
            denoise: None,
            sharpness: None,
            contrast: None,
            brightness: None,
            saturation: None,
            hdr: None,
            autofocus_mode: None,
            autofocus_range: None,
            lens_position: None,
            roi: None,
            strict_controls: true,
        }
    }
}

/// The pace of sources that do not keep their own (files, pipes, the
/// synthetic scene) when no rate is set.
pub const DEFAULT_FILE_FPS: f64 = 30.0;

impl CaptureConfig {
    pub(crate) fn check(&self, check: &mut Checker) {
        controls::check(self, check);
    }

    /// The camera control keys this section sets, for messages.
    pub fn controls_set(&self) -> Vec<&'static str> {
        let table: toml::Table = toml::to_string(self).ok().and_then(|text| text.parse().ok()).unwrap_or_default();
        controls::KEYS.iter().map(|(key, _)| *key).filter(|key| *key != "rate" && table.contains_key(*key)).collect()
    }
}

/// Frames per second, or as fast as possible.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    Fps(f64),
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        match s.parse::<f64>() {
            Ok(fps) if fps > 0.0 && fps <= 1000.0 => Ok(Rate::Fps(fps)),
            _ => Err(format!("rate '{s}' must be frames per second between 0 and 1000, or \"max\"")),
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Fps(fps) => write!(f, "{fps}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::Fps(fps) => s.serialize_f64(*fps),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        number_or_text(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// A capture size, "WxH".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_size(s).map(|(width, height)| Size { width, height })
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

serde_as_string!(Size, SourceSpec);
