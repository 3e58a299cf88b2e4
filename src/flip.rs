//! Software flip of a YUV 4:2:0 frame, for cameras mounted upside down or
//! seen through a mirror. A camera whose ISP can flip does it for free instead
//! (see the libcamera source); this is the fallback for every other source.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::frame::{chroma_size, Frame, FrameBuf, PixelLayout, Plane};

/// Which way to flip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Flip {
    #[default]
    #[serde(rename = "none")]
    None,
    /// Mirror left-right.
    #[serde(rename = "h")]
    Horizontal,
    /// Mirror top-bottom.
    #[serde(rename = "v")]
    Vertical,
    /// Both: the camera is upside down.
    #[serde(rename = "180")]
    Rotate180,
}

impl Flip {
    pub fn horizontal(self) -> bool {
        matches!(self, Flip::Horizontal | Flip::Rotate180)
    }

    pub fn vertical(self) -> bool {
        matches!(self, Flip::Vertical | Flip::Rotate180)
    }
}

impl FromStr for Flip {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Flip::None),
            "h" => Ok(Flip::Horizontal),
            "v" => Ok(Flip::Vertical),
            "180" => Ok(Flip::Rotate180),
            _ => Err(format!("flip '{s}' is not one of none, h, v, 180")),
        }
    }
}

impl fmt::Display for Flip {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Flip::None => "none",
            Flip::Horizontal => "h",
            Flip::Vertical => "v",
            Flip::Rotate180 => "180",
        })
    }
}

/// Writes `frame` flipped into `out` (packed I420). NV12 chroma is
/// deinterleaved on the way, so the result is always I420.
pub fn flip_into(frame: &Frame, flip: Flip, out: &mut FrameBuf) {
    out.resize(frame.width, frame.height);
    out.seq = frame.seq;
    out.timestamp = frame.timestamp;
    let (w, h) = (frame.width, frame.height);
    let (cw, ch) = chroma_size(w, h);
    let (y, u, v) = out.planes_mut();
    flip_plane(&frame.y, w, h, 1, 0, flip, y);
    match frame.layout {
        PixelLayout::I420 => {
            flip_plane(&frame.u, cw, ch, 1, 0, flip, u);
            flip_plane(&frame.v, cw, ch, 1, 0, flip, v);
        }
        PixelLayout::Nv12 => {
            flip_plane(&frame.u, cw, ch, 2, 0, flip, u);
            flip_plane(&frame.u, cw, ch, 2, 1, flip, v);
        }
    }
}

/// Copies a `width` x `height` plane whose samples sit every `step` bytes,
/// starting at `offset` in each row, into a packed and flipped `out`.
fn flip_plane(src: &Plane, width: usize, height: usize, step: usize, offset: usize, flip: Flip, out: &mut [u8]) {
    for (row, dst) in out.chunks_exact_mut(width).take(height).enumerate() {
        let src_row = if flip.vertical() { height - 1 - row } else { row };
        let line = &src.row(src_row, width * step)[offset..];
        let samples = line.iter().step_by(step);
        if flip.horizontal() {
            for (d, s) in dst.iter_mut().rev().zip(samples) {
                *d = *s;
            }
        } else {
            for (d, s) in dst.iter_mut().zip(samples) {
                *d = *s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_4x2(y: &[u8; 8], u: &[u8; 2], v: &[u8; 2]) -> FrameBuf {
        let mut buf = FrameBuf::new(4, 2);
        buf.data[..8].copy_from_slice(y);
        buf.data[8..10].copy_from_slice(u);
        buf.data[10..12].copy_from_slice(v);
        buf
    }

    #[test]
    fn each_flip_moves_luma_and_chroma() {
        let src = frame_4x2(&[1, 2, 3, 4, 5, 6, 7, 8], &[10, 11], &[20, 21]);
        let mut out = FrameBuf::default();
        let cases = [
            (Flip::None, vec![1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 20, 21]),
            (Flip::Horizontal, vec![4, 3, 2, 1, 8, 7, 6, 5, 11, 10, 21, 20]),
            (Flip::Vertical, vec![5, 6, 7, 8, 1, 2, 3, 4, 10, 11, 20, 21]),
            (Flip::Rotate180, vec![8, 7, 6, 5, 4, 3, 2, 1, 11, 10, 21, 20]),
        ];
        for (flip, want) in cases {
            flip_into(&src.as_frame(), flip, &mut out);
            assert_eq!(&out.data[..], &want[..], "{flip}");
        }
    }

    #[test]
    fn nv12_is_flipped_and_deinterleaved() {
        let y = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let uv = [10u8, 20, 11, 21];
        let frame = Frame {
            width: 4,
            height: 2,
            layout: PixelLayout::Nv12,
            y: Plane { data: &y, stride: 4 },
            u: Plane { data: &uv, stride: 4 },
            v: Plane { data: &[], stride: 0 },
            seq: 0,
            timestamp: 0.0,
        };
        let mut out = FrameBuf::default();
        flip_into(&frame, Flip::Horizontal, &mut out);
        assert_eq!(&out.data[..], [4, 3, 2, 1, 8, 7, 6, 5, 11, 10, 21, 20]);
    }

    #[test]
    fn parses_config_names() {
        for s in ["none", "h", "v", "180"] {
            assert_eq!(s.parse::<Flip>().unwrap().to_string(), s);
        }
        assert!("90".parse::<Flip>().unwrap_err().contains("none, h, v, 180"));
    }
}
