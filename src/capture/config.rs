//! The `[capture]` config block: where frames come from, at what size and
//! rate, and how many.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{parse_size, SourceSpec};
use crate::flip::Flip;
use crate::settings::serde_as_string;

/// `[capture]`: where frames come from and how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaptureConfig {
    /// Frame source (default "synthetic:640x480").
    pub source: SourceSpec,
    /// Camera capture size as "WxH" (cameras only; default: the camera's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Size>,
    /// Frames per second: paces file sources, sets a camera's frame rate; "max" for as fast as possible (default 30).
    pub rate: Rate,
    /// Stop after this many frames; 0 runs until the source ends or a signal (default 0).
    pub frames: u64,
    /// Flip: "none", "h", "v" or "180" (default "none").
    pub flip: Flip,
    /// Seed of the synthetic scene (default 1).
    pub seed: u64,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            source: SourceSpec::Synthetic { width: 640, height: 480 },
            size: None,
            rate: Rate::Fps(30.0),
            frames: 0,
            flip: Flip::None,
            seed: 1,
        }
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
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Number(f64),
            Text(String),
        }
        let text = match Repr::deserialize(d)? {
            Repr::Number(n) => n.to_string(),
            Repr::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
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
