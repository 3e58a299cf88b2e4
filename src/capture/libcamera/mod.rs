//! Capture through libcamera, the camera stack of the Raspberry Pi (and of
//! most embedded Linux boards), with the `libcamera` crate.
//!
//! One `VideoRecording` stream is configured in YUV420, or NV12 where the
//! camera offers no planar format, so that frames reach motion detection and
//! the JPEG encoder exactly as the ISP wrote them: every buffer is mapped once
//! at start, and [`LibcameraSource::next_frame`] lends out a [`Frame`] that
//! points straight into the mapping. The request behind that frame goes back
//! to the camera on the following call, so the pipeline holds at most one
//! buffer and the camera keeps the rest.
//!
//! A camera with no YUV output at all (vimc, the kernel's virtual media
//! controller camera that the emulated Pi of `scripts/pi-vm.sh` captures
//! from, offers only packed RGB) is streamed in BGR888 and each frame is
//! converted to I420 into a buffer of the source's own; its request goes
//! back to the camera at once.
//!
//! Completed requests are handed over in capture order. When the pipeline is
//! slower than the camera, the camera runs out of queued buffers and skips
//! frames itself; those show up as gaps in libcamera's frame sequence and are
//! counted in [`FrameSource::dropped`], as are frames the camera marked as
//! failed. Capture never waits on the pipeline.
//!
//! Buffers come from libcamera's `FrameBufferAllocator` (dma-buf on a Pi).
//! Where it cannot allocate, as with the virtual camera on a machine without
//! `/dev/dma_heap`, camnode allocates memfd buffers itself and hands them to
//! libcamera as owned frame buffers.
//!
//! A flip is requested through the camera configuration's orientation, which
//! a sensor-based pipeline applies for free; when the camera cannot do it the
//! source says so through [`FrameSource::flips_in_hardware`] and the software
//! flip takes over.
//!
//! Camera controls (the rate, exposure, white balance...) are checked against
//! what the camera offers once it is configured, and passed to `start`. A
//! reload ([`FrameSource::retune`]) sends only what changed, with the next
//! request the camera gets back; when that request completes, the log shows
//! what it carried, as libcamera accepted it.

mod info;
mod sensor_hdr;

pub use info::list_cameras;

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use libcamera::camera::{ActiveCamera, Camera, CameraConfiguration, Orientation};
use libcamera::camera_manager::CameraManager;
use libcamera::control::{ControlList, MergePolicy};
use libcamera::formats;
use libcamera::framebuffer::{AsFrameBuffer, FrameBufferPlane, FrameMetadataStatus, OwnedFrameBuffer};
use libcamera::framebuffer_allocator::FrameBufferAllocator;
use libcamera::framebuffer_map::MemoryMappedFrameBuffer;
use libcamera::geometry::Size;
use libcamera::pixel_format::PixelFormat;
use libcamera::properties;
use libcamera::request::{Request, RequestStatus, ReuseFlag};
use libcamera::stream::{Stream, StreamRole};
use libcamera::utils::UniquePtr;

use super::controls::{self, CameraInfo, Hdr, Targets, Value};
use super::{CaptureConfig, FrameSource};
use crate::flip::Flip;
use crate::frame::{chroma_size, unix_now, Frame, FrameBuf, PixelLayout, Plane};

/// Buffers in flight: enough for the camera to keep streaming while the
/// pipeline holds one frame, few enough to keep latency and memory low.
const BUFFER_COUNT: u32 = 4;

/// How long to wait for a frame before declaring the camera gone, at least.
const MIN_FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// A libcamera camera streaming YUV 4:2:0 frames.
pub struct LibcameraSource {
    // Fields drop in declaration order: requests (and with them the buffer
    // mappings) before the camera, the camera before its manager.
    /// The request whose buffer the last returned frame points into.
    lent: Option<Request>,
    completed: Receiver<Request>,
    disconnected: Arc<AtomicBool>,
    /// Where each buffer's planes are mapped, indexed by request cookie.
    buffers: Vec<MappedPlanes>,
    stream: Stream,
    /// Reads a completed request's frame metadata; which buffer type the
    /// requests carry is only known at run time.
    read_metadata: MetadataReader,
    camera: ActiveCamera<'static>,
    /// Owns libcamera-allocated buffers; `None` with memfd buffers.
    _allocator: Option<FrameBufferAllocator>,
    _manager: CameraManager,
    id: String,
    width: usize,
    height: usize,
    format: BufferFormat,
    /// Where RGB frames are converted to; unused with YUV buffers.
    converted: FrameBuf,
    hardware_flip: bool,
    frame_timeout: Duration,
    sequence: SequenceTracker,
    /// The camera's controls and their ranges at the configured size.
    info: CameraInfo,
    /// The controls camnode has asked for so far.
    targets: Targets,
    /// Changed controls for the next request that goes back to the camera.
    pending: Option<UniquePtr<ControlList>>,
    /// The cookie of the request that carries them, until it completes.
    carrier: Option<u64>,
    /// Keys left out because the camera cannot take them (`strict_controls = false`), each with why.
    left_out: Vec<String>,
}

// SAFETY: libcamera's CameraManager and Camera are documented as usable from
// any thread (queueRequest, stop and the manager's accessors are thread-safe;
// the rest only needs callers to serialise state changes, which `&mut self`
// does). The raw plane pointers refer to mappings owned by the requests this
// struct owns, so moving the struct to another thread moves their owner too.
unsafe impl Send for LibcameraSource {}

