//! Raw I420 frames back to back, from a file or stdin: what
//! `rpicam-vid --codec yuv420 -o -` writes, so a Pi without the libcamera
//! feature can still feed camnode through a pipe.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::FrameSource;
use crate::frame::{unix_now, Frame, FrameBuf};

pub struct I420Reader {
    name: String,
    input: Box<dyn Read + Send>,
    width: usize,
    height: usize,
    /// Where `next_frame` reads to, allocated on its first call: a pipeline
    /// that reads into its own buffers never needs it.
    frame: FrameBuf,
    seq: u64,
    /// A pipe from a camera paces itself; a file does not.
    live: bool,
}

impl I420Reader {
    pub fn open(width: usize, height: usize, path: &Path) -> Result<Self> {
        let (name, input, live): (String, Box<dyn Read + Send>, bool) = if path == Path::new("-") {
            ("stdin".into(), Box::new(io::stdin()), true)
        } else {
            let file = File::open(path).with_context(|| format!("cannot open i420 source {}", path.display()))?;
            (path.display().to_string(), Box::new(io::BufReader::with_capacity(1 << 20, file)), false)
        };
        Ok(I420Reader { name, input, width, height, frame: FrameBuf::default(), seq: 0, live })
    }

    /// Reads the next frame into `buf`; false at the end of the stream.
    fn read(&mut self, buf: &mut FrameBuf) -> Result<bool> {
        buf.resize(self.width, self.height);
        let mut filled = 0;
        while filled < buf.data.len() {
            match self.input.read(&mut buf.data[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading i420 frame {} from {}", self.seq, self.name)),
            }
        }
        if filled == 0 {
            return Ok(false);
        }
        if filled < buf.data.len() {
            bail!(
                "{}: frame {} is truncated ({filled} of {} bytes): is the size {}x{} right?",
                self.name,
                self.seq,
                buf.data.len(),
                self.width,
                self.height
            );
        }
        buf.seq = self.seq;
        buf.timestamp = unix_now();
        self.seq += 1;
        Ok(true)
    }
}

impl FrameSource for I420Reader {
    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn is_live(&self) -> bool {
        self.live
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let mut frame = std::mem::take(&mut self.frame);
        let read = self.read(&mut frame);
        self.frame = frame;
        Ok(read?.then(|| self.frame.as_frame()))
    }

    fn next_frame_into(&mut self, buf: &mut FrameBuf) -> Option<Result<bool>> {
        Some(self.read(buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_whole_frames_and_reports_a_short_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.yuv");
        let mut bytes = vec![5u8; 24];
        bytes.extend_from_slice(&[9u8; 10]);
        std::fs::write(&path, bytes).unwrap();
        let mut reader = I420Reader::open(4, 4, &path).unwrap();
        assert_eq!(reader.next_frame().unwrap().unwrap().y.data, &[5u8; 16]);
        let err = reader.next_frame().unwrap_err().to_string();
        assert!(err.contains("frame 1 is truncated (10 of 24 bytes)"), "{err}");
    }
}
