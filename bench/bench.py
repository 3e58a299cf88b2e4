"""camnode's performance benchmark (issue 7), side by side with the imagenode
pipeline and with bare libjpeg-turbo, on the same frames. Run it through
bench/run.sh, which builds what it needs first.

Workloads, each a Y4M file written once under ~/.cache/camnode/bench, so all
decoding and scaling happens before anything is timed, and copied to RAM
while it is measured, so no run waits for the disk (see in_memory):

  (a) a still 1080p scene with sensor noise: vtest's first frame scaled to
      1920x1080, plus fresh Gaussian noise in every frame. Motion detection
      only: nothing may be encoded (send = motion, as imagenode's default).
  (b) ../shared/footage/vtest scaled to 1920x1080: motion everywhere; every
      frame is detected, encoded at quality 90 and sent (send = all).
  (c) the same footage at its own 768x576.

Pipelines, each over the same file, R times (--runs) taking turns run by
run, so that other work on the machine falls on all alike; medians reported,
and for ratios the median over turns of ratios in which each run counts
relative to bare encoding measured just before and just after it:

  imagenode   bench/imagenode_peer.py: imagenode's algorithm in Python and
              OpenCV, single-threaded, sending with imagezmq over REQ.
  camnode     the release binary, `run --rate max`, once per --workers value;
              on (b) also with one worker and every thread held to one core,
              the single-core throughput that two workers are measured against.
  bare        bench/bare_jpeg.rs: libjpeg-turbo alone on the same I420
              frames at the same quality: the encoding limit. It also times
              reading the frames with camnode's own Y4M reader: camnode pays
              that on top for a file, not for a camera, and the report shows
              its numbers with and without it. On (b) and (c) also on as
              many threads as each camnode worker count above 1, each
              thread encoding every N-th frame: the limit of that many cores.

Both senders talk to the same hub, the unmodified imagezmq ImageHub of
tests/python/imagezmq_hub.py, one per pipeline and workload, on loopback.
It keeps every image to decode after the last run, in memory it faults in
before the first (sized from bare encoding's JPEGs): it shares the two cores
with the sender, and faulting memory in for each image as it arrives cost
it half as much CPU again as receiving it (see PayloadStore in the hub).
The first --warmup frames of every run are processed but not timed. CPU is
the whole process's (every thread, the ZeroMQ I/O thread included), so is
peak RSS; the peer's RSS is shown without the frames it preloads. Latency is
capture to hub reply. Every run is checked: the hub must have received
exactly one image per frame (none on the still scene), all decodable at the
frame's size, and camnode must have dropped nothing.

A last camnode run measures memory under pressure: (b) against a hub that
answers only every 50 ms, so the send queue stays full, with the default
settings (send = motion with its pre-event frames, default workers).
"""

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
PEER = REPO / "bench" / "imagenode_peer.py"
HUB = REPO / "tests" / "python" / "imagezmq_hub.py"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "camnode" / "bench"
# Bump when the way a workload is made changes, so stale files are not reused.
WORKLOAD_VERSION = 1
STILL_FRAMES = 300
# Sensor noise of the still scene, standard deviation in 8-bit steps.
STILL_NOISE = 2.0
QUALITY = 90
# Where workloads are staged while measured without root (see in_memory),
# and where they were, for the report.
RAM_DIR = Path("/dev/shm")
STAGED_IN = set()
# The slow hub of the memory run replies after this long.
SLOW_HUB_DELAY = 0.05