/// What a completed buffer says about its frame.
#[derive(Clone, Copy, Debug)]
struct BufferMetadata {
    status: FrameMetadataStatus,
    sequence: u32,
    /// CLOCK_MONOTONIC nanoseconds, as V4L2 and the virtual camera stamp frames.
    timestamp_ns: u64,
}

type MetadataReader = fn(&Request, &Stream) -> Option<BufferMetadata>;

fn read_metadata<B: AsFrameBuffer + 'static>(request: &Request, stream: &Stream) -> Option<BufferMetadata> {
    let buffer = request.buffer::<MemoryMappedFrameBuffer<B>>(stream)?;
    let metadata = buffer.metadata()?;
    Some(BufferMetadata {
        status: metadata.status(),
        sequence: metadata.sequence(),
        timestamp_ns: metadata.timestamp(),
    })
}

impl LibcameraSource {
    /// Opens `camera` (an id from `camnode cameras`; the first camera when
    /// `None`) and starts streaming at the size, rate and with the controls
    /// of `capture`.
    pub fn open(camera: Option<&str>, capture: &CaptureConfig) -> Result<Self> {
        let (manager, cam) = open_manager(camera, capture.hdr)?;
        let id = cam.id().to_string();
        let mut active = cam.acquire().map_err(|e| acquire_error(&id, e))?;

        let wanted = orientation_for(capture.flip);
        let size = capture.size.map(|s| (s.width, s.height));
        let (mut config, format) = configure(&active, &id, size, wanted)?;
        let hardware_flip = wanted != Orientation::Rotate0 && config.orientation() == wanted;
        active.configure(&mut config).with_context(|| format!("libcamera refused the configuration of camera {id}"))?;
        // Ranges (the frame rate above all) depend on the configured size.
        let info = info::describe(&active);
        let (planned, left_out) = plan(capture, &info)?;

        let stream_config = config.get(0).context("libcamera configuration has no stream")?;
        let stream = stream_config.stream().context("libcamera did not assign a stream")?;
        let size = stream_config.get_size();
        let geometry = Geometry {
            format,
            width: size.width as usize,
            height: size.height as usize,
            stride: stream_config.get_stride() as usize,
            frame_size: stream_config.get_frame_size() as usize,
        };
        let buffer_count = stream_config.get_buffer_count() as usize;

        let (completed_tx, completed) = mpsc::sync_channel(buffer_count.max(1));
        // Called on libcamera's thread. The channel holds every request there
        // is, so `send` never blocks it.
        active.on_request_completed(move |request| {
            let _ = completed_tx.send(request);
        });
        let disconnected = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&disconnected);
        active.on_disconnected(move || flag.store(true, Ordering::Relaxed));

        let mut allocator = FrameBufferAllocator::new(&active);
        let (requests, buffers, read_metadata, allocator) = match allocator.alloc(&stream) {
            Ok(fbs) => {
                log::debug!("camera {id}: {} buffers from libcamera's allocator", fbs.len());
                let (requests, buffers) = attach_buffers(&mut active, &stream, fbs, &geometry)?;
                let reader: MetadataReader = read_metadata::<libcamera::framebuffer_allocator::FrameBuffer>;
                (requests, buffers, reader, Some(allocator))
            }
            Err(err) => {
                log::info!(
                    "camera {id}: libcamera could not allocate buffers ({err}); using {buffer_count} memfd buffers"
                );
                let fbs = (0..buffer_count).map(|i| memfd_buffer(i, &geometry)).collect::<Result<Vec<_>>>()?;
                let (requests, buffers) = attach_buffers(&mut active, &stream, fbs, &geometry)?;
                let reader: MetadataReader = read_metadata::<OwnedFrameBuffer>;
                (requests, buffers, reader, None)
            }
        };

        let changes = controls::changes(&Targets::new(), &planned, &info);
        let start_controls = info::control_list(&active, &changes).with_context(|| format!("camera {id}"))?;
        if !changes.is_empty() {
            log::info!("camera {id}: controls at start: {}", info::show(&start_controls, &info::ControlNames::of(active.controls())));
        }
        active.start(Some(&start_controls)).with_context(|| format!("camera {id} could not start streaming"))?;
        for request in requests {
            active.queue_request(request).map_err(|(_, e)| anyhow!("camera {id} rejected a capture request: {e}"))?;
        }
        let flip = match (capture.flip, hardware_flip) {
            (Flip::None, _) => "no flip",
            (_, true) => "flipped by the camera",
            (_, false) => "the camera cannot flip: flipped in software",
        };
        log::info!("camera {id}: {}x{} {format:?}, {buffer_count} buffers, {flip}", geometry.width, geometry.height);
        let converted = match format {
            BufferFormat::Rgb24 => FrameBuf::new(geometry.width, geometry.height),
            BufferFormat::Yuv(_) => FrameBuf::default(),
        };

