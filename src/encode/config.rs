//! The `[encode]` config block: which frames are encoded, and how.

use serde::{Deserialize, Serialize};

use crate::settings::{from_str_via_serde, Checker};

/// `[encode]`: which frames are encoded, and how.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncodeConfig {
    /// Which frames to send: "motion" (while moving, plus events), "all", or "none" (events only) (default "motion").
    pub send: SendPolicy,
    /// Payload format: "jpg" or "raw" (BGR arrays, as imagezmq's send_image) (default "jpg").
    pub format: Format,
    /// JPEG quality, 1..100 (default 90).
    pub quality: u8,
    /// Encoder threads: 1 encodes on the capture thread; more encode frames
    /// in parallel and still send them in capture order; 0 starts one per CPU
    /// core, at most 4, since a 1080p JPEG costs far more than the rest of a
    /// frame's path (default 0).
    pub workers: usize,
}

impl Default for EncodeConfig {
    fn default() -> Self {
        EncodeConfig { send: SendPolicy::Motion, format: Format::Jpg, quality: 90, workers: 0 }
    }
}

impl EncodeConfig {
    pub(crate) fn check(&self, check: &mut Checker) {
        check.range("encode", "quality", self.quality as f64, 1.0, 100.0);
        check.range("encode", "workers", self.workers as f64, 0.0, 16.0);
    }
}

/// Which frames are encoded and sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SendPolicy {
    Motion,
    All,
    None,
}

/// Payload format of image messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Jpg,
    Raw,
}

from_str_via_serde! {
    SendPolicy => "send policy": "motion, all, none",
    Format => "format": "jpg, raw",
}
