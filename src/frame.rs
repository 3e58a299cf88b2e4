//! Frames as the camera hands them over: YUV 4:2:0, planar (I420) or
//! semi-planar (NV12), with a stride per plane.
//!
//! A [`Frame`] borrows its planes, so a libcamera buffer can flow through
//! flip, motion detection and the encoder without a copy. A [`FrameBuf`] owns
//! its pixels; it is where a frame goes when it must outlive the capture
//! buffer (the pre-event ring, a software flip, an encoder worker), and it is
//! reused rather than reallocated. A [`Captured`] frame is either: a stage
//! that keeps it copies a lent one, but takes an owned one's buffer. Buffers
//! not in use wait in one [`Spares`] list, so a pipeline holds only as many
//! as it ever needs at once.
//!
//! A `FrameBuf`'s pixels may also be a window of a memory-mapped file
//! ([`Pixels::Mapped`]): a frame of a Y4M file then goes to the pre-event
//! ring or an encoder worker without ever being copied, as a frame read
//! into memory of its own would.

use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::{Mmap, UncheckedAdvice};

/// How the chroma of a 4:2:0 frame is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelLayout {
    /// Three planes: Y, U (Cb), V (Cr); chroma planes are half width, half height.
    I420,
    /// Two planes: Y, then interleaved U/V pairs at half height.
    Nv12,
}

/// One plane of pixel rows; `stride` is the distance between row starts.
#[derive(Clone, Copy, Debug)]
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub stride: usize,
}

impl<'a> Plane<'a> {
    /// Row `y`, `len` bytes long.
    #[inline]
    pub fn row(&self, y: usize, len: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + len]
    }
}

/// A borrowed YUV 4:2:0 frame.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub width: usize,
    pub height: usize,
    pub layout: PixelLayout,
    pub y: Plane<'a>,
    /// U plane for I420, interleaved UV plane for NV12.
    pub u: Plane<'a>,
    /// V plane for I420; empty for NV12.
    pub v: Plane<'a>,
    /// The source's frame counter, starting at 0; gaps mean dropped frames.
    pub seq: u64,
    /// Capture time, Unix seconds.
    pub timestamp: f64,
}

/// Width and height of the chroma planes of a 4:2:0 frame (rounded up).
#[inline]
pub fn chroma_size(width: usize, height: usize) -> (usize, usize) {
    (width.div_ceil(2), height.div_ceil(2))
}

/// Seconds since the Unix epoch, as carried in the `ts` header key.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Frame<'_> {
    /// Checks that every plane is large enough for the stated size and strides,
    /// so that a bad frame from a source is an error, not a panic later.
    pub fn validate(&self) -> anyhow::Result<()> {
        let (cw, ch) = chroma_size(self.width, self.height);
        let need = |plane: &Plane, row_len: usize, rows: usize, name: &str| -> anyhow::Result<()> {
            anyhow::ensure!(
                plane.stride >= row_len && plane.data.len() >= plane.stride * (rows - 1) + row_len,
                "frame {} ({}x{}): {name} plane too small ({} bytes, stride {})",
                self.seq,
                self.width,
                self.height,
                plane.data.len(),
                plane.stride
            );
            Ok(())
        };
        anyhow::ensure!(self.width >= 2 && self.height >= 2, "frame {} is {}x{}: too small", self.seq, self.width, self.height);
        need(&self.y, self.width, self.height, "Y")?;
        match self.layout {
            PixelLayout::I420 => {
                need(&self.u, cw, ch, "U")?;
                need(&self.v, cw, ch, "V")
            }
            PixelLayout::Nv12 => need(&self.u, cw * 2, ch, "UV"),
        }
    }
}