def log(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def fail(text):
    sys.exit(f"bench: error: {text}")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camnode", required=True, type=Path, help="the release camnode binary")
    parser.add_argument("--bare", required=True, type=Path, help="the bare_jpeg example binary")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared folder with footage/vtest (default: ../shared)")
    parser.add_argument("--workloads", default="a,b,c", help="comma-separated subset of a,b,c")
    parser.add_argument("--workers", default="1,2", help="camnode encoder worker counts to run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per pipeline; medians are reported")
    parser.add_argument("--warmup", type=int, default=10, help="untimed frames at the start of every run")
    parser.add_argument("--frames", type=int, help="use only the first N frames of each workload (a quick check)")
    parser.add_argument("--no-memory-run", action="store_true", help="skip the full-queue memory run")
    parser.add_argument("--out", type=Path, help="also write the markdown report here (and the raw results beside it as .json)")
    args = parser.parse_args()
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in "abc" for w in args.workloads):
        parser.error("--workloads takes a comma-separated subset of a,b,c")
    try:
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error(f"--workers {args.workers!r}: give numbers like 1,2")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")
    if args.frames is not None and args.frames <= args.warmup:
        parser.error(f"--frames {args.frames} leaves nothing to time after --warmup {args.warmup}")
    for path, flag in ((args.camnode, "--camnode"), (args.bare, "--bare")):
        if not os.access(path, os.X_OK):
            fail(f"{flag} {path} is not an executable; bench/run.sh builds both")
    return args


# ---------------------------------------------------------------- workloads

def write_atomically(path, write):
    """Runs write(tmp) and renames, so an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def vtest_dir(args):
    folder = args.shared / "footage" / "vtest"
    if not (folder / "0.jpg").is_file():
        fail(f"{folder} has no frames 0.jpg, 1.jpg, ...: clone the shared folder beside the repository or pass --shared")
    return folder


def prepare_vtest(args, size):
    """vtest as Y4M, scaled by the peer itself, so both see the same pixels."""
    path = CACHE / f"vtest-{size}-v{WORKLOAD_VERSION}.y4m"
    if not path.exists():
        log(f"writing {path}")
        scale = [] if size == "768x576" else ["--scale", size]
        write_atomically(path, lambda tmp: subprocess.run(
            [sys.executable, str(PEER), "--jpeg-dir", str(vtest_dir(args)), *scale, "--write-y4m", str(tmp)],
            check=True, stdout=subprocess.DEVNULL))
    return path


def prepare_still(args):
    """A still 1080p scene: vtest's first frame, fresh sensor noise per frame."""
    path = CACHE / f"still-1920x1080-v{WORKLOAD_VERSION}.y4m"
    if path.exists():
        return path
    log(f"writing {path}")
    scene = cv2.resize(cv2.imread(str(vtest_dir(args) / "0.jpg")), (1920, 1080), interpolation=cv2.INTER_LINEAR)
    planes = cv2.cvtColor(scene, cv2.COLOR_BGR2YUV_I420).astype(np.float32)
    rng = np.random.default_rng(7)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(b"YUV4MPEG2 W1920 H1080 F30:1 Ip A1:1 C420jpeg\n")
            for _ in range(STILL_FRAMES):
                noisy = planes + rng.normal(0.0, STILL_NOISE, planes.shape).astype(np.float32)
                f.write(b"FRAME\n")
                f.write(np.clip(np.rint(noisy), 0, 255).astype(np.uint8).tobytes())

    write_atomically(path, write)
    return path


def y4m_info(path):
    with open(path, "rb") as f:
        fields = f.readline().split()
    width = int(next(x for x in fields if x.startswith(b"W"))[1:])
    height = int(next(x for x in fields if x.startswith(b"H"))[1:])
    frames = (path.stat().st_size - len(b" ".join(fields)) - 1) // (width * height * 3 // 2 + 6)
    return width, height, frames


def limited(args, path):
    """The workload's file and frame count, or a copy of its first --frames frames."""
    width, height, frames = y4m_info(path)
    if args.frames is None or args.frames >= frames:
        return path, frames
    short = CACHE / f"{path.stem}-first{args.frames}.y4m"
    if not short.exists():
        frame_bytes = 6 + width * height * 3 // 2

        def write(tmp):
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                dst.write(src.readline())
                dst.write(src.read(frame_bytes * args.frames))

        write_atomically(short, write)
    return short, args.frames


