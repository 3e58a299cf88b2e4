"""What open consoles cost the hub (docs/console.md, issue 22's targets):

1. CPU per image: three nodes send 100 images/s in all (synthetic 640x480,
   `--send all`) to a hub that stores them. In alternating rounds the hub
   runs plain (no --http) and with the console and three headless Chromium
   pages open on it; the hub process's CPU time (utime + stime) is divided
   by the images it stored in the same window. Target: the console rounds
   at most 10 % above the plain ones.
2. Memory: the console hub with the three pages open for --minutes
   (default 10), its VmRSS sampled every 10 s. Target: flat.

Run with the test venv's Python (selenium):

    cargo build --release
    "$(bash scripts/python-env.sh)" bench/console.py [--rounds 3] [--seconds 60] [--minutes 10]

It prints one line per round and sample and a JSON summary at the end.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "python"))
from console_browser import browser  # noqa: E402  (the tests' Chromium setup)

TICKS = os.sysconf("SC_CLK_TCK")
# How many images each page's tiles have shown, from the page itself.
SHOWN = "return [...document.querySelectorAll('#grid .tile')].reduce((n, t) => n + Number(t.dataset.shown || 0), 0)"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kb(pid):
    return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))


def stored(save):
    return sum(len(files) for _, _, files in os.walk(save) if files) - (1 if (Path(save) / "imagehub.log").exists() else 0)


def wait_port(port, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Hub:
    def __init__(self, camnode, zmq_port, save, http_port=None):
        args = [camnode, "hub", "--bind", f"tcp://127.0.0.1:{zmq_port}", "--save", save]
        if http_port:
            args += ["--http", f"127.0.0.1:{http_port}"]
        self.process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        self.save = save
        if http_port:
            wait_port(http_port)

    def measure(self, seconds):
        """CPU ms per stored image over `seconds`, and the images per second."""
        pid = self.process.pid
        cpu0, images0, t0 = cpu_seconds(pid), stored(self.save), time.time()
        time.sleep(seconds)
        cpu1, images1, t1 = cpu_seconds(pid), stored(self.save), time.time()
        images = images1 - images0
        return 1000 * (cpu1 - cpu0) / max(images, 1), images / (t1 - t0)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        # 100 images/s fill a disk quickly: what was stored is not needed.
        shutil.rmtree(self.save, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camnode", default=str(Path(__file__).resolve().parent.parent / "target/release/camnode"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60, help="measured time per round and mode")
    parser.add_argument("--warmup", type=float, default=10, help="seconds after a start before measuring")
    parser.add_argument("--minutes", type=float, default=10, help="memory run; 0 skips it")
    parser.add_argument("--rate", type=float, default=100, help="images per second from the three nodes together")
    parser.add_argument("--browsers", type=int, default=3)
    args = parser.parse_args()

    zmq_port, http_port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="camnode-console-bench-")
    nodes = [subprocess.Popen([args.camnode, "run", "--source", "synthetic:640x480", "--rate", str(args.rate / 3), "--send", "all",
                               "--heartbeat", "5", "--name", name, "--hub", f"tcp://127.0.0.1:{zmq_port}", "--spool", f"{work}/spool-{name}"],
                              stderr=subprocess.DEVNULL) for name in ("garage", "porch", "yard")]
    results = {"plain": [], "console": [], "rate": [], "shown_per_s": []}
    try:
        for round_ in range(args.rounds):
            hub = Hub(args.camnode, zmq_port, f"{work}/plain-{round_}")
            time.sleep(args.warmup)
            ms, rate = hub.measure(args.seconds)
            hub.stop()
            print(f"round {round_ + 1} plain:   {ms:.3f} ms CPU per image at {rate:.1f} images/s", flush=True)
            results["plain"].append(ms)
            results["rate"].append(rate)

            hub = Hub(args.camnode, zmq_port, f"{work}/console-{round_}", http_port)
            pages = open_pages(args.browsers, http_port, work)
            time.sleep(args.warmup)
            shown0 = sum(p.execute_script(SHOWN) for p in pages)
            ms, rate = hub.measure(args.seconds)
            shown = (sum(p.execute_script(SHOWN) for p in pages) - shown0) / args.seconds / args.browsers
            for page in pages:
                page.quit()
            hub.stop()
            print(f"round {round_ + 1} console: {ms:.3f} ms CPU per image at {rate:.1f} images/s, {args.browsers} pages each "
                  f"showing {shown:.1f} images/s", flush=True)
            results["console"].append(ms)
            results["shown_per_s"].append(shown)

        memory = []
        if args.minutes > 0:
            hub = Hub(args.camnode, zmq_port, f"{work}/memory", http_port)
            pages = open_pages(args.browsers, http_port, work)
            start = time.time()
            while time.time() - start < args.minutes * 60:
                time.sleep(10)
                memory.append((round(time.time() - start), rss_kb(hub.process.pid)))
                print(f"memory: {memory[-1][0]:4d} s {memory[-1][1]} kB", flush=True)
            for page in pages:
                page.quit()
            hub.stop()
    finally:
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.wait(timeout=30)

    plain, console = statistics.median(results["plain"]), statistics.median(results["console"])
    summary = {
        "images_per_s": round(statistics.median(results["rate"]), 1),
        "plain_ms_per_image": round(plain, 3),
        "console_ms_per_image": round(console, 3),
        "console_over_plain_percent": round(100 * (console / plain - 1), 1),
        "rounds": {k: [round(v, 3) for v in vs] for k, vs in results.items()},
        "pages": args.browsers,
        "images_shown_per_page_per_s": round(statistics.median(results["shown_per_s"]), 1),
    }
    if memory:
        after_warmup = [kb for t, kb in memory if t >= 60] or [kb for _, kb in memory]
        summary["memory_kb"] = {"first": after_warmup[0], "last": after_warmup[-1], "min": min(after_warmup), "max": max(after_warmup),
                                "samples": len(memory)}
    print(json.dumps(summary, indent=2))


def open_pages(count, http_port, work):
    pages = []
    for i in range(count):
        page = browser(tempfile.mkdtemp(prefix=f"page{i}-", dir=work), 1280, 860)
        page.get(f"http://127.0.0.1:{http_port}/")
        pages.append(page)
    return pages


if __name__ == "__main__":
    main()
