"""camnode hub's benchmark: measured in one run, side by side, on this machine.

1. Ingest: `camnode hub --save` (every image written and fsynced, in group
   commits, before OK) against an imagehub-style Python receiver
   (imagezmq ImageHub + file write + reply, bench/imagehub_receiver.py),
   each fed by the same load generator (bench/loadgen.rs: N simulated
   cameras sending a 768x576 JPEG as fast as replies come). msg/s, and the
   receiver's CPU per message (user + system time of its process). Each on
   the disk and on tmpfs: on the disk, the fsynced store runs at what the
   disk takes (measured too), so the tmpfs rows show the receivers' own cost.
2. Workers: 100 cameras x 5 fps straight into one ImageHub program that
   spends 5 ms per image, against `camnode hub --workers` with four such
   programs (tests/python/worker.py --delay 0.005), one of which is killed
   with SIGKILL halfway. Acknowledged per offered, reply p50/p99, and how
   many acknowledged images no worker processed (must be 0).
3. A fleet: 500 simulated cameras connected at once (1 fps each) to one hub.
4. JetStream on loopback (if nats-server is installed and camnode was built
   with the `nats` feature): ingest into a 1-server stream (R1) and a
   3-server stream (R3), and two dispatchers with four workers each.

The work of a worker is a sleep, a stand-in for a model on a GPU or a model
server: on a 2-core machine, four CPU-bound models would measure the CPU,
not the hub. Run it on an otherwise idle machine: bench/hub.sh builds
everything and calls this with the paths.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "python", "worker.py")
RECEIVER = os.path.join(REPO, "bench", "imagehub_receiver.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    """User + system CPU of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Proc:
    """A child process, stopped (SIGTERM, then SIGKILL) when the bench leaves."""

    running = []

    def __init__(self, args, ready=None, **kw):
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE if ready else subprocess.DEVNULL, text=True, **kw)
        Proc.running.append(self)
        self.ready = None
        if ready:
            for line in self.p.stdout:
                if line.startswith(ready):
                    self.ready = line.split()[1:] if len(line.split()) > 1 else [line]
                    break
            else:
                raise SystemExit(f"{args[0]} ended before saying {ready}")

    @property
    def pid(self):
        return self.p.pid

    def stop(self, sig=signal.SIGTERM, wait=30):
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            self.p.wait(wait)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()

    @classmethod
    def stop_all(cls):
        for proc in cls.running:
            proc.stop(wait=5)


def loadgen(args, hub, nodes, fps, seconds, tag=False, acked=None, first=0):
    cmd = [args.loadgen, "--hub", hub, "--nodes", str(nodes), "--fps", str(fps), "--seconds", str(seconds), "--jpeg", args.jpeg, "--first", str(first)]
    if tag:
        cmd.append("--tag")
    if acked:
        cmd += ["--acked", acked]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def python_worker(args, workdir, name, delay):
    out = os.path.join(workdir, f"{name}.txt")
    proc = Proc([args.python, WORKER, "--port", "0", "--delay", str(delay), "--out", out], ready="READY")
    return proc, proc.ready[0], out


def disk_mb_per_s(directory):
    """What the store's disk takes with fsync: 200 MB written and fdatasynced, MB/s."""
    path = os.path.join(directory, "dd-probe")
    block = os.urandom(1 << 20)
    start = time.time()
    with open(path, "wb") as f:
        for _ in range(200):
            f.write(block)
        os.fdatasync(f.fileno())
    took = time.time() - start
    os.remove(path)
    return 200 / took