/// The frame being processed: lent by its source (a camera buffer that must
/// go back), or in a buffer of the pipeline's own, filled by a source that
/// reads frames (a file, a pipe).
pub enum Captured<'a> {
    Lent(Frame<'a>),
    Owned(&'a mut FrameBuf),
}

impl Captured<'_> {
    pub fn frame(&self) -> Frame<'_> {
        match self {
            Captured::Lent(frame) => *frame,
            Captured::Owned(buf) => buf.as_frame(),
        }
    }

    /// The frame in a buffer of its own, for a stage that holds on to it:
    /// an owned frame's buffer is taken (leaving an empty one for its owner
    /// to restock), a lent frame is copied (3 MB at 1080p) into a spare.
    pub fn keep(&mut self, spares: &mut Spares) -> FrameBuf {
        match self {
            Captured::Lent(frame) => {
                let mut buf = spares.take();
                buf.copy_from(frame);
                buf
            }
            Captured::Owned(buf) => std::mem::take(*buf),
        }
    }
}

/// Frame buffers between uses, shared by every stage that keeps frames, and
/// a count of those made, which the pipeline holds to a limit: at 1080p
/// each is 3 MB, so the count is what bounds a node's memory.
#[derive(Debug)]
pub struct Spares {
    spare: Vec<FrameBuf>,
    made: usize,
    limit: usize,
    /// Buffers not made here that may be given here too.
    outside: usize,
}

impl Spares {
    /// The most buffers made before [`must_wait`](Self::must_wait) says so.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Spares of which `limit` are made before [`must_wait`](Self::must_wait)
    /// says so; `outside` more buffers, which their owners fill (the
    /// capture and flip slots), may also be given.
    pub fn new(limit: usize, outside: usize) -> Self {
        Spares { spare: Vec::with_capacity(limit + outside), made: 0, limit, outside }
    }

    /// No spare, and the limit reached: rather than make another buffer,
    /// wait for one a stage is about to give back.
    pub fn must_wait(&self) -> bool {
        self.spare.is_empty() && self.made >= self.limit
    }

    /// A spare buffer, or a new empty one (which grows when first filled).
    pub fn take(&mut self) -> FrameBuf {
        self.spare.pop().unwrap_or_else(|| {
            self.made += 1;
            // Room to keep every buffer there is: the limit can be passed
            // (see `must_wait`), and the list must not grow when all of them
            // first come back at once, later, in the steady state.
            self.spare.reserve_exact(self.made + self.outside);
            FrameBuf::default()
        })
    }

    /// Keeps `buf` for reuse; an empty one (whose pixels a stage took) is
    /// not a buffer of its own, nor is a mapped one (dropping it lets the
    /// file's pages go).
    pub fn give(&mut self, buf: FrameBuf) {
        if buf.data.heap_capacity() > 0 {
            self.spare.push(buf);
        }
    }
}

/// The pixels of a [`FrameBuf`].
#[derive(Clone, Debug)]
pub enum Pixels {
    /// Memory of the buffer's own, reused frame after frame.
    Heap(Vec<u8>),
    /// One frame's bytes inside a file mapped by its source.
    Mapped(MappedSpan),
}

impl Default for Pixels {
    fn default() -> Self {
        Pixels::Heap(Vec::new())
    }
}

impl Pixels {
    /// Bytes of heap memory this buffer holds for reuse (none when mapped).
    pub fn heap_capacity(&self) -> usize {
        match self {
            Pixels::Heap(vec) => vec.capacity(),
            Pixels::Mapped(_) => 0,
        }
    }

    /// The heap memory, replacing a mapping by an empty one first.
    fn heap(&mut self) -> &mut Vec<u8> {
        if let Pixels::Mapped(_) = self {
            *self = Pixels::default();
        }
        match self {
            Pixels::Heap(vec) => vec,
            Pixels::Mapped(_) => unreachable!("replaced just above"),
        }
    }
}

impl Deref for Pixels {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Pixels::Heap(vec) => vec,
            Pixels::Mapped(span) => span.bytes(),
        }
    }
}

/// Writing to mapped pixels first copies them to the heap: the file is
/// never written.
impl DerefMut for Pixels {
    fn deref_mut(&mut self) -> &mut [u8] {
        if let Pixels::Mapped(span) = self {
            *self = Pixels::Heap(span.bytes().to_vec());
        }
        self.heap()
    }
}

/// A file mapped read-only, for a source to hand out frames from as
/// [`MappedSpan`]s, and the unit in which the pages of finished frames are
/// let go.
#[derive(Debug)]
pub struct MappedFile {
    map: Mmap,
    release_unit: usize,
}

