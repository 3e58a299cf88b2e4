"""The imagenode pipeline, rebuilt in Python + OpenCV as camnode's benchmark peer.

Issue 7 measures camnode against what people run today: imagenode's motion
detector feeding imagezmq. imagenode itself needs a camera, a YAML file and a
Raspberry Pi, so this script rebuilds its published per-frame algorithm
(imagenode/tools/imaging.py, Detector.detect_motion, and its send loop) on
frames read from a file, with nothing else in the way:

  BGR frame -> crop ROI -> cvtColor to gray -> GaussianBlur(k x k) ->
  accumulateWeighted into a float64 running average (alpha 0.5; the first
  frame seeds it) -> absdiff(gray, convertScaleAbs(average)) ->
  threshold(delta) -> dilate x2 -> findContours(external, simple) ->
  the frame moves if any contour's area reaches min_area % of the ROI ->
  imagenode's hysteresis: `moving` after min_motion_frames moving frames,
  `still` after min_still_frames still ones.

Frames are JPEG-encoded with cv2.imencode at --quality and sent with
imagezmq.ImageSender.send_jpg over REQ, waiting for each reply as imagenode's
single-threaded loop does: every frame (--send all, imagenode's
`send_frames: continuous`) or only frames while the state is moving
(--send motion, camnode's policy). State changes go out as imagenode's event
messages ("NODE VIEW|motion|moving") carrying its tiny 2x2 JPEG. OpenCV runs
single-threaded (cv2.setNumThreads(1)), as on a busy Pi.

Left out on purpose: imagenode's `sleep(0.02)` "for testing" after each
detection (it would only flatter camnode) and its defensive copy of the
threshold image before findContours (OpenCV >= 3.2 leaves its input alone).

Honest measurement: all frames are read and converted to BGR before any
timing (from a YUV4MPEG2 4:2:0 file, or from a directory of 0.jpg, 1.jpg, ...
optionally scaled with --scale WxH); the first --warmup frames of each run go
through the pipeline but are not timed; --runs repeats the pass over the same
frames and the top-level numbers are medians over runs. CPU time is the whole
process's (time.process_time), so imagezmq's I/O thread counts too. Latency
is capture to hub: from the moment a frame enters the pipeline until the
hub's reply to its image arrives, for every image sent. Peak RSS is the
process high-water mark; since the preloaded frames dominate it, their size
is reported beside it and subtracted in peak_rss_excl_frames_mb.

The hub must be an imagezmq REP hub that replies b'OK' and does little else,
e.g. tests/python/imagezmq_hub.py, which counts and keeps what arrives and
checks it decodes only after the stream ends:

    PY=$(scripts/python-env.sh)
    $PY tests/python/imagezmq_hub.py --port 5555 --idle 5 --out hub.json &
    $PY bench/imagenode_peer.py --jpeg-dir ../shared/footage/vtest --scale 1920x1080 \\
        --send all --hub tcp://127.0.0.1:5555 --runs 3 --json peer.json

--write-y4m PATH instead saves the loaded (and scaled) frames as a Y4M file
and exits, so camnode and this peer can be fed exactly the same frames.
"""

import argparse
import json
import os
import platform
import re
import resource
import statistics
import sys
import time

import cv2
import imagezmq
import numpy as np
import zmq

# imagenode's defaults (Detector.__init__); the CLI exposes each of them.
DEFAULT_DELTA_THRESHOLD = 5
DEFAULT_MIN_AREA_PCT = 3
DEFAULT_MIN_MOTION_FRAMES = 3
DEFAULT_MIN_STILL_FRAMES = 3
DEFAULT_BLUR_KERNEL = 15
# How long to wait for a hub reply before giving up: imagezmq itself waits
# forever, which turns a missing hub into a silent hang.
REPLY_TIMEOUT_MS = 10_000
# 4:2:0 planar variants that differ only in chroma siting, which a conversion
# to BGR before timing can ignore.
Y4M_420 = {"420", "420jpeg", "420paldv", "420mpeg2"}


def fail(message):
    sys.exit(f"imagenode_peer: error: {message}")