@contextlib.contextmanager
def in_memory(path, huge_pages=True):
    """The workload in RAM for as long as it is measured: "decoded before
    timing" means no run may wait for the disk, and on a VM the page cache
    is no promise (the host reclaims idle pages: this machine's kdamond
    does, between runs). Yields the path to use and what to do before each
    run.

    The RAM is a tmpfs of its own with huge pages, as root can mount one:
    the peer's preloaded frames are NumPy arrays, which NumPy puts on huge
    pages (it madvises every allocation of 4 MB or more), so camnode's
    frames get the same. Without root, or when RSS is what is measured
    (`huge_pages` false: a mapped huge page counts whole, 2 MB around each
    frame camnode holds), /dev/shm with small pages; without room there,
    the page cache, read once before every run."""
    size = path.stat().st_size
    with tempfile.TemporaryDirectory(prefix="camnode-bench-ram-") as mount_point:
        mounted = huge_pages and os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"huge=always,size={size // (1 << 20) + 64}m", "camnode-bench", mount_point],
            stderr=subprocess.DEVNULL).returncode == 0
        try:
            if mounted:
                ram, kind = Path(mount_point), "tmpfs with huge pages"
            elif RAM_DIR.is_dir() and shutil.disk_usage(RAM_DIR).free > 2 * size:
                ram, kind = Path(tempfile.mkdtemp(prefix="camnode-bench-", dir=RAM_DIR)), f"{RAM_DIR}, small pages"
            else:
                log(f"warning: no RAM to stage {path.name} in: reading it from the page cache, which the system may evict")
                yield path, lambda: warm_page_cache(path)
                return
            copy = ram / path.name
            shutil.copyfile(path, copy)
            log(f"{path.name} staged in RAM: {kind}")
            if huge_pages:
                STAGED_IN.add(kind)
            try:
                yield copy, lambda: None
            finally:
                copy.unlink()
                if not mounted:
                    ram.rmdir()
        finally:
            if mounted:
                subprocess.run(["umount", mount_point], check=True)


def warm_page_cache(path):
    """Reads the file once, so no run pays for the disk and all read alike."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


# ---------------------------------------------------------------- hubs

class Hub:
    """The imagezmq hub of tests/python/imagezmq_hub.py on a free port."""

    def __init__(self, workdir, name, keep_mb):
        self.out = workdir / f"hub-{name}.json"
        self.proc = subprocess.Popen([sys.executable, str(HUB), "--port", "0", "--out", str(self.out),
                                      "--keep-mb", str(keep_mb)],
                                     stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline().split()
        if len(ready) != 2 or ready[0] != "READY":
            fail(f"the hub did not start (said {ready!r})")
        self.address = "tcp://127.0.0.1:" + ready[1].rsplit(":", 1)[1]
        # Drain its CONNECTED/DISCONNECTED lines so the pipe never fills.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)
        return json.loads(self.out.read_text())


class SlowHub:
    """A REP hub that takes SLOW_HUB_DELAY per message, so a faster node's
    send queue stays full. The delay is the point of it, not a wait for
    something to happen."""

    def __init__(self):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REP)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stopping.is_set():
            if self.socket.poll(100):
                self.socket.recv_multipart()
                time.sleep(SLOW_HUB_DELAY)
                self.socket.send(b"OK")

    def stop(self):
        self.stopping.set()
        self.thread.join()
        self.context.destroy(linger=0)


def check_hub(summary, expected_images, width, height, what):
    """Exactly the expected images arrived, each a JPEG of the frame's size."""
    images = [m for m in summary["messages"] if m["msg"].endswith("|jpg") and "|motion|" not in m["msg"]]
    if len(images) != expected_images:
        fail(f"{what}: the hub received {len(images)} images, expected {expected_images}")
    bad = [m for m in images if (m.get("width"), m.get("height")) != (width, height)]
    if bad:
        fail(f"{what}: {len(bad)} images did not decode at {width}x{height}, e.g. {bad[0]}")
    if summary["errors"]:
        fail(f"{what}: the hub reported {summary['errors']} malformed messages")


# ---------------------------------------------------------------- pipelines

def camnode_name(workers):
    return f"camnode, {workers} worker" + ("s" if workers > 1 else "")


# What "single-core throughput" is measured on: one worker, camnode held to one core.
ONE_CORE = "camnode, 1 worker, one core"
BARE = "bare libjpeg-turbo"


def bare_name(threads):
    return BARE if threads == 1 else f"{BARE}, {threads} threads"


