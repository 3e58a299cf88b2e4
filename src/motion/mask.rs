//! Which grid cells the detector watches: the ROI rectangles intersected with
//! an optional mask image.
//!
//! The mask is a PGM file, as Motion's `mask_file`: white (at least half the
//! maximum value) watches, black ignores. It may have any size; it is
//! stretched over the frame and sampled at each cell's centre, so one mask
//! serves every capture size of a camera.

use std::path::Path;

use anyhow::{bail, Context, Result};

/// A greyscale image read from a PGM file (binary P5 or plain P2).
#[derive(Debug, PartialEq)]
pub struct Pgm {
    pub width: usize,
    pub height: usize,
    pub max: u16,
    pub pixels: Vec<u16>,
}

impl Pgm {
    pub fn read(path: &Path) -> Result<Pgm> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        Pgm::parse(&bytes).with_context(|| format!("{} is not a usable PGM image", path.display()))
    }

    pub fn parse(bytes: &[u8]) -> Result<Pgm> {
        let mut at = 0;
        // Header: magic, width, height, maxval, separated by whitespace and comments.
        let mut token = || -> Result<&[u8]> {
            loop {
                while at < bytes.len() && bytes[at].is_ascii_whitespace() {
                    at += 1;
                }
                if at < bytes.len() && bytes[at] == b'#' {
                    while at < bytes.len() && bytes[at] != b'\n' {
                        at += 1;
                    }
                    continue;
                }
                break;
            }
            let start = at;
            while at < bytes.len() && !bytes[at].is_ascii_whitespace() {
                at += 1;
            }
            if start == at {
                bail!("the header ends early");
            }
            Ok(&bytes[start..at])
        };
        let magic = token()?.to_vec();
        let mut number = |what: &str| -> Result<usize> {
            let t = token()?;
            std::str::from_utf8(t).ok().and_then(|s| s.parse().ok()).with_context(|| format!("bad {what} in the header"))
        };
        let (width, height, max) = (number("width")?, number("height")?, number("maximum value")?);
        if width == 0 || height == 0 || !(1..=65535).contains(&max) {
            bail!("size {width}x{height} or maximum value {max} is out of range");
        }
        let count = width * height;
        let pixels: Vec<u16> = match magic.as_slice() {
            b"P5" => {
                // Exactly one whitespace byte separates the header from the pixels.
                let data = bytes.get(at + 1..).unwrap_or(&[]);
                let wide = max > 255;
                let need = count * if wide { 2 } else { 1 };
                if data.len() < need {
                    bail!("{} bytes of pixels for {width}x{height}, need {need}", data.len());
                }
                if wide {
                    data[..need].chunks_exact(2).map(|p| u16::from_be_bytes([p[0], p[1]])).collect()
                } else {
                    data[..need].iter().map(|&p| p as u16).collect()
                }
            }
            b"P2" => {
                let text = std::str::from_utf8(&bytes[at..]).context("plain PGM pixels must be ASCII numbers")?;
                let values: Vec<u16> = text.split_ascii_whitespace().take(count).map(|v| v.parse().unwrap_or(0)).collect();
                if values.len() < count {
                    bail!("{} pixels for {width}x{height}", values.len());
                }
                values
            }
            _ => bail!("it starts with {:?}, not P5 or P2 (save it as a greyscale PGM)", String::from_utf8_lossy(&magic)),
        };
        Ok(Pgm { width, height, max: max as u16, pixels })
    }
}

/// Cells of a `grid_w` x `grid_h` grid (each `cell` pixels square) that are
/// inside the ROI and white in the mask.
pub(super) fn watched_cells(
    roi: &[bool],
    mask: Option<&Pgm>,
    grid_w: usize,
    grid_h: usize,
    cell: usize,
    frame: (usize, usize),
) -> Vec<bool> {
    let Some(mask) = mask else { return roi.to_vec() };
    (0..grid_w * grid_h)
        .map(|i| {
            let (cx, cy) = ((i % grid_w) * cell + cell / 2, (i / grid_w) * cell + cell / 2);
            let (mx, my) = ((cx * mask.width / frame.0).min(mask.width - 1), (cy * mask.height / frame.1).min(mask.height - 1));
            roi[i] && mask.pixels[my * mask.width + mx] as u32 * 2 >= mask.max as u32
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_plain_pgm_with_comments() {
        let mut p5 = b"P5\n# made by hand\n4 2\n255\n".to_vec();
        p5.extend_from_slice(&[0, 255, 255, 0, 10, 20, 30, 40]);
        let img = Pgm::parse(&p5).unwrap();
        assert_eq!((img.width, img.height, img.max), (4, 2, 255));
        assert_eq!(img.pixels, [0, 255, 255, 0, 10, 20, 30, 40]);
        let p2 = Pgm::parse(b"P2 2 1 # two pixels\n15\n0 15\n").unwrap();
        assert_eq!((p2.max, p2.pixels), (15, vec![0, 15]));
    }

    #[test]
    fn broken_files_say_what_is_wrong() {
        let err = Pgm::parse(b"P6\n2 2\n255\n").unwrap_err().to_string();
        assert!(err.contains("not P5 or P2"), "{err}");
        let err = Pgm::parse(b"P5\n4 4\n255\n\0\0").unwrap_err().to_string();
        assert!(err.contains("need 16"), "{err}");
    }

    #[test]
    fn mask_is_stretched_over_the_grid() {
        // 2x1 mask: left ignored, right watched, over a 4x2 grid of 8-pixel cells.
        let mask = Pgm { width: 2, height: 1, max: 255, pixels: vec![0, 255] };
        let roi = vec![true; 8];
        let cells = watched_cells(&roi, Some(&mask), 4, 2, 8, (32, 16));
        assert_eq!(cells, [false, false, true, true, false, false, true, true]);
    }
}