        Ok(LibcameraSource {
            lent: None,
            completed,
            disconnected,
            buffers,
            stream,
            read_metadata,
            camera: active,
            _allocator: allocator,
            _manager: manager,
            id,
            width: geometry.width,
            height: geometry.height,
            format,
            converted,
            hardware_flip,
            frame_timeout: frame_timeout(&planned),
            sequence: SequenceTracker::default(),
            info,
            targets: planned,
            pending: None,
            carrier: None,
            left_out,
        })
    }

    /// The `[capture]` keys left out because the camera cannot take them
    /// (with `strict_controls = false`), each with why.
    pub fn left_out(&self) -> &[String] {
        &self.left_out
    }

    /// Hands a request back to the camera with the same buffer, and with
    /// the controls that changed since the last one carried any.
    fn requeue(&mut self, mut request: Request) -> Result<()> {
        request.reuse(ReuseFlag::REUSE_BUFFERS);
        if let Some(changed) = self.pending.take() {
            request.controls_mut().merge(&changed, MergePolicy::OverwriteExisting);
            self.carrier = Some(request.cookie());
        }
        self.camera
            .queue_request(request)
            .map_err(|(_, e)| anyhow!("camera {} rejected a capture request: {e}", self.id))
    }

    /// Waits for the next completed request.
    fn wait_completed(&mut self) -> Result<Request> {
        match self.completed.recv_timeout(self.frame_timeout) {
            Ok(request) => Ok(request),
            Err(RecvTimeoutError::Timeout) if self.disconnected.load(Ordering::Relaxed) => {
                bail!("camera {} was disconnected", self.id)
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "camera {} delivered no frame for {:.1} s; check the camera connection and libcamera's log \
                 (LIBCAMERA_LOG_LEVELS=*:INFO)",
                self.id,
                self.frame_timeout.as_secs_f64()
            ),
            Err(RecvTimeoutError::Disconnected) => bail!("camera {} stopped delivering frames", self.id),
        }
    }
}

impl FrameSource for LibcameraSource {
    fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if let Some(request) = self.lent.take() {
            self.requeue(request)?;
        }
        loop {
            let request = self.wait_completed()?;
            if request.status() == RequestStatus::Cancelled {
                if self.disconnected.load(Ordering::Relaxed) {
                    bail!("camera {} was disconnected", self.id);
                }
                bail!("camera {} stopped: libcamera cancelled its capture requests", self.id);
            }
            let metadata = (self.read_metadata)(&request, &self.stream)
                .with_context(|| format!("camera {}: a completed request carries no frame metadata", self.id))?;
            if self.carrier == Some(request.cookie()) {
                self.carrier = None;
                let names = info::ControlNames::of(self.camera.controls());
                log::info!(
                    "camera {}: frame {} came with the new controls: {}",
                    self.id,
                    metadata.sequence,
                    info::show(request.controls(), &names)
                );
            }
            let Some(seq) = self.sequence.advance(metadata.sequence, metadata.status) else {
                self.requeue(request)?;
                continue;
            };
            let index = request.cookie() as usize;
            let planes = *self
                .buffers
                .get(index)
                .with_context(|| format!("camera {}: completed request has unknown buffer {index}", self.id))?;
            let timestamp = unix_time_of_monotonic(metadata.timestamp_ns);
            let layout = match self.format {
                BufferFormat::Yuv(layout) => layout,
                BufferFormat::Rgb24 => {
                    // SAFETY: the request is out of the camera's hands until
                    // it is queued again below, after the conversion.
                    self.converted.fill_from_rgb(unsafe { planes.y.as_plane() });
                    self.requeue(request)?;
                    (self.converted.seq, self.converted.timestamp) = (seq, timestamp);
                    return Ok(Some(self.converted.as_frame()));
                }
            };
            self.lent = Some(request);
            // SAFETY: the mapping belongs to the request now in `self.lent`,
            // which stays out of the camera's hands (nothing writes to the
            // buffer) until the next call, and the returned frame borrows
            // `self` for at most that long.
            let (y, u, v) = unsafe { (planes.y.as_plane(), planes.u.as_plane(), planes.v.as_plane()) };
            return Ok(Some(Frame { width: self.width, height: self.height, layout, y, u, v, seq, timestamp }));
        }
    }

    fn is_live(&self) -> bool {
        true
    }

    fn flips_in_hardware(&self) -> bool {
        self.hardware_flip
    }

    fn dropped(&self) -> u64 {
        self.sequence.dropped
    }

    fn retune(&mut self, capture: &CaptureConfig) -> Result<()> {
        let (planned, left_out) = plan(capture, &self.info)?;
        let changes = controls::changes(&self.targets, &planned, &self.info);
        if changes.is_empty() {
            return Ok(());
        }
        let list = info::control_list(&self.camera, &changes).with_context(|| format!("camera {}", self.id))?;
        // Controls not yet sent go along with these.
        if let Some(mut earlier) = self.pending.take() {
            earlier.merge(&list, MergePolicy::OverwriteExisting);
            self.pending = Some(earlier);
        } else {
            self.pending = Some(list);
        }
        self.frame_timeout = frame_timeout(&planned);
        self.targets = planned;
        self.left_out = left_out;
        Ok(())
    }
}

impl Drop for LibcameraSource {
    fn drop(&mut self) {
        // Stop while the completion channel is still there: libcamera hands
        // back every queued request as cancelled, and they are freed with the
        // channel rather than inside libcamera's callback.
        if let Err(err) = self.camera.stop() {
            log::warn!("camera {}: stopping failed: {err}", self.id);
        }
    }
}