def parse_size(text):
    match = re.fullmatch(r"(\d+)x(\d+)", text)
    if not match or int(match[1]) == 0 or int(match[2]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1920x1080")
    return int(match[1]), int(match[2])


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--y4m", help="YUV4MPEG2 4:2:0 file to read frames from")
    source.add_argument("--jpeg-dir", help="directory of 0.jpg, 1.jpg, ... read in numeric order")
    parser.add_argument("--scale", type=parse_size, help="resize every frame to WxH before timing")
    parser.add_argument("--frames", type=int, help="use at most this many frames")
    parser.add_argument("--write-y4m", metavar="PATH",
                        help="write the loaded frames as Y4M 4:2:0 and exit without benchmarking")
    parser.add_argument("--hub", default="tcp://127.0.0.1:5555", help="imagezmq REP hub to send to")
    parser.add_argument("--send", choices=["all", "motion"], default="motion",
                        help="all: every frame (imagenode 'continuous'); motion: frames while moving")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames at the start of each run")
    parser.add_argument("--runs", type=int, default=1, help="timed passes over the frames; medians are reported")
    parser.add_argument("--delta-threshold", type=int, default=DEFAULT_DELTA_THRESHOLD)
    parser.add_argument("--min-area", type=float, default=DEFAULT_MIN_AREA_PCT, help="percent of the ROI")
    parser.add_argument("--min-motion-frames", type=int, default=DEFAULT_MIN_MOTION_FRAMES)
    parser.add_argument("--min-still-frames", type=int, default=DEFAULT_MIN_STILL_FRAMES)
    parser.add_argument("--blur", type=int, default=DEFAULT_BLUR_KERNEL, help="Gaussian kernel size (odd)")
    parser.add_argument("--name", default="peer", help="node name in message texts")
    parser.add_argument("--view", default="bench", help="view name in message texts")
    parser.add_argument("--json", metavar="FILE", help="write the results here instead of stdout")
    args = parser.parse_args()
    if not 1 <= args.quality <= 100:
        parser.error(f"--quality {args.quality}: must be 1..100")
    if args.blur < 1 or args.blur % 2 == 0:
        parser.error(f"--blur {args.blur}: GaussianBlur needs an odd kernel size, e.g. 15")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames {args.frames}: must be at least 1")
    return args


def read_y4m(path, limit):
    """Yields each frame of a Y4M 4:2:0 file converted to BGR."""
    try:
        f = open(path, "rb")
    except OSError as err:
        fail(f"--y4m {path}: {err.strerror}")
    with f:
        header = f.readline().split()
        if not header or header[0] != b"YUV4MPEG2":
            fail(f"--y4m {path}: not a YUV4MPEG2 file (first word is not YUV4MPEG2)")
        params = {token[:1]: token[1:].decode() for token in header[1:]}
        width, height = int(params.get(b"W", 0)), int(params.get(b"H", 0))
        colour = params.get(b"C", "420jpeg")  # the format's default
        if colour not in Y4M_420:
            fail(f"--y4m {path}: colour space C{colour} is not 4:2:0; convert it with "
                 f"ffmpeg -i IN -pix_fmt yuv420p OUT.y4m")
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            fail(f"--y4m {path}: frame size {width}x{height} must be even and non-zero")
        frame_bytes = width * height * 3 // 2
        count = 0
        while limit is None or count < limit:
            marker = f.readline()
            if not marker:
                break
            if not marker.startswith(b"FRAME"):
                fail(f"--y4m {path}: frame {count} does not start with FRAME")
            data = f.read(frame_bytes)
            if len(data) != frame_bytes:
                fail(f"--y4m {path}: frame {count} is truncated")
            planes = np.frombuffer(data, dtype=np.uint8).reshape(height * 3 // 2, width)
            yield cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420)
            count += 1


def read_jpeg_dir(path, limit):
    """Yields the frames N.jpg of a directory in numeric order, decoded to BGR."""
    try:
        names = [n for n in os.listdir(path) if re.fullmatch(r"\d+\.jpg", n)]
    except OSError as err:
        fail(f"--jpeg-dir {path}: {err.strerror}")
    if not names:
        fail(f"--jpeg-dir {path}: no frames named 0.jpg, 1.jpg, ...")
    names.sort(key=lambda n: int(n[:-4]))
    for name in names[:limit]:
        frame = cv2.imread(os.path.join(path, name), cv2.IMREAD_COLOR)
        if frame is None:
            fail(f"--jpeg-dir {path}: {name} is not a readable JPEG")
        yield frame


def load_frames(args):
    frames = read_y4m(args.y4m, args.frames) if args.y4m else read_jpeg_dir(args.jpeg_dir, args.frames)
    if args.scale:
        frames = (cv2.resize(f, args.scale, interpolation=cv2.INTER_LINEAR) for f in frames)
    frames = list(frames)
    if not frames:
        fail("the source holds no frames")
    if len({f.shape for f in frames}) != 1:
        fail("the frames differ in size; use --scale WxH to make them equal")
    return frames


def write_y4m(path, frames):
    height, width = frames[0].shape[:2]
    if width % 2 or height % 2:
        fail(f"--write-y4m {path}: 4:2:0 needs an even frame size, not {width}x{height}; use --scale")
    with open(path, "wb") as f:
        # cv2's I420 conversion averages each 2x2 block: centred chroma, which is C420jpeg.
        f.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())