def peer_once(args, workdir, workload, path, frames, hub_address):
    """One run of the imagenode pipeline, checked."""
    out = workdir / "peer.json"
    subprocess.run([sys.executable, str(PEER), "--y4m", str(path), "--send", workload["send"],
                    "--quality", str(QUALITY), "--hub", hub_address, "--runs", "1",
                    "--warmup", str(args.warmup), "--json", str(out)], check=True)
    report = json.loads(out.read_text())
    run = report["runs"][0]
    timed = frames - args.warmup
    if run["frames"] != timed or run["encoded"] != (timed if workload["send"] == "all" else 0):
        fail(f"imagenode on {workload['key']}: a run timed {run['frames']} frames and encoded {run['encoded']}")
    return {"fps": run["fps"], "cpu_ms_per_frame": run["cpu_ms_per_frame"], "rss_mb": report["peak_rss_excl_frames_mb"],
            "latency_ms_p50": run.get("latency_ms_p50"), "latency_ms_p99": run.get("latency_ms_p99")}


def camnode_once(args, workdir, workload, path, frames, hub_address, workers, one_core):
    """One run of camnode, checked."""
    stats_path, spool = workdir / "stats.json", workdir / "spool"
    command = [
        str(args.camnode), "run", "--source", f"y4m:{path}", "--rate", "max", "--send", workload["send"],
        "--quality", str(QUALITY), "--workers", str(workers), "--hub", hub_address, "--name", "camnode",
        "--view", "bench", "--heartbeat", "0", "--spool", str(spool), "--stats-json", str(stats_path),
        "--stats-warmup", str(args.warmup),
    ]
    # One core: every thread of camnode (main loop, sender, ZeroMQ's) on
    # the same one, while the hub may use the other.
    core = min(os.sched_getaffinity(0))
    subprocess.run(command, check=True, preexec_fn=(lambda: os.sched_setaffinity(0, {core})) if one_core else None)
    stats = json.loads(stats_path.read_text())
    shutil.rmtree(spool, ignore_errors=True)
    steady, expected = stats["steady"], frames if workload["send"] == "all" else 0
    what = f"camnode on {workload['key']} with {workers} workers" + (" on one core" if one_core else "")
    if stats["frames"] != frames or stats["encoded"] != expected or steady["frames"] != frames - args.warmup:
        fail(f"{what}: {stats['frames']} frames, {stats['encoded']} encoded, expected {frames} and {expected}")
    if stats["dropped"] or stats["source_dropped"]:
        fail(f"{what}: dropped {stats['dropped']} messages and {stats['source_dropped']} frames")
    return {"fps": steady["fps"], "cpu_ms_per_frame": steady["cpu_ms_per_frame"],
            "encode_cpu_ms_per_frame": steady["encode_cpu_ms_per_frame"], "rss_mb": stats["max_rss_kb"] / 1024,
            "latency_ms_p50": stats["latency_ms_p50"] if expected else None,
            "latency_ms_p99": stats["latency_ms_p99"] if expected else None}


def bare_once(args, path, frames, threads):
    """One run of bare encoding (and of reading the file) on `threads`
    threads, checked. Frames past the last whole round of `threads` are left
    out, and so are the rounds that hold warm-up frames."""
    out = subprocess.run([str(args.bare), str(path), "--quality", str(QUALITY), "--warmup", str(args.warmup),
                          "--threads", str(threads)], check=True, capture_output=True, text=True).stdout
    result = json.loads(out)
    rounds, warmup_rounds = frames // threads, -(-args.warmup // threads)
    if result["frames"] != (rounds - warmup_rounds) * threads:
        fail(f"bare encoding on {threads} threads timed {result['frames']} frames of {frames} with {args.warmup} warm-up")
    return {k: result[k] for k in ("fps", "cpu_ms_per_frame", "read_cpu_ms_per_frame", "bytes_per_frame")}


def gauge(before, after):
    """What the bare encoder measured just before and just after a run, averaged."""
    return {threads: {key: (before[threads][key] + after[threads][key]) / 2 for key in before[threads]}
            for threads in before}