/// The largest release unit: a huge page of x86_64 and of arm64 with 4 KB
/// pages.
const MAX_RELEASE_UNIT: u64 = 2 << 20;

impl MappedFile {
    /// `block_size` is the file's preferred I/O size (`st_blksize`). A tmpfs
    /// that backs its files with huge pages reports its huge page size
    /// there, and pages are then released in whole huge pages: letting go
    /// of part of one splits its mapping into small pages, which the next
    /// frame then reads through more TLB misses, and every split flushes
    /// the TLBs of all cores this process runs on. On 1080p frames from
    /// such a tmpfs that cost 0.06 ms of CPU per frame (camnode's CPU
    /// besides encoding, 0.39 against 0.33 ms, medians of 10 pairs, lower in
    /// 9). Other file systems report 4 KB, or a size that is no power of
    /// two, and release page by page.
    pub fn new(map: Mmap, block_size: u64) -> Self {
        let page = 4096;
        let unit = if block_size.is_power_of_two() && (page..=MAX_RELEASE_UNIT).contains(&block_size) { block_size } else { page };
        MappedFile { map, release_unit: unit as usize }
    }
}

impl Deref for MappedFile {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.map
    }
}

/// A frame's bytes inside a file mapping shared with its source. When a
/// span is dropped, the release units under it are unmapped again: a long
/// file does not stay resident (the kernel's page cache keeps it; only this
/// process's share is let go), so memory holds just the frames still in use.
#[derive(Clone, Debug)]
pub struct MappedSpan {
    file: Arc<MappedFile>,
    range: Range<usize>,
}

impl MappedSpan {
    /// `range` of `file`; `None` if it runs past the end.
    pub fn new(file: Arc<MappedFile>, range: Range<usize>) -> Option<Self> {
        (range.start <= range.end && range.end <= file.len()).then_some(MappedSpan { file, range })
    }

    pub fn bytes(&self) -> &[u8] {
        &self.file[self.range.clone()]
    }
}

impl Drop for MappedSpan {
    fn drop(&mut self) {
        // Every unit the frame touches, the ones it shares with the frames
        // on either side included: a unit released only by the frame that
        // drops last would stay mapped when frames finish out of order (two
        // workers) and the earlier one touched it after the later one let go.
        let unit = self.file.release_unit;
        let start = self.range.start / unit * unit;
        let end = self.range.end.div_ceil(unit) * unit;
        // SAFETY: MADV_DONTNEED on a read-only shared file mapping only
        // unmaps pages; the next access maps them again from the page
        // cache with the same contents. So it is harmless even where
        // another span (a neighbouring frame, or a clone of this one)
        // still reads them.
        let released = unsafe { self.file.map.unchecked_advise_range(UncheckedAdvice::DontNeed, start, end.min(self.file.len()) - start) };
        if let Err(e) = released {
            log::debug!("cannot release mapped frame pages: {e}");
        }
    }
}

/// An owned I420 frame, tightly packed, reused across frames.
#[derive(Clone, Debug, Default)]
pub struct FrameBuf {
    pub width: usize,
    pub height: usize,
    pub seq: u64,
    pub timestamp: f64,
    /// Y, then U, then V, each with stride equal to its width.
    pub data: Pixels,
}

impl FrameBuf {
    /// A mid-grey frame of the given size.
    pub fn new(width: usize, height: usize) -> Self {
        let mut buf = FrameBuf::default();
        buf.resize(width, height);
        buf.data.fill(128);
        buf
    }

    /// Sets the size, growing the allocation only when it must.
    pub fn resize(&mut self, width: usize, height: usize) {
        let (cw, ch) = chroma_size(width, height);
        self.width = width;
        self.height = height;
        self.data.heap().resize(width * height + 2 * cw * ch, 0);
    }

    /// Lets go of a mapped frame's pages now rather than when the buffer
    /// is next filled; a buffer with memory of its own keeps it.
    pub fn unmap(&mut self) {
        if let Pixels::Mapped(_) = self.data {
            self.data = Pixels::default();
        }
    }

