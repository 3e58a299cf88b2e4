"""What open consoles cost the hub (docs/console.md, issue 22's targets):

1. CPU per image: three PUB nodes send 100 images/s in all (synthetic
   640x480, `--send all`); two hubs subscribe to the same three and store
   every image, side by side on the same core: one plain (no --http), one
   with the console and three headless Chromium pages open on it. Each
   hub's CPU time (utime + stime) over the same window is divided by the
   images it stored, and so is the CPU time of the console hub's `services`
   thread alone (HTTP, server-sent events, images for the pages). Running
   both at once on the same stream cancels what else the machine is doing
   at the time, which on a shared machine swings sequential runs by tens
   of percent. Target: the console hub at most 10 % above the plain one.
   With two or more cores the hubs run on core 0 and everything else (the
   nodes, the browsers) on the others.
2. Memory: the same two hubs side by side for --minutes (default 10),
   the pages open on the console hub, both VmRSS sampled every 10 s. A hub
   grows by itself for its first 100,000 messages (the ids it remembers to
   drop repeats, about 17 minutes at 100 messages/s), so what the console
   keeps is the difference between the two. Target: that difference flat.

Run with the test venv's Python (selenium):

    cargo build --release
    "$(bash scripts/python-env.sh)" bench/console.py [--rounds 5] [--seconds 40] [--minutes 10]

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
    if stat is None:
        return 0.0
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
    return sum(1 for _, _, files in os.walk(save) for name in files if name.endswith(".jpg"))


def wait_port(port, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Hub:
    def __init__(self, camnode, nodes, save, http_port=None):
        args = [camnode, "hub", "--save", save] + [a for port in nodes for a in ("--connect", f"tcp://127.0.0.1:{port}")]
        if http_port:
            args += ["--http", f"127.0.0.1:{http_port}"]
        self.process = subprocess.Popen(args, stderr=subprocess.DEVNULL, preexec_fn=lambda: os.sched_setaffinity(0, HUB_CORES))
        self.save = save
        if http_port:
            wait_port(http_port)

    def sample(self):
        """CPU seconds of the process and of its services thread, and images stored."""
        pid = self.process.pid
        return cpu_seconds(f"/proc/{pid}/stat"), cpu_seconds(thread_stat(pid, "services")), stored(self.save)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        # 100 images/s fill a disk quickly: what was stored is not needed.
        shutil.rmtree(self.save, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--camnode", default=str(Path(__file__).resolve().parent.parent / "target/release/camnode"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=40, help="measured time per round")
    parser.add_argument("--warmup", type=float, default=8, help="seconds after a start before measuring")
    parser.add_argument("--minutes", type=float, default=10, help="memory run; 0 skips it")
    parser.add_argument("--rate", type=float, default=100, help="images per second from the three nodes together")
    parser.add_argument("--browsers", type=int, default=3)
    args = parser.parse_args()

    # Nodes and browsers (started from here) stay off the hubs' core.
    os.sched_setaffinity(0, OTHER_CORES)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    node_ports, http_port = [free_port() for _ in range(3)], free_port()
    work = tempfile.mkdtemp(prefix="camnode-console-bench-")
    nodes = [subprocess.Popen([args.camnode, "run", "--source", "synthetic:640x480", "--rate", str(args.rate / 3), "--send", "all",
                               "--heartbeat", "5", "--name", name, "--mode", "pub", "--hub", f"tcp://127.0.0.1:{port}"],
                              stderr=subprocess.DEVNULL) for name, port in zip(("garage", "porch", "yard"), node_ports)]
    results = {"plain": [], "console": [], "services": [], "rate": [], "shown_per_s": []}
    hubs, pages, memory = [], [], []
    try:
        for round_ in range(args.rounds):
            hubs = [Hub(args.camnode, node_ports, f"{work}/plain-{round_}"), Hub(args.camnode, node_ports, f"{work}/console-{round_}", http_port)]
            pages = open_pages(args.browsers, http_port, work)
            time.sleep(args.warmup)
            before, loads0, t0 = [h.sample() for h in hubs], sum(p.execute_script(LOADS) for p in pages), time.time()
            time.sleep(args.seconds)
            after, loads1, t1 = [h.sample() for h in hubs], sum(p.execute_script(LOADS) for p in pages), time.time()
            close(pages)
            (plain_ms, _, plain_images), (console_ms, services_ms, console_images) = [
                (1000 * (a[0] - b[0]) / max(a[2] - b[2], 1), 1000 * (a[1] - b[1]) / max(a[2] - b[2], 1), a[2] - b[2]) for b, a in zip(before, after)
            ]
            while hubs:
                hubs.pop().stop()
            rate, shown = plain_images / (t1 - t0), (loads1 - loads0) / (t1 - t0) / args.browsers
            print(f"round {round_ + 1}: plain {plain_ms:.3f} ms CPU per image ({plain_images} images, {rate:.1f}/s); console {console_ms:.3f} "
                  f"({console_images} images; {services_ms:.3f} in the services thread), {args.browsers} pages each showing {shown:.1f} images/s, "
                  f"{100 * (console_ms / plain_ms - 1):+.1f} %", flush=True)
            for key, value in (("plain", plain_ms), ("console", console_ms), ("services", services_ms), ("rate", rate), ("shown_per_s", shown)):
                results[key].append(value)

        if args.minutes > 0:
            hubs = [Hub(args.camnode, node_ports, f"{work}/memory-plain"), Hub(args.camnode, node_ports, f"{work}/memory-console", http_port)]
            pages = open_pages(args.browsers, http_port, work)
            start = time.time()
            while time.time() - start < args.minutes * 60:
                time.sleep(10)
                plain, console = (rss_kb(h.process.pid) for h in hubs)
                memory.append((round(time.time() - start), plain, console))
                print(f"memory: {memory[-1][0]:4d} s plain {plain} kB, console {console} kB, difference {console - plain} kB", flush=True)
    finally:
        close(pages)
        while hubs:
            hubs.pop().stop()
        for node in nodes:
            node.send_signal(signal.SIGTERM)
        for node in nodes:
            node.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)

    summary = {"pages": args.browsers}
    if results["plain"]:
        plain, console = statistics.median(results["plain"]), statistics.median(results["console"])
        summary.update({
            "images_per_s": round(statistics.median(results["rate"]), 1),
            "plain_ms_per_image": round(plain, 3),
            "console_ms_per_image": round(console, 3),
            "console_over_plain_percent": round(100 * (console / plain - 1), 1),
            "services_thread_ms_per_image": round(statistics.median(results["services"]), 3),
            "images_shown_per_page_per_s": round(statistics.median(results["shown_per_s"]), 1),
            "rounds": {k: [round(v, 3) for v in vs] for k, vs in results.items()},
        })
    if memory:
        # From the first minute on: pages and buffers are set up by then.
        settled = [m for m in memory if m[0] >= 60] or memory
        difference = [console - plain for _, plain, console in settled]
        summary["memory_kb"] = {
            "plain": {"first": settled[0][1], "last": settled[-1][1]},
            "console": {"first": settled[0][2], "last": settled[-1][2]},
            "difference": {"first": difference[0], "last": difference[-1], "min": min(difference), "max": max(difference)},
            "seconds": [settled[0][0], settled[-1][0]],
        }
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
