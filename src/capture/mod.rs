//! Frame sources: where frames come from.
//!
//! Every source yields borrowed YUV 4:2:0 [`Frame`]s one at a time through
//! [`FrameSource::next_frame`]; the frame stays valid until the next call, which
//! is what lets a camera buffer go back to the driver as soon as the pipeline
//! is done with it. [`open`] picks the variant from a `--source` spec.

mod config;
pub mod controls;
mod i420;
mod jpeg_dir;
#[cfg(feature = "libcamera")]
pub mod libcamera;
mod synthetic;
mod y4m;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Result;

use crate::frame::{Frame, FrameBuf};
pub use config::{CaptureConfig, Rate, Size, DEFAULT_FILE_FPS};
pub use i420::I420Reader;
pub use jpeg_dir::JpegDir;
pub use synthetic::Synthetic;
pub use y4m::Y4mReader;

/// A producer of frames.
pub trait FrameSource: Send {
    /// Width and height of the frames this source yields.
    fn size(&self) -> (usize, usize);

    /// The next frame, or `None` at the natural end of the stream. A source
    /// that fails mid-stream (truncated file, camera gone) returns an error.
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>>;

    /// For sources that read or make every frame in memory of their own
    /// (files, pipes, the synthetic scene): fills `buf` instead, so that the
    /// pipeline keeps a frame (for an encoder worker, the pre-event ring) by
    /// swapping buffers rather than copying pixels. Otherwise as
    /// [`next_frame`](Self::next_frame), `Ok(false)` at the end of the
    /// stream. `None` from sources that lend their frames (a camera's buffers
    /// go back to the driver); those are read with `next_frame`.
    fn next_frame_into(&mut self, _buf: &mut FrameBuf) -> Option<Result<bool>> {
        None
    }

    /// True for sources whose [`next_frame_into`](Self::next_frame_into)
    /// points the buffer at memory of the source's own (a mapped file)
    /// rather than filling it: the pipeline then gives them no buffers.
    fn maps_frames(&self) -> bool {
        false
    }

    /// True for sources that pace themselves (a camera): `--rate` does not
    /// slow them down.
    fn is_live(&self) -> bool {
        false
    }

    /// True when the source already applied the configured flip (a camera
    /// whose ISP does it for free), so the pipeline must not flip again.
    fn flips_in_hardware(&self) -> bool {
        false
    }

    /// Frames the source itself had to drop because the pipeline was late.
    fn dropped(&self) -> u64 {
        0
    }

    /// Takes the rate and camera controls of a reloaded `[capture]`, from
    /// the next frame on, without stopping. An error leaves the source as
    /// it was. Sources without a camera have nothing to change: the
    /// pipeline paces them.
    fn retune(&mut self, _capture: &CaptureConfig) -> Result<()> {
        Ok(())
    }
}

/// A parsed `--source` value.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// `synthetic[:WxH]`
    Synthetic { width: usize, height: usize },
    /// `y4m:PATH`
    Y4m(PathBuf),
    /// `jpeg-dir:DIR`
    JpegDir(PathBuf),
    /// `i420:WxH:PATH` (`-` for stdin)
    I420 { width: usize, height: usize, path: PathBuf },
    /// `libcamera[:CAMERA_ID]`
    Libcamera { camera: Option<String> },
}

pub const SOURCE_HELP: &str =
    "use synthetic[:WxH], y4m:PATH, jpeg-dir:DIR, i420:WxH:PATH (PATH may be - for stdin) or libcamera[:CAMERA_ID]";

impl FromStr for SourceSpec {
    type Err = String;

    fn from_str(spec: &str) -> std::result::Result<Self, String> {
        let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
        let need_path = |what: &str| -> std::result::Result<PathBuf, String> {
            if rest.is_empty() {
                Err(format!("source '{spec}' needs a {what}: {SOURCE_HELP}"))
            } else {
                Ok(PathBuf::from(rest))
            }
        };
        match kind {
            "synthetic" if rest.is_empty() => Ok(SourceSpec::Synthetic { width: 640, height: 480 }),
            "synthetic" => {
                let (width, height) = parse_size(rest).map_err(|e| format!("source '{spec}': {e}"))?;
                Ok(SourceSpec::Synthetic { width, height })
            }
            "y4m" => Ok(SourceSpec::Y4m(need_path("file path")?)),
            "jpeg-dir" => Ok(SourceSpec::JpegDir(need_path("directory")?)),
            "i420" => {
                let (size, path) = rest
                    .split_once(':')
                    .ok_or_else(|| format!("source '{spec}' needs a size and a path, e.g. i420:1280x720:-"))?;
                let (width, height) = parse_size(size).map_err(|e| format!("source '{spec}': {e}"))?;
                Ok(SourceSpec::I420 { width, height, path: PathBuf::from(path) })
            }
            "libcamera" => Ok(SourceSpec::Libcamera { camera: (!rest.is_empty()).then(|| rest.to_string()) }),
            _ => Err(format!("unknown source '{spec}': {SOURCE_HELP}")),
        }
    }
}