    /// Points this buffer at a frame of a mapped file instead of memory of
    /// its own; `span` must hold exactly one packed I420 frame of this size.
    pub fn set_mapped(&mut self, width: usize, height: usize, span: MappedSpan) {
        let (cw, ch) = chroma_size(width, height);
        debug_assert_eq!(span.bytes().len(), width * height + 2 * cw * ch);
        self.width = width;
        self.height = height;
        self.data = Pixels::Mapped(span);
    }

    /// The three planes, mutable, in Y, U, V order.
    pub fn planes_mut(&mut self) -> (&mut [u8], &mut [u8], &mut [u8]) {
        let (cw, ch) = chroma_size(self.width, self.height);
        let (y, chroma) = self.data.split_at_mut(self.width * self.height);
        let (u, v) = chroma.split_at_mut(cw * ch);
        (y, u, v)
    }

    /// Borrows this buffer as a [`Frame`].
    pub fn as_frame(&self) -> Frame<'_> {
        let (cw, ch) = chroma_size(self.width, self.height);
        let (y, chroma) = self.data.split_at(self.width * self.height);
        let (u, v) = chroma.split_at(cw * ch);
        Frame {
            width: self.width,
            height: self.height,
            layout: PixelLayout::I420,
            y: Plane { data: y, stride: self.width },
            u: Plane { data: u, stride: cw },
            v: Plane { data: v, stride: cw },
            seq: self.seq,
            timestamp: self.timestamp,
        }
    }

    /// Fills this buffer (at its current size) from packed 24-bit RGB rows,
    /// R, G, B in memory order, `rgb.stride` bytes apart: BT.601 full range
    /// (JFIF's colour space), chroma averaged over each 2x2 block. For sources
    /// that only have RGB: JPEGs that are not 4:2:0, and cameras without a
    /// YUV output.
    pub fn fill_from_rgb(&mut self, rgb: Plane<'_>) {
        let (w, h) = (self.width, self.height);
        let (cw, ch) = chroma_size(w, h);
        let (y, u, v) = self.planes_mut();
        for (row, dst) in y.chunks_exact_mut(w).enumerate() {
            for (luma, px) in dst.iter_mut().zip(rgb.row(row, w * 3).chunks_exact(3)) {
                let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
                *luma = ((77 * r + 150 * g + 29 * b + 128) >> 8) as u8;
            }
        }
        for cy in 0..ch {
            for cx in 0..cw {
                let (mut r, mut g, mut b, mut n) = (0i32, 0i32, 0i32, 0i32);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    let (x, yy) = (cx * 2 + dx, cy * 2 + dy);
                    if x < w && yy < h {
                        let p = &rgb.row(yy, w * 3)[x * 3..];
                        (r, g, b, n) = (r + p[0] as i32, g + p[1] as i32, b + p[2] as i32, n + 1);
                    }
                }
                let (r, g, b) = (r / n, g / n, b / n);
                u[cy * cw + cx] = ((-43 * r - 85 * g + 128 * b + 128) / 256 + 128).clamp(0, 255) as u8;
                v[cy * cw + cx] = ((128 * r - 107 * g - 21 * b + 128) / 256 + 128).clamp(0, 255) as u8;
            }
        }
    }

    /// Copies any frame into this buffer as packed I420, deinterleaving NV12.
    pub fn copy_from(&mut self, frame: &Frame) {
        self.resize(frame.width, frame.height);
        self.seq = frame.seq;
        self.timestamp = frame.timestamp;
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = chroma_size(w, h);
        let (y, u, v) = self.planes_mut();
        for (row, dst) in y.chunks_exact_mut(w).enumerate() {
            dst.copy_from_slice(frame.y.row(row, w));
        }
        match frame.layout {
            PixelLayout::I420 => {
                for row in 0..ch {
                    u[row * cw..(row + 1) * cw].copy_from_slice(frame.u.row(row, cw));
                    v[row * cw..(row + 1) * cw].copy_from_slice(frame.v.row(row, cw));
                }
            }
            PixelLayout::Nv12 => {
                for row in 0..ch {
                    let uv = frame.u.row(row, cw * 2);
                    let (urow, vrow) = (&mut u[row * cw..(row + 1) * cw], &mut v[row * cw..(row + 1) * cw]);
                    for (i, pair) in uv.chunks_exact(2).enumerate() {
                        urow[i] = pair[0];
                        vrow[i] = pair[1];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spares_past_their_limit_come_back_without_growing_the_list() {
        let mut spares = Spares::new(1, 1);
        let mut bufs = [spares.take(), spares.take(), spares.take(), FrameBuf::default()];
        for buf in &mut bufs {
            buf.resize(4, 4);
        }
        let room = spares.spare.capacity();
        for buf in bufs {
            spares.give(buf);
        }
        assert_eq!(spares.spare.len(), 4);
        assert_eq!(spares.spare.capacity(), room, "giving back the buffers made grew the list");
    }

    #[test]
    fn padded_rgb_rows_convert_to_i420() {
        // 2x2 RGB with rows padded to 8 bytes: red, white / black, blue.
        let rgb = [255u8, 0, 0, 255, 255, 255, 9, 9, 0, 0, 0, 0, 0, 255, 9, 9];
        let mut buf = FrameBuf::default();
        buf.resize(2, 2);
        buf.fill_from_rgb(Plane { data: &rgb, stride: 8 });
        // Luma per pixel; one chroma sample for the block (mean R 127, G 63, B 127).
        assert_eq!(&buf.data[..], [77, 255, 0, 29, 149, 155]);
    }

    #[test]
    fn nv12_copies_to_planar_i420() {
        // 4x2 frame: one chroma row of two UV pairs.
        let y = [1u8, 2, 3, 4, 5, 6, 7, 8];
        let uv = [10u8, 20, 11, 21];
        let frame = Frame {
            width: 4,
            height: 2,
            layout: PixelLayout::Nv12,
            y: Plane { data: &y, stride: 4 },
            u: Plane { data: &uv, stride: 4 },
            v: Plane { data: &[], stride: 0 },
            seq: 7,
            timestamp: 1.5,
        };
        frame.validate().unwrap();
        let mut buf = FrameBuf::default();
        buf.copy_from(&frame);
        assert_eq!(&buf.data[..], [1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 20, 21]);
        assert_eq!((buf.seq, buf.timestamp), (7, 1.5));
    }

    #[test]
    fn strided_planes_are_packed_on_copy() {
        // Y rows padded to stride 4 for a 2x2 frame.
        let y = [1u8, 2, 0, 0, 3, 4, 0, 0];
        let frame = Frame {
            width: 2,
            height: 2,
            layout: PixelLayout::I420,
            y: Plane { data: &y, stride: 4 },
            u: Plane { data: &[9], stride: 1 },
            v: Plane { data: &[8], stride: 1 },
            seq: 0,
            timestamp: 0.0,
        };
        let mut buf = FrameBuf::default();
        buf.copy_from(&frame);
        assert_eq!(&buf.data[..], [1, 2, 3, 4, 9, 8]);
    }

    #[test]
    fn short_plane_is_rejected() {
        let y = [0u8; 3];
        let frame = Frame {
            width: 2,
            height: 2,
            layout: PixelLayout::I420,
            y: Plane { data: &y, stride: 2 },
            u: Plane { data: &[0], stride: 1 },
            v: Plane { data: &[0], stride: 1 },
            seq: 3,
            timestamp: 0.0,
        };
        let err = frame.validate().unwrap_err().to_string();
        assert!(err.contains("Y plane too small"), "{err}");
    }

    #[test]
    fn release_units_follow_the_files_block_size_within_bounds() {
        let map = || memmap2::MmapOptions::new().len(4096).map_anon().unwrap().make_read_only().unwrap();
        for (block_size, unit) in [(4096, 4096), (65536, 65536), (2 << 20, 2 << 20), (4 << 20, 4096), (3000, 4096), (0, 4096)] {
            assert_eq!(MappedFile::new(map(), block_size).release_unit, unit, "st_blksize {block_size}");
        }
    }
}
