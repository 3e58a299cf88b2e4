"""An imagezmq worker for camnode hub's --workers, for its tests and benchmarks.

The loop is the one users already have, unchanged imagezmq: bind an
ImageHub (REP), recv_jpg(), work, send_reply(b'OK'). The work is a sleep of
--delay seconds, a stand-in for a computer-vision model (a GPU or a model
server would keep the CPU as free). Around that loop this program only adds
what a test needs to see:

- stdout gets "READY <endpoint>" once the socket is bound (--port 0 picks a
  free port), so a test never sleeps waiting for it;
- with --out, one line per image is appended and flushed *before* the
  reply: "<msg> <tag> <pid>", where the tag is the text of the JPEG comment
  segment the load generator and the tests put right after the JPEG's SOI
  marker ("-" when there is none). A worker killed with SIGKILL keeps every
  line of the images it answered;
- --hang-after N: after N images it stops answering (sleeps forever), as a
  wedged model would.

The README's five-line worker is this loop without the extras.
"""

import argparse
import os
import sys
import time

import imagezmq
import zmq


def jpeg_comment(jpg):
    """The text of a COM segment (FF FE) right after SOI, or "-"."""
    view = memoryview(jpg)
    if len(view) > 6 and view[2] == 0xFF and view[3] == 0xFE:
        length = view[4] * 256 + view[5]
        return bytes(view[6:4 + length]).decode("ascii", "replace")
    return "-"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port to bind on 127.0.0.1 (0: any free one)")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds of 'work' per image")
    parser.add_argument("--out", help="append one line per image here")
    parser.add_argument("--hang-after", type=int, help="stop answering after this many images")
    args = parser.parse_args()

    port = "*" if args.port == 0 else args.port
    hub = imagezmq.ImageHub(open_port=f"tcp://127.0.0.1:{port}")
    endpoint = hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)
    print(f"READY {endpoint}", flush=True)
    out = open(args.out, "a", buffering=1) if args.out else None
    handled = 0
    while True:
        msg, jpg = hub.recv_jpg()
        if args.hang_after is not None and handled >= args.hang_after:
            print("HANGING", flush=True)
            while True:
                time.sleep(3600)
        if args.delay:
            time.sleep(args.delay)
        if out:
            out.write(f"{msg.replace(' ', '_')} {jpeg_comment(jpg)} {os.getpid()}\n")
        handled += 1
        hub.send_reply(b"OK")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