def hub_room(args, workload, frames, jpeg_bytes):
    """Megabytes a hub faults in up front for every image a pipeline sends it
    in all runs, at the size bare encoding makes them and a quarter more
    (see PayloadStore in the hub)."""
    if workload["send"] != "all":
        return 0
    return int(args.runs * frames * jpeg_bytes * 1.25) // (1 << 20) + 1


def measure(args, workdir, workload, path, frames, warm):
    """Every pipeline --runs times on one workload, taking turns run by run,
    so that whatever else the machine does falls on all of them alike.
    Bare encoding runs before the first pipeline of a turn and after each:
    every pipeline run carries, as "gauge", the bare encoder's figures on
    each side of it, by thread count. The machine's speed drifts by 10 to
    40 % over minutes, and a ratio of two runs, each taken relative to its
    own gauge, leaves that drift out. Returns the runs of each pipeline,
    bare encoding last."""
    def camnode(workers, one_core=False):
        return lambda *common: camnode_once(args, *common, workers=workers, one_core=one_core)

    senders = [("imagenode", lambda *common: peer_once(args, *common))]
    senders += [(camnode_name(w), camnode(w)) for w in args.workers]
    if workload["key"] == "b":
        senders.append((ONE_CORE, camnode(1, one_core=True)))
    bare_threads = [1] + (sorted({w for w in args.workers if w > 1}) if workload["send"] == "all" else [])
    runs = {name: [] for name, _ in senders}
    runs.update({bare_name(t): [] for t in bare_threads})
    hubs = {}
    try:
        def bare_slot():
            slot = {}
            for threads in bare_threads:
                warm()
                slot[threads] = bare_once(args, path, frames, threads)
                runs[bare_name(threads)].append(dict(slot[threads], gauge=slot))
            return slot

        for _ in range(args.runs):
            before = bare_slot()
            if not hubs:
                keep_mb = hub_room(args, workload, frames, before[1]["bytes_per_frame"])
                for name, _ in senders:
                    hubs[name] = Hub(workdir, f"{workload['key']}-{len(hubs)}", keep_mb)
            for name, once in senders:
                warm()
                run = once(workdir, workload, path, frames, hubs[name].address)
                after = bare_slot()
                runs[name].append(dict(run, gauge=gauge(before, after)))
                before = after
    finally:
        summaries = {name: hub.stop() for name, hub in hubs.items()}
    width, height, _ = y4m_info(path)
    for name, summary in summaries.items():
        check_hub(summary, args.runs * (frames if workload["send"] == "all" else 0), width, height, f"{name} on {workload['key']}")
    return runs


def memory_run(args, workdir, path):
    """Peak RSS of camnode at 1080p with the send queue full."""
    hub = SlowHub()
    try:
        stats_path = workdir / "stats-memory.json"
        spool = workdir / "spool-memory"
        subprocess.run([str(args.camnode), "run", "--source", f"y4m:{path}", "--rate", "max", "--hub", hub.address,
                        "--heartbeat", "0", "--spool", str(spool), "--drain-timeout", "0",
                        "--stats-json", str(stats_path)], check=True)
        stats = json.loads(stats_path.read_text())
        shutil.rmtree(spool, ignore_errors=True)
    finally:
        hub.stop()
    return stats


# ---------------------------------------------------------------- report

def median(results, key):
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def relative(run, key, threads=1, unread=False):
    """`key` of a run in units of the bare encoder on `threads` threads
    measured beside it (see measure). `unread`: CPU per frame without the
    page faults of reading the file, as the bare encoder timed them."""
    value = run[key] - (run["gauge"][1]["read_cpu_ms_per_frame"] if unread else 0)
    return value / run["gauge"][threads][key]


def over_bare(runs, key="cpu_ms_per_frame", threads=1, unread=False):
    """The median over runs of `key` relative to bare encoding beside each."""
    return statistics.median(relative(r, key, threads, unread) for r in runs)


