//! A folder of JPEG frames named `0.jpg, 1.jpg, ...`, replayed in numeric
//! order: how recorded footage is kept. 4:2:0 JPEGs decode with turbojpeg
//! straight into YUV planes (no RGB step); other subsamplings go through RGB
//! once and are converted, since they are rare and never on a camera's path.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use turbojpeg::{Decompressor, PixelFormat, Subsamp, YuvImage};

use super::FrameSource;
use crate::frame::{unix_now, Frame, FrameBuf, Plane};

pub struct JpegDir {
    files: Vec<PathBuf>,
    next: usize,
    decompressor: Decompressor,
    frame: FrameBuf,
    /// RGB scratch for JPEGs that are not 4:2:0.
    rgb: Vec<u8>,
    jpeg: Vec<u8>,
}

impl JpegDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read jpeg-dir source {}: check the path", dir.display()))?;
        let mut numbered: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let ext = path.extension()?.to_str()?.to_ascii_lowercase();
                let n = path.file_stem()?.to_str()?.parse().ok()?;
                (ext == "jpg" || ext == "jpeg").then_some((n, path))
            })
            .collect();
        numbered.sort();
        if numbered.is_empty() {
            bail!("jpeg-dir source {} has no frames named 0.jpg, 1.jpg, ...", dir.display());
        }
        let mut source = JpegDir {
            files: numbered.into_iter().map(|(_, p)| p).collect(),
            next: 0,
            decompressor: Decompressor::new()?,
            frame: FrameBuf::default(),
            rgb: Vec::new(),
            jpeg: Vec::new(),
        };
        // Decode the first frame now so the size is known before the pipeline starts.
        source.decode(0)?;
        Ok(source)
    }

    fn decode(&mut self, index: usize) -> Result<()> {
        let path = &self.files[index];
        self.jpeg.clear();
        let mut file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        std::io::Read::read_to_end(&mut file, &mut self.jpeg).with_context(|| format!("cannot read {}", path.display()))?;
        let header = self
            .decompressor
            .read_header(&self.jpeg)
            .with_context(|| format!("{} is not a valid JPEG", path.display()))?;
        if index > 0 && (header.width, header.height) != (self.frame.width, self.frame.height) {
            bail!(
                "{} is {}x{} but the earlier frames are {}x{}: every frame of a jpeg-dir must have one size",
                path.display(),
                header.width,
                header.height,
                self.frame.width,
                self.frame.height
            );
        }
        self.frame.resize(header.width, header.height);
        if header.subsamp == Subsamp::Sub2x2 && header.width % 2 == 0 && header.height % 2 == 0 {
            let image = YuvImage { pixels: &mut self.frame.data[..], width: header.width, align: 1, height: header.height, subsamp: Subsamp::Sub2x2 };
            self.decompressor.decompress_to_yuv(&self.jpeg, image)
        } else {
            self.rgb.resize(header.width * header.height * 3, 0);
            let image = turbojpeg::Image { pixels: &mut self.rgb[..], width: header.width, pitch: header.width * 3, height: header.height, format: PixelFormat::RGB };
            let result = self.decompressor.decompress(&self.jpeg, image);
            self.frame.fill_from_rgb(Plane { data: &self.rgb, stride: header.width * 3 });
            result
        }
        .with_context(|| format!("cannot decode {}", path.display()))
    }
}

impl FrameSource for JpegDir {
    fn size(&self) -> (usize, usize) {
        (self.frame.width, self.frame.height)
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.next >= self.files.len() {
            return Ok(None);
        }
        // Frame 0 was decoded by `open`.
        if self.next > 0 {
            self.decode(self.next)?;
        }
        self.frame.seq = self.next as u64;
        self.frame.timestamp = unix_now();
        self.next += 1;
        Ok(Some(self.frame.as_frame()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_jpeg(path: &Path, width: usize, height: usize, subsamp: Subsamp, rgb: [u8; 3]) {
        let pixels: Vec<u8> = rgb.iter().copied().cycle().take(width * height * 3).collect();
        let image = turbojpeg::Image { pixels: &pixels[..], width, pitch: width * 3, height, format: PixelFormat::RGB };
        std::fs::write(path, turbojpeg::compress(image, 95, subsamp).unwrap().as_ref()).unwrap();
    }

    #[test]
    fn replays_in_numeric_order_in_yuv() {
        let dir = tempfile::tempdir().unwrap();
        // 10.jpg must come after 2.jpg, not before it.
        write_jpeg(&dir.path().join("0.jpg"), 32, 16, Subsamp::Sub2x2, [0, 0, 0]);
        write_jpeg(&dir.path().join("2.jpg"), 32, 16, Subsamp::Sub2x2, [128, 128, 128]);
        write_jpeg(&dir.path().join("10.jpg"), 32, 16, Subsamp::Sub2x2, [255, 255, 255]);
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let mut source = JpegDir::open(dir.path()).unwrap();
        assert_eq!(source.size(), (32, 16));
        let mut lumas = Vec::new();
        while let Some(frame) = source.next_frame().unwrap() {
            lumas.push(frame.y.data[0]);
        }
        assert_eq!(lumas.len(), 3);
        assert!(lumas[0] < 5 && (120..136).contains(&lumas[1]) && lumas[2] > 250, "{lumas:?}");
    }

    #[test]
    fn non_420_jpeg_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        write_jpeg(&dir.path().join("0.jpg"), 16, 16, Subsamp::None, [255, 0, 0]);
        let mut source = JpegDir::open(dir.path()).unwrap();
        let frame = source.next_frame().unwrap().unwrap();
        // Pure red: Y about 76, V (Cr) well above neutral.
        assert!((70..84).contains(&frame.y.data[0]), "{}", frame.y.data[0]);
        assert!(frame.v.data[0] > 230, "{}", frame.v.data[0]);
    }

    #[test]
    fn empty_or_mixed_size_folders_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(JpegDir::open(dir.path()).err().unwrap().to_string().contains("no frames named 0.jpg"));
        write_jpeg(&dir.path().join("0.jpg"), 32, 16, Subsamp::Sub2x2, [0, 0, 0]);
        write_jpeg(&dir.path().join("1.jpg"), 16, 16, Subsamp::Sub2x2, [0, 0, 0]);
        let mut source = JpegDir::open(dir.path()).unwrap();
        source.next_frame().unwrap();
        let err = format!("{:#}", source.next_frame().unwrap_err());
        assert!(err.contains("one size"), "{err}");
    }
}
