//! YUV4MPEG2 files with 4:2:0 chroma (what ffmpeg writes with `-pix_fmt
//! yuv420p -f yuv4mpegpipe`), read one frame at a time into one buffer.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::FrameSource;
use crate::frame::{unix_now, Frame, FrameBuf};

pub struct Y4mReader {
    path: PathBuf,
    reader: BufReader<File>,
    width: usize,
    height: usize,
    /// Where `next_frame` reads to, allocated on its first call: a pipeline
    /// that reads into its own buffers never needs it.
    frame: FrameBuf,
    line: Vec<u8>,
    seq: u64,
}

impl Y4mReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open y4m source {}", path.display()))?;
        let mut reader = BufReader::new(file);
        let mut header = Vec::new();
        reader.read_until(b'\n', &mut header)?;
        let header = String::from_utf8_lossy(&header);
        let mut fields = header.split_ascii_whitespace();
        if fields.next() != Some("YUV4MPEG2") {
            bail!("{} is not a YUV4MPEG2 file (no YUV4MPEG2 signature)", path.display());
        }
        let (mut width, mut height) = (0, 0);
        for field in fields {
            let (tag, value) = field.split_at(1);
            match tag {
                "W" => width = value.parse().unwrap_or(0),
                "H" => height = value.parse().unwrap_or(0),
                "C" if !value.starts_with("420") => bail!(
                    "{} has colour space C{value}; camnode reads 4:2:0 only: convert with \
                     `ffmpeg -i IN -pix_fmt yuv420p -f yuv4mpegpipe OUT.y4m`",
                    path.display()
                ),
                "I" if value != "p" && value != "?" => bail!("{} is interlaced (I{value}); camnode reads progressive frames", path.display()),
                _ => {}
            }
        }
        if width < 2 || height < 2 {
            bail!("{} has no valid W and H in its header", path.display());
        }
        Ok(Y4mReader { path: path.to_path_buf(), reader, width, height, frame: FrameBuf::default(), line: Vec::new(), seq: 0 })
    }

    /// Reads the next frame into `buf`; false at the end of the file.
    fn read(&mut self, buf: &mut FrameBuf) -> Result<bool> {
        self.line.clear();
        if self.reader.read_until(b'\n', &mut self.line)? == 0 {
            return Ok(false);
        }
        if !self.line.starts_with(b"FRAME") {
            bail!("{}: frame {} does not start with FRAME: the file is damaged", self.path.display(), self.seq);
        }
        buf.resize(self.width, self.height);
        self.reader.read_exact(&mut buf.data).with_context(|| {
            format!("{}: frame {} is truncated: the file ends mid-frame", self.path.display(), self.seq)
        })?;
        buf.seq = self.seq;
        buf.timestamp = unix_now();
        self.seq += 1;
        Ok(true)
    }
}

impl FrameSource for Y4mReader {
    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
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
    use std::io::Write;

    fn write_y4m(dir: &Path, header: &str, frames: &[Vec<u8>], tail: &[u8]) -> PathBuf {
        let path = dir.join("clip.y4m");
        let mut f = File::create(&path).unwrap();
        writeln!(f, "{header}").unwrap();
        for frame in frames {
            f.write_all(b"FRAME\n").unwrap();
            f.write_all(frame).unwrap();
        }
        f.write_all(tail).unwrap();
        path
    }

    #[test]
    fn reads_frames_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let frames = vec![vec![1u8; 6], vec![2u8; 6]];
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2 F30:1 Ip A1:1 C420jpeg", &frames, b"");
        let mut reader = Y4mReader::open(&path).unwrap();
        assert_eq!(reader.size(), (2, 2));
        assert_eq!(reader.next_frame().unwrap().unwrap().y.data, &[1, 1, 1, 1]);
        let second = reader.next_frame().unwrap().unwrap();
        assert_eq!((second.seq, second.v.data[0]), (1, 2));
        assert!(reader.next_frame().unwrap().is_none());
    }

    #[test]
    fn frames_read_into_a_callers_buffer_continue_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let frames = vec![vec![1u8; 6], vec![2u8; 6], vec![3u8; 6]];
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2", &frames, b"");
        let mut reader = Y4mReader::open(&path).unwrap();
        let mut buf = FrameBuf::default();
        assert!(reader.next_frame_into(&mut buf).unwrap().unwrap());
        assert_eq!((buf.width, buf.height, buf.seq, &buf.data[..]), (2, 2, 0, &[1u8; 6][..]));
        assert_eq!(reader.next_frame().unwrap().unwrap().seq, 1);
        assert!(reader.next_frame_into(&mut buf).unwrap().unwrap());
        assert_eq!((buf.seq, buf.data[0]), (2, 3));
        assert!(!reader.next_frame_into(&mut buf).unwrap().unwrap());
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2", &[vec![1u8; 6]], b"FRAME\n\x01\x02");
        let mut reader = Y4mReader::open(&path).unwrap();
        reader.next_frame().unwrap().unwrap();
        let err = format!("{:#}", reader.next_frame().unwrap_err());
        assert!(err.contains("frame 1 is truncated"), "{err}");
    }

    #[test]
    fn non_420_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2 C444", &[], b"");
        let err = Y4mReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("C444") && err.contains("-pix_fmt yuv420p"), "{err}");
    }
}