/// Starts libcamera's camera manager. libcamera's own log follows camnode's
/// verbosity unless the user set `LIBCAMERA_LOG_LEVELS`.
fn start_manager() -> Result<CameraManager> {
    if std::env::var_os("LIBCAMERA_LOG_LEVELS").is_none() {
        // libcamera reads this once, when it first logs; left alone it prints
        // several INFO lines per start.
        std::env::set_var("LIBCAMERA_LOG_LEVELS", libcamera_log_levels(log::max_level()));
    }
    check_version(libcamera::version::runtime_version())?;
    CameraManager::new().map_err(|err| {
        let hint = if err.raw_os_error() == Some(libc::EBUSY) {
            "; libcamera allows one camera manager per process, so close the other camera user in this process"
        } else {
            ""
        };
        anyhow!("libcamera could not start: {err}{hint}")
    })
}

/// libcamera log levels for camnode's: errors only by default, more with -v.
/// Failing dma-buf allocation is left out: camnode falls back to memfd
/// buffers and says so itself.
fn libcamera_log_levels(level: log::LevelFilter) -> &'static str {
    match level {
        log::LevelFilter::Off | log::LevelFilter::Error | log::LevelFilter::Warn => "*:ERROR,DmaBufAllocator:FATAL",
        log::LevelFilter::Info => "*:WARN",
        log::LevelFilter::Debug | log::LevelFilter::Trace => "*:INFO",
    }
}

/// Fails when the libcamera found at run time is not the minor version camnode
/// was compiled against: libcamera changes its ABI between minor versions.
fn check_version(runtime: &str) -> Result<()> {
    let built = libcamera::version::VERSION;
    let Some((major, minor)) = parse_major_minor(runtime) else {
        log::warn!("libcamera reports an unparsable version '{runtime}'; built against {built}");
        return Ok(());
    };
    if (major, minor) != (built.major, built.minor) {
        bail!(
            "camnode was built against libcamera {built} but this system runs libcamera {runtime}; \
             libcamera's ABI changes between minor versions: rebuild camnode against the installed \
             libcamera (install libcamera-dev, then `cargo build --release --features libcamera`)"
        );
    }
    Ok(())
}