def ingest(args, workdir):
    """Section 1: rows for the hub and the Python receiver, on the disk and on tmpfs."""
    rows = []
    receivers = [
        ("camnode hub --save, disk (fsynced)", "camnode", args.store),
        ("camnode hub --save, tmpfs", "camnode", args.tmpfs),
        ("camnode hub, no store", "camnode", None),
        ("imagehub-style Python, disk (no fsync)", "python", args.store),
        ("imagehub-style Python, tmpfs", "python", args.tmpfs),
    ]
    for name, kind, where in receivers:
        port = free_port()
        store = os.path.join(where, f"bench-hub-{port}") if where else None
        save = ["--save", store] if store else []
        if kind == "camnode":
            proc = Proc([args.camnode, "hub", "--bind", f"tcp://127.0.0.1:{port}", *save])
        else:
            proc = Proc([args.python, RECEIVER, "--port", str(port), *save], ready="READY")
        time.sleep(0.5)
        before = cpu_seconds(proc.pid)
        figures = loadgen(args, f"tcp://127.0.0.1:{port}", args.ingest_nodes, 0, args.seconds)
        cpu = cpu_seconds(proc.pid) - before
        proc.stop()
        files = 0
        if store:
            files = sum(1 for _, _, f in os.walk(store) for n in f if n.endswith(".jpg"))
            shutil.rmtree(store)
        rows.append({"receiver": name, "msg_per_s": figures["msg_per_s"], "cpu_ms_per_msg": 1000 * cpu / max(figures["acked"], 1),
                     "cpu_percent": 100 * cpu / args.seconds, "p50_ms": figures["latency_ms_p50"], "p99_ms": figures["latency_ms_p99"],
                     "acked": figures["acked"], "files": files})
    rows.append({"receiver": f"(the disk itself: dd-like 200 MB + fdatasync = {disk_mb_per_s(args.store):.0f} MB/s)"})
    return rows


def workers(args, workdir):
    """Section 2: one ImageHub program against the hub with four workers, one killed."""
    rows = []
    port = free_port()
    one = Proc([args.python, RECEIVER, "--port", str(port), "--delay", "0.005"], ready="READY")
    figures = loadgen(args, f"tcp://127.0.0.1:{port}", 100, 5, args.seconds)
    one.stop()
    rows.append({"setup": "one ImageHub program (5 ms/image)", **pick(figures), "unprocessed": "n/a"})

    for kill in [False, True]:
        procs = [python_worker(args, workdir, f"w{i}-{kill}", 0.005) for i in range(4)]
        port = free_port()
        summary = os.path.join(workdir, f"hub-{port}.json")
        hub = Proc([args.camnode, "hub", "--bind", f"tcp://127.0.0.1:{port}", "--workers", ",".join(p[1] for p in procs),
                    "--worker-timeout", "2", "--idle", "2", "--summary-json", summary])
        acked_file = os.path.join(workdir, f"acked-{port}.txt")
        if kill:
            threading.Timer(args.seconds / 2, lambda: procs[1][0].stop(signal.SIGKILL)).start()
        figures = loadgen(args, f"tcp://127.0.0.1:{port}", 100, 5, args.seconds, tag=True, acked=acked_file)
        hub.p.wait(120)
        for proc, _, _ in procs:
            proc.stop()
        done = set()
        for _, _, out in procs:
            with open(out) as f:
                done.update(" ".join(line.split()[1:3]) for line in f)
        with open(acked_file) as f:
            acked = [line.strip() for line in f]
        unprocessed = sum(1 for t in acked if t not in done)
        with open(summary) as f:
            hub_summary = json.load(f)
        label = "camnode hub, 4 workers (5 ms/image)" + (", one killed halfway" if kill else "")
        rows.append({"setup": label, **pick(figures), "unprocessed": unprocessed, "processed": hub_summary["processed"]})
    return rows


def pick(figures):
    return {"offered": figures["offered"], "acked": figures["acked"], "acked_percent": 100 * figures["ack_ratio"],
            "p50_ms": figures["latency_ms_p50"], "p99_ms": figures["latency_ms_p99"], "errors": figures["timed_out"] + figures["refused"]}


def fleet(args, workdir):
    """Section 3: 500 cameras at once."""
    port = free_port()
    store = os.path.join(args.store, f"fleet-{port}")
    hub = Proc([args.camnode, "hub", "--bind", f"tcp://127.0.0.1:{port}", "--save", store])
    time.sleep(0.5)
    before = cpu_seconds(hub.pid)
    figures = loadgen(args, f"tcp://127.0.0.1:{port}", 500, 1, args.seconds)
    cpu = cpu_seconds(hub.pid) - before
    hub.stop()
    shutil.rmtree(store, ignore_errors=True)
    return [{"setup": "500 cameras x 1 fps, --save", **pick(figures), "hub_cpu_percent": 100 * cpu / args.seconds}]


