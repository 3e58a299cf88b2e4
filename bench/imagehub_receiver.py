"""The Python baselines of bench/hub.py: what a user's hub does with the
unchanged imagezmq library today. Two styles, both binding an ImageHub
(REP) and replying b'OK' to each message:

--style imagehub (the default, and what issue 21's target names): the
  structure of jeffbass/imagehub (imagehub/imagehub.py, imagehub/tools/hub.py),
  written anew here, not copied:
  - the main loop receives each message with recv_jpg() under a "patience"
    alarm (SIGALRM handler installed and alarm(600) set before each
    receive, cleared after it), as imagehub's Patience context does;
  - process() splits the text, returns at once for a heartbeat, names the
    image NODE-VIEW-<datetime.now().isoformat()> (':' as '.'), appends
    (name, jpg) to a deque of at most 500 (imagehub's queuemax: when the
    writer falls behind, the oldest waiting image is dropped) and logs event
    texts to imagehub.log through logging; the reply follows;
  - a writer thread polls the deque, sleeping 1e-7 s (a syscall, really
    about 60 us with the kernel's timer slack) whenever it is empty; for
    each image it makes the date directory with os.mkdir, catching
    FileExistsError (once per image, as imagehub's build_dir does), and
    writes the file (no fsync, as imagehub does not);
  - on SIGTERM what waits in the deque is written before exiting.
  imagehub's max_images_write (5000 per date directory and run by default;
  past it images are acknowledged and not written) is a guard against a full
  disk that a user at thousands of images a second would raise: it is
  unlimited here, so that every image is written, as camnode's store does.
--style minimal: the least a receiver can do, one thread: recv_jpg(), write
  the file (day folder made once), reply. No alarm, no queue, no logging.
  Kept beside the imagehub style so that nobody can say the comparison
  picked a weak peer.

Files go to DIR/YYYY-MM-DD/NODE-VIEW-TIME.jpg (--save). With --delay the
program is instead the "one ImageHub program" of the worker benchmark: it
sleeps that long per image (a stand-in for a model) and writes nothing.

stdout: "READY <endpoint>" once bound. Stops on SIGTERM.
"""

import argparse
import collections
import datetime
import logging
import os
import signal
import sys
import threading
import time

import imagezmq
import zmq

# imagehub's defaults (tools/hub.py Settings): patience 10 minutes, queuemax 500.
PATIENCE_S = 600
QUEUE_MAX = 500


class Stop(Exception):
    """SIGTERM, raised in the main loop as imagehub's handler does."""


class Timeout(Exception):
    """No message within the patience."""


def patient_receive(hub):
    """recv_jpg() under a SIGALRM deadline, set and cleared per message."""
    def expire(*_):
        raise Timeout()
    signal.signal(signal.SIGALRM, expire)
    signal.alarm(PATIENCE_S)
    try:
        return hub.recv_jpg()
    finally:
        signal.alarm(0)


class ImagehubStyle:
    """Receive, queue and reply in the main loop; write in a polling thread."""

    def __init__(self, save):
        self.images = os.path.join(save, "images") if save else None
        self.queue = collections.deque(maxlen=QUEUE_MAX)
        self.log = logging.getLogger("imagehub")
        if save:
            os.makedirs(self.images, exist_ok=True)
            handler = logging.FileHandler(os.path.join(save, "imagehub.log"))
            handler.setFormatter(logging.Formatter("%(asctime)s ~ %(message)s"))
            self.log.addHandler(handler)
            self.log.setLevel(logging.DEBUG)
        self.writing = True
        self.writer = threading.Thread(target=self.write_queued, daemon=True)
        self.writer.start()

    def handle(self, text, jpg):
        parts = text.split("|")
        if len(parts) < 2:
            return b"OK"
        kind = parts[1][:1]
        if kind == "H":
            return b"OK"
        node_view = parts[0].strip().replace(" ", "-")
        stamp = datetime.datetime.now().isoformat().replace(":", ".")
        if kind == "j":
            self.queue.append((f"{node_view}-{stamp}", jpg))
        elif kind != "i":
            self.log.info(text)
        return b"OK"

    def write_queued(self):
        while self.writing:
            if self.queue:
                self.write_one()
            else:
                time.sleep(0.0000001)

    def write_one(self):
        name, jpg = self.queue.popleft()
        if not self.images:
            return
        day = os.path.join(self.images, name[-26:-16])
        try:
            os.mkdir(day)
        except FileExistsError:
            pass
        with open(os.path.join(day, name + ".jpg"), "wb") as f:
            f.write(jpg)

    def close(self):
        self.writing = False
        self.writer.join()
        while self.queue:
            self.write_one()


class MinimalStyle:
    """One thread: receive, write, reply."""

    def __init__(self, save):
        self.save = save
        self.made = set()

    def handle(self, text, jpg):
        if self.save and text.endswith("|jpg"):
            now = datetime.datetime.now()
            day = os.path.join(self.save, now.strftime("%Y-%m-%d"))
            if day not in self.made:
                os.makedirs(day, exist_ok=True)
                self.made.add(day)
            name = text.split("|")[0].replace(" ", "-")
            with open(os.path.join(day, f"{name}-{now.isoformat().replace(':', '.')}.jpg"), "wb") as f:
                f.write(jpg)
        return b"OK"

    def close(self):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--save", help="directory to write images under")
    parser.add_argument("--style", choices=["imagehub", "minimal"], default="imagehub")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per image instead of writing it")
    args = parser.parse_args()

    def stop(*_):
        raise Stop()
    signal.signal(signal.SIGTERM, stop)
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{args.port}")
    print(f"READY {hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    if args.delay:
        while True:
            hub.recv_jpg()
            time.sleep(args.delay)
            hub.send_reply(b"OK")
    receiver = ImagehubStyle(args.save) if args.style == "imagehub" else MinimalStyle(args.save)
    try:
        while True:
            if args.style == "imagehub":
                try:
                    text, jpg = patient_receive(hub)
                except Timeout:
                    continue
            else:
                text, jpg = hub.recv_jpg()
            hub.send_reply(receiver.handle(text, jpg))
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        receiver.close()
        # A reply to a camera that has gone already would hold the exit
        # forever (ZeroMQ's default linger).
        hub.zmq_socket.close(linger=0)
    sys.exit(0)


if __name__ == "__main__":
    main()