/// `v0.5.2+rpt20250429` or `0.7.2` to `(0, 5)` / `(0, 7)`.
fn parse_major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim().trim_start_matches('v').split(['.', '+', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn find_camera(manager: &CameraManager, id: Option<&str>) -> Result<Camera<'static>> {
    let cameras = manager.cameras();
    if cameras.is_empty() {
        bail!(
            "libcamera {} found no camera. Check that the camera is connected and enabled \
             (`rpicam-hello --list-cameras` on a Pi), that this user may open /dev/media* and /dev/video* \
             (group video), and that this libcamera has the pipeline handler for the camera (Raspberry Pi \
             cameras need Raspberry Pi's libcamera with the rpi/vc4 or rpi/pisp pipeline); \
             LIBCAMERA_LOG_LEVELS=*:INFO shows what it probed",
            libcamera::version::runtime_version()
        );
    }
    match id {
        None => Ok(cameras.get(0).expect("non-empty camera list has a first camera")),
        Some(id) => manager.get(id).ok_or_else(|| {
            let known: Vec<String> =
                (0..cameras.len()).filter_map(|i| cameras.get(i)).map(|c| c.id().to_string()).collect();
            anyhow!(
                "source 'libcamera:{id}': no camera with that id; cameras: {} (see `camnode cameras`)",
                known.join(", ")
            )
        }),
    }
}

/// For `camnode doctor`: the libcamera this process runs with, checked
/// against the one camnode was built for.
pub fn runtime_version() -> Result<String> {
    let runtime = libcamera::version::runtime_version();
    check_version(runtime)?;
    Ok(format!("{runtime}, as built (libcamera {})", libcamera::version::VERSION))
}

/// For `camnode doctor`: finds `camera` (the first when `None`), then
/// acquires and releases it, which fails while another process has it.
/// The first result says which camera it is.
pub fn find_and_acquire(camera: Option<&str>) -> (Result<String>, Option<Result<()>>) {
    let found = start_manager().and_then(|manager| {
        let cam = find_camera(&manager, camera)?;
        let what = format!("{} ({})", info::model(&cam), cam.id());
        let acquired = cam.acquire().map(drop).map_err(|e| acquire_error(cam.id(), e));
        Ok((what, acquired))
    });
    match found {
        Ok((what, acquired)) => (Ok(what), Some(acquired)),
        Err(e) => (Err(e), None),
    }
}

/// Starts libcamera and finds the camera, with the Camera Module 3's sensor
/// HDR switched as `hdr` asks first (off unless asked, as rpicam-apps does):
/// the switch changes the modes the sensor offers, so libcamera must look at
/// the camera again after it.
fn open_manager(camera: Option<&str>, hdr: Option<Hdr>) -> Result<(CameraManager, Camera<'static>)> {
    let manager = start_manager()?;
    let cam = find_camera(&manager, camera)?;
    if !info::model(&cam).contains("imx708") {
        return Ok((manager, cam));
    }
    let on = matches!(hdr, Some(Hdr::Sensor | Hdr::Auto));
    let id = cam.id().to_string();
    match sensor_hdr::switch(&id, on) {
        Ok(false) => Ok((manager, cam)),
        Ok(true) => {
            log::info!("camera {id}: sensor HDR switched {}", if on { "on" } else { "off" });
            // The camera belongs to the manager: it goes first.
            drop(cam);
            drop(manager);
            let manager = start_manager()?;
            let cam = find_camera(&manager, Some(&id))?;
            Ok((manager, cam))
        }
        Err(e) if on => Err(e.context(format!("[capture] hdr = \"{}\" on camera {id}", hdr.map_or("", Hdr::name)))),
        Err(e) => {
            log::debug!("camera {id}: could not make sure the sensor HDR is off: {e:#}");
            Ok((manager, cam))
        }
    }
}

/// The controls `capture` asks of the camera, and the keys left out, with
/// what is worth saying about them said.
fn plan(capture: &CaptureConfig, info: &CameraInfo) -> Result<(Targets, Vec<String>)> {
    let planned = controls::targets(capture, info)?;
    for note in &planned.notes {
        log::info!("{note}");
    }
    for problem in &planned.left_out {
        log::warn!("{problem}");
    }
    Ok((planned.targets, planned.left_out))
}

/// How long to wait for a frame at the rate the controls ask for.
fn frame_timeout(targets: &Targets) -> Duration {
    match targets.get("FrameDurationLimits").map(|t| &t.value) {
        Some(Value::Ints(limits)) => {
            let longest = limits.iter().copied().max().unwrap_or(0).max(0) as u64;
            MIN_FRAME_TIMEOUT.max(Duration::from_micros(longest) * 4)
        }
        _ => MIN_FRAME_TIMEOUT,
    }
}

fn acquire_error(id: &str, err: io::Error) -> anyhow::Error {
    match err.raw_os_error() {
        Some(libc::EBUSY) => anyhow!(
            "camera {id} is in use by another process; stop it first (rpicam-*/libcamera apps, another \
             camnode: `fuser -v /dev/media* /dev/video*` lists them)"
        ),
        Some(libc::ENODEV) => anyhow!("camera {id} was disconnected"),
        _ => anyhow!("camera {id} could not be acquired: {err}"),
    }
}

/// The libcamera orientation that produces a flip.
fn orientation_for(flip: Flip) -> Orientation {
    match flip {
        Flip::None => Orientation::Rotate0,
        Flip::Horizontal => Orientation::Rotate0Mirror,
        Flip::Vertical => Orientation::Rotate180Mirror,
        Flip::Rotate180 => Orientation::Rotate180,
    }
}

/// Builds and validates the single-stream configuration: size, format (4:2:0,
/// or RGB for cameras without it), buffer count and, where the camera can
/// apply it, the orientation.
fn configure(
    camera: &Camera<'_>,
    id: &str,
    size: Option<(usize, usize)>,
    orientation: Orientation,
) -> Result<(CameraConfiguration, BufferFormat)> {
    let mut config = camera
        .generate_configuration(&[StreamRole::VideoRecording])
        .with_context(|| format!("camera {id} offers no video stream"))?;
    let (format, buffer_format, offered) = {
        let stream = config.get(0).context("libcamera generated an empty configuration")?;
        let offered: Vec<PixelFormat> = stream.formats().pixel_formats().into_iter().collect();
        let Some((format, buffer_format)) = choose_format(&offered) else {
            bail!(
                "camera {id} offers no video format that camnode takes (YUV420, NV12, or BGR888 converted); it offers {}",
                format_list(&offered)
            );
        };
        (format, buffer_format, offered)
    };
    {
        let mut stream = config.get_mut(0).expect("checked above");
        stream.set_pixel_format(format);
        if let Some((w, h)) = size {
            stream.set_size(Size { width: w as u32, height: h as u32 });
        }
        stream.set_buffer_count(BUFFER_COUNT);
    }
    // Only a sensor can flip its readout; pipelines without one (USB, the
    // virtual camera) report no mounting rotation and do not flip.
    let can_flip = camera.properties().get::<properties::Rotation>().is_ok();
    if orientation != Orientation::Rotate0 && can_flip {
        config.set_orientation(orientation);
    }
    if config.validate().is_invalid() {
        bail!("camera {id} rejected the configuration {}", config.to_string_repr());
    }
    if config.orientation() != orientation && config.orientation() != Orientation::Rotate0 {
        // Part of the flip was possible: ask for none and flip in software.
        config.set_orientation(Orientation::Rotate0);
        if config.validate().is_invalid() {
            bail!("camera {id} rejected the configuration {}", config.to_string_repr());
        }
    }

    let stream = config.get(0).expect("checked above");
    if stream.get_pixel_format() != format {
        bail!("camera {id} cannot deliver {format} at the requested size; it offers {}", format_list(&offered));
    }
    if let Some((w, h)) = size {
        let got = stream.get_size();
        if (got.width as usize, got.height as usize) != (w, h) {
            bail!(
                "camera {id} cannot capture {w}x{h} (libcamera offered {}x{} instead); set [capture] size to one of: {}",
                got.width,
                got.height,
                size_list(&stream.formats(), format)
            );
        }
    }
    Ok((config, buffer_format))
}

/// How the camera's buffers hold a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufferFormat {
    /// YUV 4:2:0 planes, lent to the pipeline as they are.
    Yuv(PixelLayout),
    /// Packed 24-bit RGB, R, G, B in memory order (libcamera's BGR888, named
    /// after DRM's little-endian words), converted to I420 frame by frame.
    Rgb24,
}