def nats_cluster(workdir, size):
    """`size` nats-servers with JetStream on loopback; returns (procs, urls)."""
    clients = [free_port() for _ in range(size)]
    routes = [free_port() for _ in range(size)]
    procs = []
    for i in range(size):
        cmd = ["nats-server", "-a", "127.0.0.1", "-p", str(clients[i]), "-n", f"s{i}", "-js", "-sd", os.path.join(workdir, f"js{size}-{i}")]
        if size > 1:
            others = ",".join(f"nats://127.0.0.1:{routes[j]}" for j in range(size) if j != i)
            cmd += ["--cluster_name", "bench", "--cluster", f"nats://127.0.0.1:{routes[i]}", "--routes", others]
        procs.append(Proc(cmd, stderr=subprocess.DEVNULL))
    time.sleep(3 if size > 1 else 1)
    return procs, ",".join(f"nats://127.0.0.1:{p}" for p in clients)


def nats(args, workdir):
    """Section 4: JetStream capacity on loopback."""
    rows = []
    for size in [1, 3]:
        servers, urls = nats_cluster(workdir, size)
        port = free_port()
        replicas = str(size)
        hub = Proc([args.camnode, "hub", "--bind", f"tcp://127.0.0.1:{port}", "--nats", urls, "--nats-replicas", replicas,
                    "--nats-max-mb", "4096"])
        time.sleep(2)
        before = cpu_seconds(hub.pid)
        figures = loadgen(args, f"tcp://127.0.0.1:{port}", args.ingest_nodes, 0, args.seconds)
        cpu = cpu_seconds(hub.pid) - before
        hub.stop()
        # Two dispatchers, four workers each (no delay): how fast the stream drains.
        dispatchers, outs = [], []
        for d in range(2):
            ws = [python_worker(args, workdir, f"js{size}-d{d}-w{i}", 0.0) for i in range(4)]
            outs += [w[2] for w in ws]
            dispatchers.append(Proc([args.camnode, "hub", "--bind", f"tcp://127.0.0.1:{free_port()}", "--from-nats", urls,
                                     "--workers", ",".join(w[1] for w in ws), "--nats-replicas", replicas]))
            dispatchers += [w[0] for w in ws]
        start = time.time()
        total = figures["acked"]
        while time.time() - start < 120:
            done = sum(sum(1 for _ in open(o)) for o in outs if os.path.exists(o))
            if done >= total:
                break
            time.sleep(0.2)
        drain = time.time() - start
        for proc in dispatchers + servers:
            proc.stop()
        rows.append({"setup": f"{size} server(s), R{size}", "ingest_msg_per_s": figures["msg_per_s"], "p99_ms": figures["latency_ms_p99"],
                     "hub_cpu_ms_per_msg": 1000 * cpu / max(figures["acked"], 1),
                     "dispatch_msg_per_s": done / drain if drain else 0, "processed": done, "acked": total})
    return rows


def table(rows):
    keys = list(rows[0].keys())
    for row in rows[1:]:
        keys += [k for k in row if k not in keys]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--camnode", required=True)
    parser.add_argument("--loadgen", required=True)
    parser.add_argument("--jpeg", required=True, help="the JPEG the cameras send")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--ingest-nodes", type=int, default=64, help="cameras sending as fast as replies come, in the ingest and JetStream runs")
    parser.add_argument("--store", default=os.path.expanduser("~/.cache/camnode/bench-hub"),
                        help="where the receivers write (a real disk: the store fsyncs)")
    parser.add_argument("--tmpfs", default="/dev/shm", help="a memory file system, where fsync costs nothing")
    parser.add_argument("--only", default="ingest,workers,fleet,nats")
    parser.add_argument("--out", help="also write the tables (markdown) and raw JSON here")
    args = parser.parse_args()
    os.makedirs(args.store, exist_ok=True)
    sections = {"ingest": ingest, "workers": workers, "fleet": fleet, "nats": nats}
    results, text = {}, []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            for name in args.only.split(","):
                if name == "nats" and not shutil.which("nats-server"):
                    print("nats: skipped (no nats-server)", file=sys.stderr)
                    continue
                print(f"{name}...", file=sys.stderr)
                results[name] = sections[name](args, workdir)
                text.append(f"### {name}\n\n{table(results[name])}\n")
                print(text[-1], flush=True)
        finally:
            Proc.stop_all()
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(text))
        with open(args.out + ".json", "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
