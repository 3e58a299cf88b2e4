//! YUV4MPEG2 files with 4:2:0 chroma (what ffmpeg writes with `-pix_fmt
//! yuv420p -f yuv4mpegpipe`).
//!
//! A regular file is memory-mapped and each frame handed on as a window of
//! the mapping ([`MappedSpan`]): no frame is copied on its way through the
//! pipeline, as none is from a camera's buffers. A pipe (a FIFO that
//! ffmpeg writes into) cannot be mapped and is read one frame at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use memmap2::{Advice, Mmap};

use super::FrameSource;
use crate::frame::{chroma_size, unix_now, Frame, FrameBuf, MappedFile, MappedSpan};

/// The longest frame header line accepted (`FRAME` plus optional tags).
const MAX_FRAME_HEADER: usize = 256;

pub struct Y4mReader {
    path: PathBuf,
    input: Input,
    width: usize,
    height: usize,
    /// Where `next_frame` puts its frame: a pipeline that gives the
    /// source buffers of its own never uses it.
    frame: FrameBuf,
    seq: u64,
}

enum Input {
    /// The whole file mapped; `next` is where the next frame header starts.
    Mapped { map: Arc<MappedFile>, next: usize },
    Stream { reader: BufReader<File>, line: Vec<u8> },
}

impl Y4mReader {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open y4m source {}", path.display()))?;
        let metadata = file.metadata().ok().filter(|m| m.is_file() && m.len() > 0);
        let mapped = metadata.map(|m| {
            // SAFETY: the mapping is read-only. Were another program to
            // truncate the file while camnode runs, reading a vanished page
            // would raise SIGBUS; a capture file being cut short under a
            // running node is not a case worth a copy of every frame.
            unsafe { Mmap::map(&file) }.map(|map| (map, m.blksize()))
        });
        let (header, input) = match mapped {
            Some(Ok((map, block_size))) => {
                // Frames are taken in order: let the kernel read ahead of
                // them from a file on disk. Only a hint, so a refusal is no error.
                let _ = map.advise(Advice::Sequential);
                let header_end = map.iter().position(|&b| b == b'\n').unwrap_or(map.len());
                let header = String::from_utf8_lossy(&map[..header_end]).into_owned();
                (header, Input::Mapped { next: (header_end + 1).min(map.len()), map: Arc::new(MappedFile::new(map, block_size)) })
            }
            _ => {
                let mut reader = BufReader::with_capacity(1 << 20, file);
                let mut header = Vec::new();
                reader.read_until(b'\n', &mut header)?;
                (String::from_utf8_lossy(&header).into_owned(), Input::Stream { reader, line: Vec::new() })
            }
        };
        let (width, height) = parse_header(path, &header)?;
        Ok(Y4mReader { path: path.to_path_buf(), input, width, height, frame: FrameBuf::default(), seq: 0 })
    }

    /// Puts the next frame in `buf`; false at the end of the file.
    fn read(&mut self, buf: &mut FrameBuf) -> Result<bool> {
        let (cw, ch) = chroma_size(self.width, self.height);
        let frame_len = self.width * self.height + 2 * cw * ch;
        let damaged = |seq| format!("{}: frame {seq} does not start with FRAME: the file is damaged", self.path.display());
        let truncated = |seq| format!("{}: frame {seq} is truncated: the file ends mid-frame", self.path.display());
        match &mut self.input {
            Input::Mapped { map, next } => {
                if *next >= map.len() {
                    return Ok(false);
                }
                let rest = &map[*next..];
                let header = &rest[..rest.len().min(MAX_FRAME_HEADER)];
                let newline = header.iter().position(|&b| b == b'\n');
                let Some(newline) = newline.filter(|_| header.starts_with(b"FRAME")) else {
                    bail!(damaged(self.seq));
                };
                let start = *next + newline + 1;
                let span = MappedSpan::new(map.clone(), start..start + frame_len).with_context(|| truncated(self.seq))?;
                buf.set_mapped(self.width, self.height, span);
                *next = start + frame_len;
            }
            Input::Stream { reader, line } => {
                line.clear();
                if reader.read_until(b'\n', line)? == 0 {
                    return Ok(false);
                }
                if !line.starts_with(b"FRAME") {
                    bail!(damaged(self.seq));
                }
                buf.resize(self.width, self.height);
                reader.read_exact(&mut buf.data).with_context(|| truncated(self.seq))?;
            }
        }
        buf.seq = self.seq;
        buf.timestamp = unix_now();
        self.seq += 1;
        Ok(true)
    }
}