/// YUV420 where offered (planar, the encoder's native input), else NV12;
/// packed RGB, at the cost of a conversion, only when a camera has no YUV.
fn choose_format(offered: &[PixelFormat]) -> Option<(PixelFormat, BufferFormat)> {
    [
        (formats::YUV420, BufferFormat::Yuv(PixelLayout::I420)),
        (formats::NV12, BufferFormat::Yuv(PixelLayout::Nv12)),
        (formats::BGR888, BufferFormat::Rgb24),
    ]
    .into_iter()
    .find(|(format, _)| offered.contains(format))
}

fn format_list(formats: &[PixelFormat]) -> String {
    if formats.is_empty() {
        return "no formats".into();
    }
    formats.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
}

/// Sizes libcamera lists for a format, or its size range when it lists none.
fn sizes(formats: &libcamera::stream::StreamFormatsRef<'_>, format: PixelFormat) -> Vec<String> {
    let sizes = formats.sizes(format);
    if sizes.is_empty() {
        let range = formats.range(format);
        return vec![format!("{}x{} to {}x{}", range.min.width, range.min.height, range.max.width, range.max.height)];
    }
    sizes.iter().map(|s| format!("{}x{}", s.width, s.height)).collect()
}

fn size_list(formats: &libcamera::stream::StreamFormatsRef<'_>, format: PixelFormat) -> String {
    sizes(formats, format).join(", ")
}

/// The shape of every buffer of the configured stream.
struct Geometry {
    format: BufferFormat,
    width: usize,
    height: usize,
    /// Bytes per row of the Y plane; chroma strides follow from it.
    stride: usize,
    /// What libcamera says one frame takes, 0 if it did not say.
    frame_size: usize,
}

impl Geometry {
    /// Stride and row count of each plane, in Y, U (or UV), V order; V is
    /// empty for NV12, and packed RGB is one plane, kept in Y's place.
    fn plane_shapes(&self) -> [(usize, usize); 3] {
        let (_, chroma_rows) = chroma_size(self.width, self.height);
        match self.format {
            BufferFormat::Yuv(PixelLayout::I420) => {
                let chroma_stride = self.stride.div_ceil(2);
                [(self.stride, self.height), (chroma_stride, chroma_rows), (chroma_stride, chroma_rows)]
            }
            BufferFormat::Yuv(PixelLayout::Nv12) => [(self.stride, self.height), (self.stride, chroma_rows), (0, 0)],
            BufferFormat::Rgb24 => [(self.stride, self.height), (0, 0), (0, 0)],
        }
    }

    fn plane_count(&self) -> usize {
        match self.format {
            BufferFormat::Yuv(PixelLayout::I420) => 3,
            BufferFormat::Yuv(PixelLayout::Nv12) => 2,
            BufferFormat::Rgb24 => 1,
        }
    }

    /// Bytes of each plane and of a whole frame.
    fn plane_lengths(&self) -> ([usize; 3], usize) {
        let lengths = self.plane_shapes().map(|(stride, rows)| stride * rows);
        (lengths, lengths.iter().sum::<usize>().max(self.frame_size))
    }

    /// Splits a buffer's mapped planes into Y, U, V. A buffer has one mapping
    /// per plane, or one for the whole frame with the planes back to back.
    fn split<'a>(&self, mapped: &[&'a [u8]]) -> Result<[Plane<'a>; 3]> {
        let shapes = self.plane_shapes();
        let (lengths, _) = self.plane_lengths();
        let mut planes = [Plane { data: &[], stride: 0 }; 3];
        if mapped.len() >= self.plane_count() {
            for (i, plane) in planes.iter_mut().take(self.plane_count()).enumerate() {
                anyhow::ensure!(
                    mapped[i].len() >= lengths[i],
                    "buffer plane {i} holds {} bytes, {} needed for {}x{} {:?}",
                    mapped[i].len(),
                    lengths[i],
                    self.width,
                    self.height,
                    self.format
                );
                *plane = Plane { data: &mapped[i][..lengths[i]], stride: shapes[i].0 };
            }
        } else if let [whole] = mapped {
            let mut rest: &[u8] = whole;
            for (i, plane) in planes.iter_mut().take(self.plane_count()).enumerate() {
                anyhow::ensure!(
                    rest.len() >= lengths[i],
                    "buffer of {} bytes is too small for {}x{} {:?} with stride {}",
                    whole.len(),
                    self.width,
                    self.height,
                    self.format,
                    self.stride
                );
                let (data, tail) = rest.split_at(lengths[i]);
                *plane = Plane { data, stride: shapes[i].0 };
                rest = tail;
            }
        } else {
            bail!("buffer has {} planes, {:?} needs {}", mapped.len(), self.format, self.plane_count());
        }
        Ok(planes)
    }
}

/// A plane of a mapped buffer, kept as a pointer because the mapping is owned
/// by a request that moves between camnode and libcamera.
#[derive(Clone, Copy)]
struct RawPlane {
    ptr: *const u8,
    len: usize,
    stride: usize,
}

impl RawPlane {
    fn of(plane: &Plane<'_>) -> Self {
        RawPlane { ptr: plane.data.as_ptr(), len: plane.data.len(), stride: plane.stride }
    }

    /// # Safety
    /// The mapping must outlive `'a` and nothing may write to it meanwhile.
    unsafe fn as_plane<'a>(self) -> Plane<'a> {
        Plane { data: std::slice::from_raw_parts(self.ptr, self.len), stride: self.stride }
    }
}