def versus(first, second, key, unread=False):
    """How many times `key` of `first` is that of `second`: the median over
    turns of the ratio of their figures relative to bare encoding, so that
    the machine's drift between the two runs falls out. `unread` applies to
    `second`."""
    if len(first) != len(second):  # a bare row: one gauge per run, its own
        return over_bare(first, key) / over_bare(second, key)
    return statistics.median(relative(a, key) / relative(b, key, unread=unread) for a, b in zip(first, second))


def fmt(value, digits=1, suffix=""):
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def report_rows(workload, runs):
    """Table rows of one workload: the peer, camnode, bare encoding."""
    read_cpu = median(runs[BARE], "read_cpu_ms_per_frame")
    rows = []
    for name, measured in runs.items():
        cpu = median(measured, "cpu_ms_per_frame")
        # imagenode gets its frames preloaded, camnode reads them as it goes,
        # bare's CPU is the encoding alone. On the still scene camnode reads
        # only the rows motion detection samples, far fewer pages than the
        # bare encoder's reading touches: nothing to subtract there.
        if not name.startswith("camnode"):
            unread = cpu
        else:
            unread = cpu - read_cpu if workload["send"] == "all" else None
        besides = median([dict(cpu=r["cpu_ms_per_frame"] - r["encode_cpu_ms_per_frame"]) for r in measured
                          if "encode_cpu_ms_per_frame" in r], "cpu")
        p50, p99 = median(measured, "latency_ms_p50"), median(measured, "latency_ms_p99")
        rss = median(measured, "rss_mb")
        versus_peer = versus(runs["imagenode"], measured, "cpu_ms_per_frame")
        versus_bare = over_bare(measured)
        rows.append(f"| {workload['title']} | {name} | {fmt(median(measured, 'fps'))} | {fmt(cpu, 2)} | {fmt(unread, 2)} "
                    f"| {fmt(besides, 2)} "
                    f"| {fmt(versus_peer, 1, 'x')} | {fmt(versus_bare, 2)} | {fmt(rss)} "
                    f"| {'–' if p50 is None else f'{p50:.1f} / {p99:.1f}'} |")
    return rows


def targets(results, memory, workers):
    """The issue's targets, each judged on the whole CPU time and the fps
    measured, with the number for frames a camera would hand over (no file
    to read) or a second reading beside it."""
    lines = []

    def check(label, value, goal, ok, beside=None):
        beside = f"; {beside}" if beside else ""
        lines.append(f"- {label}: {value}{beside} (target {goal}): **{'met' if ok else 'missed'}**")

    if "a" in results:
        r = results["a"]
        for w in workers:
            runs = r[camnode_name(w)]
            ratio = versus(r["imagenode"], runs, "cpu_ms_per_frame")
            check(f"(a) CPU per frame, imagenode / {camnode_name(w)}", f"{ratio:.1f}x", ">= 40x", ratio >= 40)
    if "b" in results:
        r = results["b"]
        for w in workers:
            runs = r[camnode_name(w)]
            ratio = versus(r["imagenode"], runs, "cpu_ms_per_frame")
            unread = versus(r["imagenode"], runs, "cpu_ms_per_frame", unread=True)
            check(f"(b) frames per CPU-second, {camnode_name(w)} / imagenode", f"{ratio:.1f}x", ">= 4x",
                  ratio >= 4, f"{unread:.1f}x without reading the file")
            over = over_bare(runs)
            over_unread = over_bare(runs, unread=True)
            beside = f"{(over_unread - 1) * 100:+.0f} % without reading the file"
            if w > 1:
                over_many = over_bare(runs, threads=w)
                beside += f"; {(over_many - 1) * 100:+.0f} % over bare encoding on {w} threads"
            own = statistics.median(r["cpu_ms_per_frame"] / r["encode_cpu_ms_per_frame"] for r in runs)
            beside += f"; {(own - 1) * 100:+.0f} % over its own encoding in the same run"
            check(f"(b) CPU per frame over bare encoding, {camnode_name(w)}", f"{(over - 1) * 100:+.0f} %",
                  "<= +15 %", over <= 1.15, beside)
        many = max(workers)
        if many > 1:
            beside = [f"{versus(r[camnode_name(many)], r[camnode_name(1)], 'fps'):.2f}x over 1 worker free to use both cores"
                      ] if 1 in workers else []
            beside.append(f"bare encoding on {many} threads / on 1: {over_bare(r[bare_name(many)], 'fps'):.2f}x")
            speedup = versus(r[camnode_name(many)], r[ONE_CORE], "fps")
            check(f"(b) frames per second, {many} workers / 1 worker on one core", f"{speedup:.2f}x", ">= 1.7x",
                  speedup >= 1.7, "; ".join(beside))
    if memory:
        rss = memory["max_rss_kb"] / 1024
        check("peak RSS at 1080p with the send queue full", f"{rss:.1f} MB", "<= 30 MB", rss <= 30)
    return lines


