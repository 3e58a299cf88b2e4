"""An imagehub-style receiver, the Python baseline of bench/hub.py: what a
user's hub does with the unchanged imagezmq library today.

It binds an ImageHub (REP), and for each message: recv_jpg(), writes the
JPEG to DIR/YYYY-MM-DD/NODE-VIEW-TIME.jpg as imagehub names images (no
fsync, as imagehub does not), and replies b'OK'. With --delay it is instead
the "one ImageHub program" of the worker benchmark: it sleeps that long per
image (a stand-in for a model) and writes nothing.

stdout: "READY <endpoint>" once bound. Stops on SIGTERM.
"""

import argparse
import datetime
import os
import signal
import sys
import time

import imagezmq
import zmq


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--save", help="directory to write images under")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per image instead of writing it")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{args.port}")
    print(f"READY {hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    made = set()
    while True:
        msg, jpg = hub.recv_jpg()
        if args.delay:
            time.sleep(args.delay)
        elif args.save:
            now = datetime.datetime.now()
            day = os.path.join(args.save, now.strftime("%Y-%m-%d"))
            if day not in made:
                os.makedirs(day, exist_ok=True)
                made.add(day)
            name = msg.split("|")[0].replace(" ", "-")
            with open(os.path.join(day, f"{name}-{now.isoformat().replace(':', '.')}.jpg"), "wb") as f:
                f.write(jpg)
        hub.send_reply(b"OK")


if __name__ == "__main__":
    main()
