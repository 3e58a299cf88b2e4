"""camnode's performance benchmark (issue 7), side by side with the imagenode
pipeline and with bare libjpeg-turbo, on the same frames. Run it through
bench/run.sh, which builds what it needs first.

Workloads, each a Y4M file written once under ~/.cache/camnode/bench, so all
decoding and scaling happens before anything is timed:

  (a) a still 1080p scene with sensor noise: vtest's first frame scaled to
      1920x1080, plus fresh Gaussian noise in every frame. Motion detection
      only: nothing may be encoded (send = motion, as imagenode's default).
  (b) ../shared/footage/vtest scaled to 1920x1080: motion everywhere; every
      frame is detected, encoded at quality 90 and sent (send = all).
  (c) the same footage at its own 768x576.

Pipelines, each over the same file, R times (--runs), medians reported:

  imagenode   bench/imagenode_peer.py: imagenode's algorithm in Python and
              OpenCV, single-threaded, sending with imagezmq over REQ.
  camnode     the release binary, `run --rate max`, once per --workers value.
  bare        bench/bare_jpeg.rs: libjpeg-turbo alone on the same I420
              frames at the same quality: the encoding limit.

Both senders talk to the same hub, the unmodified imagezmq ImageHub of
tests/python/imagezmq_hub.py, one per pipeline and workload, on loopback.
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


def warm_page_cache(path):
    """Reads the file once, so no run pays for the disk and all read alike."""
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


# ---------------------------------------------------------------- hubs

class Hub:
    """The imagezmq hub of tests/python/imagezmq_hub.py on a free port."""

    def __init__(self, workdir, name):
        self.out = workdir / f"hub-{name}.json"
        self.proc = subprocess.Popen([sys.executable, str(HUB), "--port", "0", "--out", str(self.out)],
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

def run_bare(args, path, frames):
    results = []
    for _ in range(args.runs):
        warm_page_cache(path)
        out = subprocess.run([str(args.bare), str(path), "--quality", str(QUALITY), "--warmup", str(args.warmup)],
                             check=True, capture_output=True, text=True).stdout
        result = json.loads(out)
        if result["frames"] != frames - args.warmup:
            fail(f"bare encoding timed {result['frames']} frames of {frames - args.warmup}")
        results.append({"fps": result["fps"], "cpu_ms_per_frame": result["cpu_ms_per_frame"]})
    return results


def run_camnode(args, workdir, path, frames, send, workers, hub_address):
    stats_path = workdir / "stats.json"
    spool = workdir / "spool"
    command = [
        str(args.camnode), "run", "--source", f"y4m:{path}", "--rate", "max", "--send", send,
        "--quality", str(QUALITY), "--workers", str(workers), "--hub", hub_address, "--name", "camnode",
        "--view", "bench", "--heartbeat", "0", "--spool", str(spool), "--stats-json", str(stats_path),
        "--stats-warmup", str(args.warmup),
    ]
    subprocess.run(command, check=True)
    stats = json.loads(stats_path.read_text())
    shutil.rmtree(spool, ignore_errors=True)
    return stats


def camnode_runs(args, workdir, workload, path, frames, workers):
    width, height, _ = y4m_info(path)
    hub = Hub(workdir, f"camnode-{workload['key']}-{workers}")
    results = []
    try:
        for _ in range(args.runs):
            warm_page_cache(path)
            stats = run_camnode(args, workdir, path, frames, workload["send"], workers, hub.address)
            steady = stats["steady"]
            expected = frames if workload["send"] == "all" else 0
            what = f"camnode {workload['key']} workers={workers}"
            if stats["frames"] != frames or stats["encoded"] != expected or steady["frames"] != frames - args.warmup:
                fail(f"{what}: {stats['frames']} frames, {stats['encoded']} encoded, expected {frames} and {expected}")
            if stats["dropped"] or stats["source_dropped"]:
                fail(f"{what}: dropped {stats['dropped']} messages and {stats['source_dropped']} frames")
            results.append({
                "fps": steady["fps"], "cpu_ms_per_frame": steady["cpu_ms_per_frame"],
                "rss_mb": stats["max_rss_kb"] / 1024,
                "latency_ms_p50": stats["latency_ms_p50"] if expected else None,
                "latency_ms_p99": stats["latency_ms_p99"] if expected else None,
            })
    finally:
        summary = hub.stop()
    check_hub(summary, args.runs * (frames if workload["send"] == "all" else 0), width, height,
              f"camnode {workload['key']} workers={workers}")
    return results


def peer_runs(args, workdir, workload, path, frames):
    width, height, _ = y4m_info(path)
    hub = Hub(workdir, f"peer-{workload['key']}")
    out = workdir / "peer.json"
    try:
        subprocess.run([sys.executable, str(PEER), "--y4m", str(path), "--send", workload["send"],
                        "--quality", str(QUALITY), "--hub", hub.address, "--runs", str(args.runs),
                        "--warmup", str(args.warmup), "--json", str(out)], check=True)
    finally:
        summary = hub.stop()
    report = json.loads(out.read_text())
    expected = frames if workload["send"] == "all" else 0
    for run in report["runs"]:
        if run["frames"] != frames - args.warmup or run["encoded"] != (expected and frames - args.warmup):
            fail(f"imagenode {workload['key']}: a run timed {run['frames']} frames and encoded {run['encoded']}")
    check_hub(summary, args.runs * expected, width, height, f"imagenode {workload['key']}")
    rss = report["peak_rss_excl_frames_mb"]
    return [{
        "fps": run["fps"], "cpu_ms_per_frame": run["cpu_ms_per_frame"], "rss_mb": rss,
        "latency_ms_p50": run.get("latency_ms_p50"), "latency_ms_p99": run.get("latency_ms_p99"),
    } for run in report["runs"]]


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


def fmt(value, digits=1, suffix=""):
    return "–" if value is None else f"{value:.{digits}f}{suffix}"


def report_rows(workload, results, bare):
    peer_cpu = median(results["imagenode"], "cpu_ms_per_frame")
    bare_cpu = bare and median(bare, "cpu_ms_per_frame")
    rows = []
    for name, runs in results.items():
        cpu = median(runs, "cpu_ms_per_frame")
        p50, p99 = median(runs, "latency_ms_p50"), median(runs, "latency_ms_p99")
        rows.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            workload["title"], name, fmt(median(runs, "fps")), fmt(cpu, 2),
            fmt(peer_cpu / cpu, 1, "x"), fmt(bare_cpu and cpu / bare_cpu, 2),
            fmt(median(runs, "rss_mb")), "–" if p50 is None else f"{p50:.1f} / {p99:.1f}"))
    if bare:
        cpu = median(bare, "cpu_ms_per_frame")
        rows.append("| {} | bare libjpeg-turbo | {} | {} | {} | 1.00 | – | – |".format(
            workload["title"], fmt(median(bare, "fps")), fmt(cpu, 2), fmt(peer_cpu / cpu, 1, "x")))
    return rows


def targets(results, bare, memory, workers):
    lines = []

    def check(label, value, goal, ok):
        lines.append(f"- {label}: {value} (target {goal}) **{'met' if ok else 'missed'}**")

    many = max(workers)
    if "a" in results:
        r = results["a"]
        ratio = median(r["imagenode"], "cpu_ms_per_frame") / median(r[f"camnode, {many} workers" if many > 1 else "camnode, 1 worker"], "cpu_ms_per_frame")
        check("(a) CPU per frame, imagenode / camnode", f"{ratio:.1f}x", ">= 40x", ratio >= 40)
    if "b" in results:
        r, b = results["b"], bare["b"]
        for w in workers:
            name = f"camnode, {w} worker" + ("s" if w > 1 else "")
            cpu = median(r[name], "cpu_ms_per_frame")
            ratio = median(r["imagenode"], "cpu_ms_per_frame") / cpu
            check(f"(b) frames per CPU-second, {name} / imagenode", f"{ratio:.1f}x", ">= 4x", ratio >= 4)
            over = cpu / median(b, "cpu_ms_per_frame") - 1
            check(f"(b) CPU per frame over bare encoding, {name}", f"{over * 100:+.0f} %", "<= +15 %", over <= 0.15)
        if 1 in workers and many > 1:
            speedup = median(r[f"camnode, {many} workers"], "fps") / median(r["camnode, 1 worker"], "fps")
            check(f"(b) throughput, {many} workers / 1 worker", f"{speedup:.2f}x", ">= 1.7x", speedup >= 1.7)
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
            f"load average at start {os.getloadavg()[0]:.2f}; medians of {args.runs} runs, "
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
    results, bare, raw = {}, {}, {}
    rows, memory = [], None
    with tempfile.TemporaryDirectory(prefix="camnode-bench-") as tmp:
        workdir = Path(tmp)
        for key in args.workloads:
            workload = workloads[key]
            path, frames = limited(args, workload["make"]())
            log(f"{workload['title']}: {frames} frames from {path}")
            runs = {"imagenode": peer_runs(args, workdir, workload, path, frames)}
            for w in args.workers:
                runs[f"camnode, {w} worker" + ("s" if w > 1 else "")] = camnode_runs(args, workdir, workload, path, frames, w)
            if workload["send"] == "all":
                bare[key] = run_bare(args, path, frames)
            results[key] = runs
            rows += report_rows(workload, runs, bare.get(key))
            raw[key] = {"frames": frames, "source": str(path), "runs": runs, "bare": bare.get(key)}
        if not args.no_memory_run:
            path, _ = limited(args, workloads["b"]["make"]())
            memory = memory_run(args, workdir, path)
            raw["memory"] = memory
    lines = [
        "| workload | pipeline | frames/s | CPU ms/frame | vs imagenode (frames per CPU-s) | CPU vs bare encoding | peak RSS MB | latency p50 / p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        *targets(results, bare, memory, args.workers),
        "",
        f"Measured {env}. imagenode's RSS leaves out the frames it preloads; camnode reads them from the file as it goes.",
    ]
    if memory:
        lines.append(f"Memory run: (b) with default settings against a hub that replies after {SLOW_HUB_DELAY * 1000:.0f} ms: "
                     f"{memory['frames']} frames, {memory['dropped']} dropped, {memory['spool']['stored'] if 'spool' in memory else 0} spooled, "
                     f"peak RSS {memory['max_rss_kb'] / 1024:.1f} MB.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"environment": env, **raw}, indent=1) + "\n")


if __name__ == "__main__":
    main()