impl fmt::Display for SourceSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SourceSpec::Synthetic { width, height } => write!(f, "synthetic:{width}x{height}"),
            SourceSpec::Y4m(p) => write!(f, "y4m:{}", p.display()),
            SourceSpec::JpegDir(p) => write!(f, "jpeg-dir:{}", p.display()),
            SourceSpec::I420 { width, height, path } => write!(f, "i420:{width}x{height}:{}", path.display()),
            SourceSpec::Libcamera { camera: None } => write!(f, "libcamera"),
            SourceSpec::Libcamera { camera: Some(id) } => write!(f, "libcamera:{id}"),
        }
    }
}

/// Parses `WxH` with even, non-zero dimensions (4:2:0 needs pairs of pixels).
pub fn parse_size(text: &str) -> std::result::Result<(usize, usize), String> {
    let (w, h) = text.split_once(['x', 'X']).ok_or_else(|| format!("size '{text}' must look like 1280x720"))?;
    let parse = |s: &str| s.trim().parse::<usize>().map_err(|_| format!("size '{text}' must look like 1280x720"));
    let (width, height) = (parse(w)?, parse(h)?);
    if width < 16 || height < 16 || width % 2 != 0 || height % 2 != 0 || width > 8192 || height > 8192 {
        return Err(format!("size {width}x{height} must be even and between 16x16 and 8192x8192"));
    }
    Ok((width, height))
}

/// Opens the source `[capture]` names, at its size and rate, with its controls.
pub fn open(capture: &CaptureConfig) -> Result<Box<dyn FrameSource>> {
    if !matches!(capture.source, SourceSpec::Libcamera { .. }) {
        let set = capture.controls_set();
        if !set.is_empty() {
            log::warn!("[capture] {} set, but source {} is not a camera: ignored", set.join(", "), capture.source);
        }
    }
    Ok(match &capture.source {
        SourceSpec::Synthetic { width, height } => Box::new(Synthetic::new(*width, *height, capture.seed)),
        SourceSpec::Y4m(path) => Box::new(Y4mReader::open(path)?),
        SourceSpec::JpegDir(dir) => Box::new(JpegDir::open(dir)?),
        SourceSpec::I420 { width, height, path } => Box::new(I420Reader::open(*width, *height, path)?),
        #[cfg(feature = "libcamera")]
        SourceSpec::Libcamera { camera } => Box::new(libcamera::LibcameraSource::open(camera.as_deref(), capture)?),
        #[cfg(not(feature = "libcamera"))]
        SourceSpec::Libcamera { .. } => anyhow::bail!("{NO_LIBCAMERA}"),
    })
}

/// Why `libcamera` sources fail in a build without the feature, and what to do.
pub const NO_LIBCAMERA: &str = "source 'libcamera' is not available: this camnode was built without the `libcamera` feature; \
     rebuild with `cargo build --release --features libcamera`, or pipe frames in with \
     `rpicam-vid --codec yuv420 -o - | camnode run --source i420:WxH:-`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_source_kind() {
        assert_eq!("synthetic".parse(), Ok(SourceSpec::Synthetic { width: 640, height: 480 }));
        assert_eq!("synthetic:320x240".parse(), Ok(SourceSpec::Synthetic { width: 320, height: 240 }));
        assert_eq!("y4m:a.y4m".parse(), Ok(SourceSpec::Y4m("a.y4m".into())));
        assert_eq!("jpeg-dir:/f".parse(), Ok(SourceSpec::JpegDir("/f".into())));
        assert_eq!(
            "i420:1280x720:-".parse(),
            Ok(SourceSpec::I420 { width: 1280, height: 720, path: "-".into() })
        );
        assert_eq!("libcamera".parse(), Ok(SourceSpec::Libcamera { camera: None }));
        assert_eq!("libcamera:/base/soc/i2c0mux/imx219@10".parse(), Ok(SourceSpec::Libcamera {
            camera: Some("/base/soc/i2c0mux/imx219@10".into())
        }));
    }

    #[test]
    fn display_round_trips() {
        for s in ["synthetic:320x240", "y4m:a.y4m", "jpeg-dir:/f", "i420:64x48:-", "libcamera", "libcamera:Virtual0"] {
            assert_eq!(s.parse::<SourceSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn bad_specs_say_what_is_accepted() {
        let err = "webcam".parse::<SourceSpec>().unwrap_err();
        assert!(err.contains("unknown source 'webcam'") && err.contains("jpeg-dir:DIR"), "{err}");
        assert!("synthetic:33x20".parse::<SourceSpec>().unwrap_err().contains("even"));
        assert!("i420:64x48".parse::<SourceSpec>().unwrap_err().contains("size and a path"));
        assert!("y4m".parse::<SourceSpec>().unwrap_err().contains("needs a file path"));
    }
}
