"""What open consoles cost the hub (docs/console.md, issue 22's targets):

1. CPU per image: three nodes send 100 images/s in all (synthetic 640x480,
   `--send all`) to a hub that stores them. In alternating rounds the hub
   runs plain (no --http) and with the console and three headless Chromium
   pages open on it; the hub process's CPU time (utime + stime) is divided
   by the images it stored in the same window, and so is the CPU time of
   its `services` thread alone (HTTP, server-sent events, images to the
   pages). Target: the console rounds at most 10 % above the plain ones.
   With two or more cores the hub runs on core 0 and everything else (the
   nodes, the browsers) on the others, so that the browsers' own work
   does not land on the hub's core.
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
# How many images each page's tiles have fetched and shown, from the page itself.
LOADS = "return [...document.querySelectorAll('#grid .tile')].reduce((n, t) => n + Number(t.dataset.loads || 0), 0)"
CORES = sorted(os.sched_getaffinity(0))
HUB_CORES, OTHER_CORES = ({CORES[0]}, set(CORES[1:])) if len(CORES) > 1 else (set(CORES), set(CORES))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(stat):
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def thread_stat(pid, name):
    for task in Path(f"/proc/{pid}/task").iterdir():
        if (task / "comm").read_text().strip() == name:
            return task / "stat"
    return None


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
        self.process = subprocess.Popen(args, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, HUB_CORES))
        self.save = save
        if http_port:
            wait_port(http_port)

    def measure(self, seconds):
        """CPU ms per stored image over `seconds` (the process's, the services
        thread's), and the images per second."""
        process, services = f"/proc/{self.process.pid}/stat", thread_stat(self.process.pid, "services")
        cpu = lambda stat: cpu_seconds(stat) if stat else 0.0  # noqa: E731
        cpu0, services0, images0, t0 = cpu(process), cpu(services), stored(self.save), time.time()
        time.sleep(seconds)
        cpu1, services1, images1, t1 = cpu(process), cpu(services), stored(self.save), time.time()
        images = max(images1 - images0, 1)
        return 1000 * (cpu1 - cpu0) / images, 1000 * (services1 - services0) / images, images / (t1 - t0)

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

    # Nodes and browsers (started from here) stay off the hub's core.
    os.sched_setaffinity(0, OTHER_CORES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    zmq_port, http_port = free_port(), free_port()
    work = tempfile.mkdtemp(prefix="camnode-console-bench-")
    nodes = [subprocess.Popen([args.camnode, "run", "--source", "synthetic:640x480", "--rate", str(args.rate / 3), "--send", "all",
                               "--heartbeat", "5", "--name", name, "--hub", f"tcp://127.0.0.1:{zmq_port}", "--spool", f"{work}/spool-{name}"],
                              stderr=subprocess.DEVNULL) for name in ("garage", "porch", "yard")]
    results = {"plain": [], "console": [], "services": [], "rate": [], "shown_per_s": []}
    hub, pages = None, []
    try:
        for round_ in range(args.rounds):
            hub = Hub(args.camnode, zmq_port, f"{work}/plain-{round_}")
            time.sleep(args.warmup)
            ms, _, rate = hub.measure(args.seconds)
            hub.stop()
            print(f"round {round_ + 1} plain:   {ms:.3f} ms CPU per image at {rate:.1f} images/s", flush=True)
            results["plain"].append(ms)
            results["rate"].append(rate)

            hub = Hub(args.camnode, zmq_port, f"{work}/console-{round_}", http_port)
            pages = open_pages(args.browsers, http_port, work)
            time.sleep(args.warmup)
            shown0 = sum(p.execute_script(LOADS) for p in pages)
            ms, services_ms, rate = hub.measure(args.seconds)
            shown = (sum(p.execute_script(LOADS) for p in pages) - shown0) / args.seconds / args.browsers
            close(pages)
            hub.stop()
            print(f"round {round_ + 1} console: {ms:.3f} ms CPU per image ({services_ms:.3f} in the services thread) at {rate:.1f} images/s, "
                  f"{args.browsers} pages each showing {shown:.1f} images/s", flush=True)
            results["console"].append(ms)
            results["services"].append(services_ms)
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
            close(pages)
            hub.stop()
    finally:
        close(pages)
        if hub and hub.process.poll() is None:
            hub.stop()
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
        "services_thread_ms_per_image": round(statistics.median(results["services"]), 3),
        "services_thread_percent_of_plain": round(100 * statistics.median(results["services"]) / plain, 1),
        "rounds": {k: [round(v, 3) for v in vs] for k, vs in results.items()},
        "pages": args.browsers,
        "images_shown_per_page_per_s": round(statistics.median(results["shown_per_s"]), 1),
    }
    if memory:
        after_warmup = [kb for t, kb in memory if t >= 60] or [kb for _, kb in memory]
        summary["memory_kb"] = {"first": after_warmup[0], "last": after_warmup[-1], "min": min(after_warmup), "max": max(after_warmup),
                                "samples": len(memory)}
    print(json.dumps(summary, indent=2))


def close(pages):
    while pages:
        pages.pop().quit()


def open_pages(count, http_port, work):
    pages = []
    for i in range(count):
        page = browser(tempfile.mkdtemp(prefix=f"page{i}-", dir=work), 1280, 860)
        page.get(f"http://127.0.0.1:{http_port}/")
        pages.append(page)
    return pages


if __name__ == "__main__":
    main()
