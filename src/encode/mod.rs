//! Turning frames into message payloads: JPEG straight from the YUV planes
//! with libjpeg-turbo (no RGB step), or BGR arrays for hubs that want numpy
//! images (imagezmq's `send_image`). One encoder is reused for every frame:
//! its compressor, scratch buffers and output stay allocated. [`EncodePool`]
//! runs one encoder per worker thread and keeps the output in capture order.

mod pool;
mod raw;

use anyhow::{Context, Result};
use turbojpeg::{Compressor, Subsamp, YuvPlanesImage};

use crate::config::Format;
use crate::frame::{chroma_size, Frame, PixelLayout};
pub use pool::{worker_count, EncodePool};
pub use raw::i420_to_bgr;

/// The payload encoder a run uses, chosen by `[encode] format`.
pub enum Encoder {
    Jpeg(JpegEncoder),
    /// BGR arrays; the header carries dtype and shape.
    Raw,
}

impl Encoder {
    pub fn new(format: Format, quality: u8) -> Result<Self> {
        Ok(match format {
            Format::Jpg => Encoder::Jpeg(JpegEncoder::new(quality)?),
            Format::Raw => Encoder::Raw,
        })
    }

    /// Encodes `frame` into `out` (cleared first).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        match self {
            Encoder::Jpeg(jpeg) => jpeg.encode(frame, out),
            Encoder::Raw => {
                i420_to_bgr(frame, out);
                Ok(())
            }
        }
    }
}

/// The most bytes a payload of `format` can take for a `width` x `height`
/// frame. Payload buffers reserve this once, so that a recycled one never
/// grows, whatever the next frame compresses to; only the part written ever
/// becomes resident.
pub fn payload_room(format: Format, width: usize, height: usize) -> usize {
    let bgr = width * height * 3;
    match format {
        Format::Jpg => turbojpeg::compressed_buf_len(width, height, Subsamp::Sub2x2).unwrap_or(bgr),
        Format::Raw => bgr,
    }
}

/// A reusable JPEG encoder.
pub struct JpegEncoder {
    compressor: Compressor,
    /// Worst-case-sized output, allocated once per frame size.
    scratch: Vec<u8>,
    scratch_for: (usize, usize),
    /// Deinterleaved chroma for NV12 frames.
    u: Vec<u8>,
    v: Vec<u8>,
}

impl JpegEncoder {
    pub fn new(quality: u8) -> Result<Self> {
        let mut compressor = Compressor::new().context("cannot create a JPEG compressor")?;
        compressor.set_quality(quality as i32)?;
        compressor.set_subsamp(Subsamp::Sub2x2)?;
        Ok(JpegEncoder { compressor, scratch: Vec::new(), scratch_for: (0, 0), u: Vec::new(), v: Vec::new() })
    }

    /// Encodes `frame` and appends the JPEG to `out` (cleared first).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = chroma_size(w, h);
        if self.scratch_for != (w, h) {
            // Zeroed pages are not resident until written, so the worst case costs little.
            self.scratch = vec![0; self.compressor.buf_len(w, h)?];
            self.scratch_for = (w, h);
        }
        let (u, v, chroma_stride) = match frame.layout {
            PixelLayout::I420 => (frame.u.data, frame.v.data, (frame.u.stride, frame.v.stride)),
            PixelLayout::Nv12 => {
                self.u.resize(cw * ch, 0);
                self.v.resize(cw * ch, 0);
                for row in 0..ch {
                    let uv = frame.u.row(row, cw * 2);
                    for (i, pair) in uv.chunks_exact(2).enumerate() {
                        self.u[row * cw + i] = pair[0];
                        self.v[row * cw + i] = pair[1];
                    }
                }
                (&self.u[..], &self.v[..], (cw, cw))
            }
        };
        let image = YuvPlanesImage {
            y_plane: frame.y.data,
            u_plane: u,
            v_plane: v,
            width: w,
            height: h,
            y_stride: frame.y.stride,
            u_stride: chroma_stride.0,
            v_stride: chroma_stride.1,
            subsamp: Subsamp::Sub2x2,
        };
        let len = self
            .compressor
            .compress_yuv_planes_to_slice(&image, &mut self.scratch)
            .with_context(|| format!("cannot encode frame {} ({w}x{h})", frame.seq))?;
        out.clear();
        out.extend_from_slice(&self.scratch[..len]);
        Ok(())
    }
}

/// A tiny valid JPEG, the payload of event and heartbeat messages (imagenode
/// sends a 3x3 black image with its texts; hubs that decode everything still can).
pub fn placeholder_jpeg() -> Result<Vec<u8>> {
    let gray = [0u8; 8 * 8 * 3 / 2];
    let frame = crate::frame::Frame {
        width: 8,
        height: 8,
        layout: PixelLayout::I420,
        y: crate::frame::Plane { data: &gray[..64], stride: 8 },
        u: crate::frame::Plane { data: &gray[64..80], stride: 4 },
        v: crate::frame::Plane { data: &gray[80..], stride: 4 },
        seq: 0,
        timestamp: 0.0,
    };
    let mut out = Vec::new();
    JpegEncoder::new(50)?.encode(&frame, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{FrameSource, Synthetic};
    use crate::frame::{FrameBuf, Plane};

    #[test]
    fn jpeg_decodes_to_the_frame_size_and_content() {
        let mut scene = Synthetic::new(320, 240, 3);
        let frame = scene.next_frame().unwrap().unwrap();
        let mut encoder = JpegEncoder::new(90).unwrap();
        let mut jpeg = Vec::new();
        encoder.encode(&frame, &mut jpeg).unwrap();
        let decoded = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::GRAY).unwrap();
        assert_eq!((decoded.width, decoded.height), (320, 240));
        let mean_err: f64 = decoded.pixels.iter().zip(frame.y.data).map(|(a, b)| a.abs_diff(*b) as f64).sum::<f64>()
            / (320.0 * 240.0);
        assert!(mean_err < 3.0, "decoded luma differs by {mean_err} on average");
    }

    #[test]
    fn nv12_and_i420_encode_alike() {
        let mut buf = FrameBuf::new(64, 32);
        for (i, p) in buf.data.iter_mut().enumerate() {
            *p = (i * 7 % 251) as u8;
        }
        let i420 = buf.as_frame();
        let mut uv = Vec::new();
        for (a, b) in i420.u.data.iter().zip(i420.v.data) {
            uv.extend_from_slice(&[*a, *b]);
        }
        let nv12 = Frame { layout: PixelLayout::Nv12, u: Plane { data: &uv, stride: 64 }, v: Plane { data: &[], stride: 0 }, ..i420 };
        let mut encoder = JpegEncoder::new(90).unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encoder.encode(&i420, &mut a).unwrap();
        encoder.encode(&nv12, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn placeholder_is_a_jpeg() {
        let jpeg = placeholder_jpeg().unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert_eq!(turbojpeg::read_header(&jpeg).unwrap().width, 8);
    }
}