class MotionDetector:
    """imagenode's motion detector on a full-frame ROI, with its state machine."""

    def __init__(self, width, height, args):
        self.blur = (args.blur, args.blur)
        self.delta_threshold = args.delta_threshold
        # Integer pixels, as imagenode computes them.
        self.min_area_pixels = int(width * height * args.min_area) // 100
        self.min_motion_frames = args.min_motion_frames
        self.min_still_frames = args.min_still_frames
        self.min_frames = max(args.min_motion_frames, args.min_still_frames)
        self.average = None
        self.moving_frames = self.still_frames = self.total_frames = 0
        self.state = self.reported = "unknown"

    def update(self, bgr):
        """Feeds one frame; returns the new state if it changed, else None."""
        gray = cv2.GaussianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), self.blur, 0)
        if self.average is None:
            self.average = gray.astype(np.float64)
        else:
            cv2.accumulateWeighted(gray, self.average, 0.5)
        delta = cv2.absdiff(gray, cv2.convertScaleAbs(self.average))
        changed = cv2.threshold(delta, self.delta_threshold, 255, cv2.THRESH_BINARY)[1]
        changed = cv2.dilate(changed, None, iterations=2)
        contours = cv2.findContours(changed, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
        if any(cv2.contourArea(c) >= self.min_area_pixels for c in contours):
            self.moving_frames += 1
        else:
            self.moving_frames = 0
            self.still_frames += 1

        self.total_frames += 1
        if self.total_frames < self.min_frames:
            return None
        if self.moving_frames >= self.min_motion_frames:
            self.state = "moving"
            self.still_frames = 0
        elif self.still_frames >= self.min_still_frames:
            self.state = "still"
        if self.state == self.reported:
            return None
        self.reported = self.state
        return self.state


class Sender:
    """imagezmq REQ sender that fails instead of hanging when the hub is gone."""

    def __init__(self, address, quality):
        self.address = address
        self.params = [int(cv2.IMWRITE_JPEG_QUALITY), quality]
        self.sender = imagezmq.ImageSender(connect_to=address)
        self.sender.zmq_socket.setsockopt(zmq.RCVTIMEO, REPLY_TIMEOUT_MS)
        self.tiny_jpg = self.encode(np.zeros((2, 2), dtype=np.uint8))

    def encode(self, image):
        ok, jpg = cv2.imencode(".jpg", image, self.params)
        if not ok:
            fail("cv2.imencode could not encode a frame")
        return jpg

    def send(self, text, jpg):
        try:
            reply = self.sender.send_jpg(text, jpg)
        except zmq.Again:
            fail(f"--hub {self.address}: no reply within {REPLY_TIMEOUT_MS // 1000} s; is an imagezmq hub running there?")
        if reply != b"OK":
            fail(f"--hub {self.address}: replied {reply!r} instead of b'OK'")

    def close(self):
        self.sender.zmq_socket.close(linger=0)
        self.sender.zmq_context.term()


def run_once(frames, args, sender):
    """One pass over the frames; returns the timed numbers of that pass."""
    height, width = frames[0].shape[:2]
    detector = MotionDetector(width, height, args)
    image_text = f"{args.name} {args.view}|jpg"
    event_text = f"{args.name} {args.view}|motion"
    perf = time.perf_counter
    stage = {"detect": 0.0, "encode": 0.0, "send": 0.0}
    latencies = []
    counts = {"moving_frames": 0, "encoded": 0, "sent": 0, "events": 0, "bytes": 0}
    for index, frame in enumerate(frames):
        timed = index >= args.warmup
        if index == args.warmup:
            wall_start, cpu_start = perf(), time.process_time()
        captured = perf()
        changed_to = detector.update(frame)
        detected = perf()
        moving = detector.state == "moving"
        jpg = None
        if args.send == "all" or moving:
            jpg = sender.encode(frame)
        encoded = perf()
        if changed_to:
            sender.send(f"{event_text}|{changed_to}", sender.tiny_jpg)
        if jpg is not None:
            sender.send(image_text, jpg)
        sent = perf()
        if not timed:
            continue
        stage["detect"] += detected - captured
        stage["encode"] += encoded - detected
        stage["send"] += sent - encoded
        counts["moving_frames"] += moving
        counts["events"] += changed_to is not None
        if jpg is not None:
            counts["encoded"] += 1
            counts["sent"] += 1
            counts["bytes"] += len(jpg)
            latencies.append(sent - captured)
    wall = perf() - wall_start
    cpu = time.process_time() - cpu_start
    timed_frames = len(frames) - args.warmup
    result = {"frames": timed_frames, **counts, "wall_s": wall, "cpu_s": cpu,
              "fps": timed_frames / wall, "cpu_ms_per_frame": cpu * 1000 / timed_frames,
              "frames_per_cpu_s": timed_frames / cpu}
    if latencies:
        p50, p99 = np.percentile(latencies, [50, 99]) * 1000
        result.update(latency_ms_p50=float(p50), latency_ms_p99=float(p99))
    result["stage_ms_per_frame"] = {k: v * 1000 / timed_frames for k, v in stage.items()}
    return result


def peak_rss_kib():
    """This process's memory high-water mark (VmHWM). ru_maxrss survives
    exec, so under a big parent (a benchmark driver) it reports the parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def median_of(runs):
    """Per-field medians over runs (nested dicts field by field)."""
    merged = {}
    for key, value in runs[0].items():
        if isinstance(value, dict):
            merged[key] = median_of([r[key] for r in runs])
        elif all(key in r for r in runs):
            merged[key] = statistics.median(r[key] for r in runs)
    return merged


def main():
    args = parse_args()
    cv2.setNumThreads(1)
    frames = load_frames(args)
    if args.write_y4m:
        write_y4m(args.write_y4m, frames)
        print(f"wrote {len(frames)} frames to {args.write_y4m}", file=sys.stderr)
        return
    if len(frames) <= args.warmup:
        fail(f"{len(frames)} frames leave nothing to time after --warmup {args.warmup}")
    sender = Sender(args.hub, args.quality)
    runs = [run_once(frames, args, sender) for _ in range(args.runs)]
    sender.close()

    height, width = frames[0].shape[:2]
    frames_mb = sum(f.nbytes for f in frames) / 2**20
    peak_rss_mb = peak_rss_kib() / 1024
    report = {
        "peer": "imagenode pipeline (Python + OpenCV + imagezmq)",
        "source": args.y4m or args.jpeg_dir,
        "width": width, "height": height, "send": args.send, "quality": args.quality,
        "warmup": args.warmup,
        **median_of(runs),
        "peak_rss_mb": peak_rss_mb, "frames_mb": frames_mb,
        "peak_rss_excl_frames_mb": peak_rss_mb - frames_mb,
        "runs": runs,
        "versions": {"python": platform.python_version(), "opencv": cv2.__version__,
                     "numpy": np.__version__, "pyzmq": zmq.__version__,
                     "libzmq": zmq.zmq_version(), "imagezmq": imagezmq.__version__},
        "opencv_threads": cv2.getNumThreads(),
    }
    text = json.dumps(report, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    print(f"imagenode peer {width}x{height} send={args.send}: {report['fps']:.1f} frames/s, "
          f"{report['cpu_ms_per_frame']:.2f} CPU ms/frame, {report['sent']:.0f} sent, "
          f"median of {args.runs} run(s)", file=sys.stderr)


if __name__ == "__main__":
    main()