/// Width and height from a `YUV4MPEG2 ...` header line, refusing what
/// camnode cannot read with the command that converts it.
fn parse_header(path: &Path, header: &str) -> Result<(usize, usize)> {
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
    Ok((width, height))
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

    fn maps_frames(&self) -> bool {
        matches!(self.input, Input::Mapped { .. })
    }

    fn frames_mapped(&self) -> usize {
        // Every frame's span shares the mapping; the one handle left is ours.
        match &self.input {
            Input::Mapped { map, .. } => Arc::strong_count(map) - 1,
            Input::Stream { .. } => 0,
        }
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

    /// Readers of the same file: mapped (a regular file), and streamed
    /// through a FIFO that a thread fills, as ffmpeg would.
    fn readers(path: &Path) -> Vec<Y4mReader> {
        let fifo = path.with_extension("fifo");
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let (from, to) = (path.to_path_buf(), fifo.clone());
        std::thread::spawn(move || std::io::copy(&mut File::open(from).unwrap(), &mut File::create(to).unwrap()));
        let mapped = Y4mReader::open(path).unwrap();
        let streamed = Y4mReader::open(&fifo).unwrap();
        assert!(mapped.maps_frames() && !streamed.maps_frames());
        vec![mapped, streamed]
    }

    #[test]
    fn reads_frames_then_ends() {
        let dir = tempfile::tempdir().unwrap();
        let frames = vec![vec![1u8; 6], vec![2u8; 6]];
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2 F30:1 Ip A1:1 C420jpeg", &frames, b"");
        for mut reader in readers(&path) {
            assert_eq!(reader.size(), (2, 2));
            assert_eq!(reader.next_frame().unwrap().unwrap().y.data, &[1, 1, 1, 1]);
            let second = reader.next_frame().unwrap().unwrap();
            assert_eq!((second.seq, second.v.data[0]), (1, 2));
            assert!(reader.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn a_mapped_frame_outlives_the_frames_after_it_and_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let frames: Vec<Vec<u8>> = (0..3).map(|i| vec![i; 6]).collect();
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2", &frames, b"");
        let mut reader = Y4mReader::open(&path).unwrap();
        let mut kept = FrameBuf::default();
        assert!(reader.next_frame_into(&mut kept).unwrap().unwrap());
        assert!(matches!(kept.data, crate::frame::Pixels::Mapped(_)));
        let mut later = FrameBuf::default();
        while reader.next_frame_into(&mut later).unwrap().unwrap() {}
        drop(reader);
        assert_eq!((kept.seq, &kept.data[..]), (0, &[0u8; 6][..]));
        // Writing to it copies: the file stays as it was.
        kept.data[0] = 9;
        assert_eq!(&std::fs::read(&path).unwrap()[..24], b"YUV4MPEG2 W2 H2\nFRAME\n\0\0");
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
    fn truncated_or_damaged_frames_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (tail, want) in [(&b"FRAME\n\x01\x02"[..], "frame 1 is truncated"), (b"FRAMX\n", "frame 1 does not start with FRAME")] {
            let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2", &[vec![1u8; 6]], tail);
            for mut reader in readers(&path) {
                reader.next_frame().unwrap().unwrap();
                let err = format!("{:#}", reader.next_frame().unwrap_err());
                assert!(err.contains(want), "{err}");
            }
            std::fs::remove_file(path.with_extension("fifo")).unwrap();
        }
    }

    #[test]
    fn non_420_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_y4m(dir.path(), "YUV4MPEG2 W2 H2 C444", &[], b"");
        let err = Y4mReader::open(&path).err().unwrap().to_string();
        assert!(err.contains("C444") && err.contains("-pix_fmt yuv420p"), "{err}");
    }
}