#[derive(Clone, Copy)]
struct MappedPlanes {
    y: RawPlane,
    u: RawPlane,
    v: RawPlane,
}

/// Maps each buffer, records where its planes are and wraps it in a request
/// whose cookie is the buffer's index.
fn attach_buffers<B: AsFrameBuffer + 'static>(
    camera: &mut ActiveCamera<'_>,
    stream: &Stream,
    buffers: Vec<B>,
    geometry: &Geometry,
) -> Result<(Vec<Request>, Vec<MappedPlanes>)> {
    let mut requests = Vec::with_capacity(buffers.len());
    let mut planes = Vec::with_capacity(buffers.len());
    for (index, buffer) in buffers.into_iter().enumerate() {
        let mapped =
            MemoryMappedFrameBuffer::new(buffer).map_err(|e| anyhow!("could not map capture buffer {index}: {e}"))?;
        let [y, u, v] = geometry.split(&mapped.data()).with_context(|| format!("capture buffer {index}"))?;
        // Checked once here so that no frame needs checking later.
        match geometry.format {
            BufferFormat::Yuv(layout) => {
                let (width, height) = (geometry.width, geometry.height);
                let frame = Frame { width, height, layout, y, u, v, seq: 0, timestamp: 0.0 };
                frame.validate().with_context(|| format!("capture buffer {index}"))?;
            }
            BufferFormat::Rgb24 => anyhow::ensure!(
                geometry.stride >= geometry.width * 3,
                "capture buffer {index}: RGB rows of {} bytes cannot hold {} pixels",
                geometry.stride,
                geometry.width
            ),
        }
        planes.push(MappedPlanes { y: RawPlane::of(&y), u: RawPlane::of(&u), v: RawPlane::of(&v) });
        let mut request = camera.create_request(Some(index as u64)).context("libcamera could not create a request")?;
        request.add_buffer(stream, mapped).with_context(|| format!("could not attach capture buffer {index}"))?;
        requests.push(request);
    }
    Ok((requests, planes))
}

/// A frame buffer in anonymous shared memory (memfd), for cameras whose
/// pipeline cannot allocate dma-bufs here.
fn memfd_buffer(index: usize, geometry: &Geometry) -> Result<OwnedFrameBuffer> {
    let (lengths, total) = geometry.plane_lengths();
    let name = CString::new(format!("camnode-frame-{index}")).expect("no NUL in name");
    // SAFETY: plain syscall with a valid C string; the result is checked.
    let raw = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create for a capture buffer");
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let memfd = unsafe { OwnedFd::from_raw_fd(raw) };
    std::fs::File::from(memfd.try_clone()?).set_len(total as u64).context("sizing a capture buffer")?;
    let mut planes = Vec::with_capacity(geometry.plane_count());
    let mut offset = 0;
    for &length in lengths.iter().take(geometry.plane_count()) {
        // libcamera keeps its own duplicate of each descriptor. (libcamera-rs
        // 0.7 never closes the one it is given, so each buffer leaves two or
        // three descriptors open until exit; buffers are made once per open.)
        planes.push(FrameBufferPlane { fd: memfd.try_clone()?, offset: offset as u32, length: length as u32 });
        offset += length;
    }
    OwnedFrameBuffer::new(planes, Some(index as u64)).context("libcamera could not wrap a memfd capture buffer")
}

/// Converts a CLOCK_MONOTONIC timestamp to Unix seconds.
fn unix_time_of_monotonic(timestamp_ns: u64) -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let now_ns = now.tv_sec as i128 * 1_000_000_000 + now.tv_nsec as i128;
    let age_s = (now_ns - timestamp_ns as i128) as f64 / 1e9;
    unix_now() - age_s.max(0.0)
}

/// Turns libcamera's per-frame sequence numbers into camnode's frame counter
/// and counts the frames that never reached the pipeline.
#[derive(Debug, Default)]
struct SequenceTracker {
    last: Option<u32>,
    next_seq: u64,
    dropped: u64,
}

impl SequenceTracker {
    /// Accounts for one completed buffer. Returns the frame's `seq` when it is
    /// usable. Startup frames (the pipeline settling) before the first frame
    /// are not counted; every later frame that is unusable or missing (a gap
    /// in libcamera's sequence) counts as dropped.
    fn advance(&mut self, sequence: u32, status: FrameMetadataStatus) -> Option<u64> {
        let gap = match self.last {
            None if status == FrameMetadataStatus::Startup => return None,
            None => 0,
            Some(last) => u64::from(sequence.wrapping_sub(last).wrapping_sub(1)),
        };
        self.last = Some(sequence);
        self.dropped += gap;
        let seq = self.next_seq + gap;
        self.next_seq = seq + 1;
        if status == FrameMetadataStatus::Success {
            Some(seq)
        } else {
            self.dropped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use FrameMetadataStatus::{Error, Startup, Success};

    #[test]
    fn sequence_counts_gaps_and_failed_frames_as_dropped() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.advance(7, Success), Some(0));
        assert_eq!(t.advance(8, Success), Some(1));
        // 9 and 10 never arrived: the camera had no buffer for them.
        assert_eq!(t.advance(11, Success), Some(4));
        assert_eq!(t.dropped, 2);
        // A frame the camera marked as failed is dropped, not shown.
        assert_eq!(t.advance(12, Error), None);
        assert_eq!(t.advance(13, Success), Some(6));
        assert_eq!(t.dropped, 3);
    }