def environment(args):
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    return (f"{time.strftime('%Y-%m-%d %H:%M')}, camnode {commit}, {cpu}, {os.cpu_count()} cores, "
            f"OpenCV {cv2.__version__}, Python {platform.python_version()}; "
            f"load average at start {os.getloadavg()[0]:.2f}; medians of {args.runs} runs (ratios: medians over "
            f"turns, each run taken relative to bare encoding just before and after it), "
            f"first {args.warmup} frames of each run not timed")


def main():
    args = parse_args()
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.1f}: other work on this machine skews the numbers")
    env = environment(args)
    workloads = {
        "a": {"key": "a", "title": "(a) still 1080p", "send": "motion", "make": lambda: prepare_still(args)},
        "b": {"key": "b", "title": "(b) vtest 1080p", "send": "all", "make": lambda: prepare_vtest(args, "1920x1080")},
        "c": {"key": "c", "title": "(c) vtest 768x576", "send": "all", "make": lambda: prepare_vtest(args, "768x576")},
    }
    results, raw = {}, {}
    rows, memory = [], None
    with tempfile.TemporaryDirectory(prefix="camnode-bench-") as tmp:
        workdir = Path(tmp)
        for key in args.workloads:
            workload = workloads[key]
            path, frames = limited(args, workload["make"]())
            log(f"{workload['title']}: {frames} frames from {path}")
            with in_memory(path) as (ram_path, warm):
                runs = measure(args, workdir, workload, ram_path, frames, warm)
            results[key] = runs
            rows += report_rows(workload, runs)
            raw[key] = {"frames": frames, "source": str(path), "runs": runs}
        if not args.no_memory_run:
            path, _ = limited(args, workloads["b"]["make"]())
            with in_memory(path, huge_pages=False) as (ram_path, _):
                memory = memory_run(args, workdir, ram_path)
            raw["memory"] = memory
    lines = [
        "| workload | pipeline | frames/s | CPU ms/frame | CPU ms/frame, file reading left out "
        "| CPU ms/frame besides encoding | frames per CPU-s vs imagenode | CPU vs bare encoding | peak RSS MB "
        "| latency p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *targets(results, memory, args.workers),
        "",
        f"Measured {env}. imagenode is handed its frames preloaded, and its RSS leaves them out; camnode maps "
        f"the Y4M file, staged in RAM ({', '.join(sorted(STAGED_IN)) or 'the page cache'}), and takes each frame "
        "from it as it goes, as a camera would hand it over; the page faults of that reading (timed on their "
        "own by the bare encoder, which reads the same file with camnode's reader) are what the fifth column "
        "leaves out (not on the still scene, where camnode reads only the rows that motion detection samples). "
        "The sixth is camnode's CPU time less what its encoders spent encoding, both measured over the same "
        "frames of the same run, so the machine's changes of speed between runs do not reach it. "
        "On the still scene nothing is encoded; its bare row is what encoding every frame would cost.",
    ]
    if memory:
        lines.append(f"Memory run: (b) with default settings against a hub that replies after {SLOW_HUB_DELAY * 1000:.0f} ms, "
                     f"so the send queue stays full, from RAM with small pages (RSS counts only the pages of the frames "
                     f"camnode holds): {memory['frames']} frames, {memory['dropped']} dropped, "
                     f"{memory['spool']['stored']} spooled, peak RSS {memory['max_rss_kb'] / 1024:.1f} MB.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"environment": env, **raw}, indent=1) + "\n")


if __name__ == "__main__":
    main()
