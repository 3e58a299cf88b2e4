//! Turning frames into message payloads: JPEG straight from the YUV planes
//! with libjpeg-turbo (no RGB step), or BGR arrays for hubs that want numpy
//! images (imagezmq's `send_image`). One encoder is reused for every frame:
//! its compressor, scratch buffers and output stay allocated. [`EncodePool`]
//! runs one encoder per worker thread and keeps the output in capture order.

mod config;
mod pool;
mod raw;

use std::ffi::{c_int, c_void, CStr};
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use turbojpeg::Subsamp;
use turbojpeg_sys as tj;

use crate::frame::{chroma_size, Frame, PixelLayout};
pub use config::{EncodeConfig, Format, SendPolicy};
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

    /// Sets the JPEG quality of the frames encoded from now on.
    pub fn set_quality(&mut self, quality: u8) -> Result<()> {
        match self {
            Encoder::Jpeg(jpeg) => jpeg.set_quality(quality),
            Encoder::Raw => Ok(()),
        }
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

/// A reusable JPEG encoder: one TurboJPEG compressor, driven through its C
/// API so that the JPEG is written straight into the message payload (the
/// `turbojpeg` crate only writes into initialised memory, which would mean
/// either a copy per frame or payload buffers written in full up front).
pub struct JpegEncoder {
    handle: NonNull<c_void>,
    /// Deinterleaved chroma for NV12 frames.
    u: Vec<u8>,
    v: Vec<u8>,
}

// SAFETY: the TurboJPEG instance is used only through `&mut self` and keeps
// no thread-local state, so it may move to an encoder worker thread.
unsafe impl Send for JpegEncoder {}

impl Drop for JpegEncoder {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed only here.
        unsafe { tj::tj3Destroy(self.handle.as_ptr()) }
    }
}

impl JpegEncoder {
    pub fn new(quality: u8) -> Result<Self> {
        // SAFETY: tj3Init takes a plain enum value; null means it failed.
        let handle = NonNull::new(unsafe { tj::tj3Init(tj::TJINIT_TJINIT_COMPRESS as c_int) })
            .context("cannot create a JPEG compressor (out of memory?)")?;
        let mut encoder = JpegEncoder { handle, u: Vec::new(), v: Vec::new() };
        // Never reallocate: the output is a payload buffer that holds the worst case.
        for (param, value) in [
            (tj::TJPARAM_TJPARAM_QUALITY, quality.into()),
            (tj::TJPARAM_TJPARAM_SUBSAMP, tj::TJSAMP_TJSAMP_420 as c_int),
            (tj::TJPARAM_TJPARAM_NOREALLOC, 1),
        ] {
            encoder.set(param, value).with_context(|| format!("cannot set up the JPEG compressor (quality {quality})"))?;
        }
        Ok(encoder)
    }

    /// Sets the quality of the frames encoded from now on.
    pub fn set_quality(&mut self, quality: u8) -> Result<()> {
        self.set(tj::TJPARAM_TJPARAM_QUALITY, quality.into()).with_context(|| format!("cannot set JPEG quality {quality}"))
    }

    fn set(&mut self, param: tj::TJPARAM, value: c_int) -> Result<()> {
        // SAFETY: a valid handle and a parameter id of this library version.
        if unsafe { tj::tj3Set(self.handle.as_ptr(), param as c_int, value) } != 0 {
            bail!("{}", self.last_error());
        }
        Ok(())
    }

    fn last_error(&self) -> String {
        // SAFETY: tj3GetErrorStr returns a NUL-terminated string owned by the instance.
        unsafe { CStr::from_ptr(tj::tj3GetErrorStr(self.handle.as_ptr())) }.to_string_lossy().into_owned()
    }

    /// Encodes `frame` into `out` (cleared first), which grows only if it
    /// holds less than [`payload_room`] for the frame.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        frame.validate()?;
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = chroma_size(w, h);
        let (u, v, chroma_strides) = match frame.layout {
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
        let planes = [frame.y.data.as_ptr(), u.as_ptr(), v.as_ptr()];
        let strides = [frame.y.stride, chroma_strides.0, chroma_strides.1].map(|s| c_int::try_from(s).unwrap_or(c_int::MAX));
        out.clear();
        out.reserve(payload_room(Format::Jpg, w, h));
        let mut jpeg = out.as_mut_ptr();
        let mut size = tj::size_t::try_from(out.capacity())?;
        // SAFETY: `validate` checked that each plane holds its rows at its
        // stride, which is all TurboJPEG reads; `jpeg` points to `size`
        // writable bytes, and with NOREALLOC TurboJPEG writes no more than
        // that (it fails instead) and never replaces the pointer.
        let status = unsafe {
            tj::tj3CompressFromYUVPlanes8(
                self.handle.as_ptr(),
                planes.as_ptr(),
                c_int::try_from(w)?,
                strides.as_ptr(),
                c_int::try_from(h)?,
                &mut jpeg,
                &mut size,
            )
        };
        if status != 0 {
            bail!("cannot encode frame {} ({w}x{h}): {}", frame.seq, self.last_error());
        }
        let size = usize::try_from(size)?;
        debug_assert!(jpeg == out.as_mut_ptr() && size <= out.capacity());
        // SAFETY: TurboJPEG wrote `size` bytes at the start of `out`'s buffer.
        unsafe { out.set_len(size) };
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
    fn writes_what_turbojpeg_writes_into_the_payload_it_is_given() {
        let mut scene = Synthetic::new(1920, 1080, 3);
        let frame = scene.next_frame().unwrap().unwrap();
        let image = turbojpeg::YuvPlanesImage {
            y_plane: frame.y.data,
            u_plane: frame.u.data,
            v_plane: frame.v.data,
            width: frame.width,
            height: frame.height,
            y_stride: frame.y.stride,
            u_stride: frame.u.stride,
            v_stride: frame.v.stride,
            subsamp: Subsamp::Sub2x2,
        };
        let mut reference = turbojpeg::Compressor::new().unwrap();
        reference.set_quality(90).unwrap();
        reference.set_subsamp(Subsamp::Sub2x2).unwrap();
        let expected = reference.compress_yuv_planes_to_vec(&image).unwrap();
        let mut payload = Vec::with_capacity(payload_room(Format::Jpg, 1920, 1080));
        let buffer = payload.as_ptr();
        let mut encoder = JpegEncoder::new(90).unwrap();
        for _ in 0..2 {
            encoder.encode(&frame, &mut payload).unwrap();
            assert!(payload == expected, "the JPEG differs from the turbojpeg crate's");
            assert_eq!(payload.as_ptr(), buffer, "the payload buffer was replaced");
        }
    }

    #[test]
    fn a_bad_frame_or_quality_is_an_error() {
        let buf = FrameBuf::new(64, 32);
        let frame = buf.as_frame();
        let short = Frame { y: Plane { data: &frame.y.data[..100], stride: 64 }, ..frame };
        let err = JpegEncoder::new(90).unwrap().encode(&short, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("Y plane too small"), "{err}");
        let err = JpegEncoder::new(0).err().expect("quality 0 was accepted");
        assert!(err.to_string().contains("quality 0"), "{err}");
    }

    #[test]
    fn placeholder_is_a_jpeg() {
        let jpeg = placeholder_jpeg().unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8]);
        assert_eq!(turbojpeg::read_header(&jpeg).unwrap().width, 8);
    }
}