    #[test]
    fn sequence_ignores_startup_frames_and_survives_wraparound() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.advance(u32::MAX - 2, Startup), None);
        assert_eq!(t.advance(u32::MAX - 1, Startup), None);
        assert_eq!(t.advance(u32::MAX, Success), Some(0));
        assert_eq!(t.advance(0, Success), Some(1));
        assert_eq!(t.advance(2, Success), Some(3));
        assert_eq!(t.dropped, 1);
    }

    fn geometry(layout: PixelLayout, width: usize, height: usize, stride: usize) -> Geometry {
        Geometry { format: BufferFormat::Yuv(layout), width, height, stride, frame_size: 0 }
    }

    #[test]
    fn one_mapping_splits_into_back_to_back_planes() {
        // 4x2 I420 with Y rows padded to 8 bytes: Y 16, U 4, V 4 bytes.
        let g = geometry(PixelLayout::I420, 4, 2, 8);
        let buf: Vec<u8> = (0..24).collect();
        let [y, u, v] = g.split(&[&buf]).unwrap();
        assert_eq!((y.data.len(), y.stride), (16, 8));
        assert_eq!((u.data, u.stride), (&buf[16..20], 4));
        assert_eq!((v.data, v.stride), (&buf[20..24], 4));
        assert!(g.split(&[&buf[..23]]).unwrap_err().to_string().contains("too small"));
    }

    #[test]
    fn nv12_planes_map_one_to_one_with_full_stride_chroma() {
        let g = geometry(PixelLayout::Nv12, 6, 4, 8);
        let (ybuf, uvbuf) = (vec![1u8; 32], vec![2u8; 16]);
        let [y, uv, v] = g.split(&[&ybuf, &uvbuf]).unwrap();
        assert_eq!((y.data.len(), uv.data.len(), uv.stride, v.data.len()), (32, 16, 8, 0));
        let frame = Frame { width: 6, height: 4, layout: PixelLayout::Nv12, y, u: uv, v, seq: 0, timestamp: 0.0 };
        frame.validate().unwrap();
        let err = g.split(&[&ybuf, &uvbuf[..15]]).unwrap_err().to_string();
        assert!(err.contains("plane 1 holds 15 bytes, 16 needed"), "{err}");
    }

    #[test]
    fn memfd_frame_size_covers_libcamera_padding() {
        let mut g = geometry(PixelLayout::I420, 640, 480, 640);
        assert_eq!(g.plane_lengths(), ([640 * 480, 320 * 240, 320 * 240], 640 * 480 * 3 / 2));
        g.frame_size = 500_000;
        assert_eq!(g.plane_lengths().1, 500_000);
    }

    #[test]
    fn flips_map_to_libcamera_orientations() {
        assert_eq!(orientation_for(Flip::None), Orientation::Rotate0);
        assert_eq!(orientation_for(Flip::Horizontal), Orientation::Rotate0Mirror);
        assert_eq!(orientation_for(Flip::Vertical), Orientation::Rotate180Mirror);
        assert_eq!(orientation_for(Flip::Rotate180), Orientation::Rotate180);
    }

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(parse_major_minor("v0.5.2+rpt20250429"), Some((0, 5)));
        assert_eq!(parse_major_minor("0.7.2"), Some((0, 7)));
        assert_eq!(parse_major_minor("garbage"), None);
        let built = libcamera::version::VERSION;
        check_version(&format!("v{}.{}.99+custom", built.major, built.minor)).unwrap();
        let err = check_version(&format!("{}.{}.0", built.major, built.minor + 1)).unwrap_err().to_string();
        assert!(err.contains("rebuild camnode"), "{err}");
    }

    #[test]
    fn yuv420_is_preferred_over_nv12_and_rgb_taken_only_without_yuv() {
        let yuv = |layout| Some(BufferFormat::Yuv(layout));
        assert_eq!(choose_format(&[formats::NV12, formats::YUV420]).map(|f| f.1), yuv(PixelLayout::I420));
        assert_eq!(choose_format(&[formats::BGR888, formats::NV12]).map(|f| f.1), yuv(PixelLayout::Nv12));
        // vimc's formats: RGB888 is B, G, R in memory; camnode takes BGR888.
        assert_eq!(choose_format(&[formats::RGB888, formats::BGR888]), Some((formats::BGR888, BufferFormat::Rgb24)));
        assert!(choose_format(&[formats::YUYV, formats::RGB888]).is_none());
    }

    #[test]
    fn rgb_buffers_are_one_plane_of_padded_rows() {
        let g = Geometry { format: BufferFormat::Rgb24, width: 4, height: 2, stride: 16, frame_size: 0 };
        assert_eq!(g.plane_lengths(), ([32, 0, 0], 32));
        let buf = vec![0u8; 32];
        let [rgb, u, v] = g.split(&[&buf]).unwrap();
        assert_eq!((rgb.data.len(), rgb.stride, u.data.len(), v.data.len()), (32, 16, 0, 0));
    }

    #[test]
    fn busy_camera_error_names_the_fix() {
        let err = acquire_error("cam0", io::Error::from_raw_os_error(libc::EBUSY)).to_string();
        assert!(err.contains("in use by another process") && err.contains("fuser"), "{err}");
    }
}
