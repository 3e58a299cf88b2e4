"""An image hub built on the unchanged imagezmq library, for camnode's interop
tests and benchmarks.

camnode promises that an unmodified imagezmq ImageHub receives what it sends.
This hub is exactly such a peer: it opens imagezmq.ImageHub (REP bound to
tcp://*:PORT in REQ mode, SUB connected to tcp://HOST:PORT in PUB mode) and
receives with imagezmq's own recv_jpg() or recv_image(), replying b'OK' with
send_reply() in REQ mode. It never parses the wire format itself: if camnode's
framing were wrong, imagezmq would fail here as it would for a user.

imagezmq offers no way to learn a message's kind before receiving it: both
recv_jpg() and recv_image() read the JSON header and the payload, and
recv_jpg() drops every header key but msg. A hub therefore chooses its API
up front, as real ones do (imagehub always calls recv_jpg()), and so does
this one with --format: `jpg` uses recv_jpg(), `raw` uses recv_image(), which
rebuilds the array from the header's dtype and shape. A message the chosen
call cannot parse (a raw header without dtype, a payload that does not match
its shape) is recorded as an error and answered, so a test sees the mismatch
instead of a hung node.

It stops after --count messages, after --idle seconds without one, or on
SIGTERM/SIGINT, and then writes a JSON summary to --out:

    {"mode": "req", "format": "jpg", "endpoint": "tcp://0.0.0.0:5555",
     "stopped_by": "count" | "idle" | "signal", "received": 3, "errors": 0,
     "messages": [{"msg": "node view|jpg", "kind": "jpg", "bytes": 51234,
                   "t": 1700000000.123, "width": 640, "height": 480}, ...]}

Raw records carry "dtype" and "shape" (and width/height from the shape). JPEG
payloads are decoded with cv2.imdecode after the stream ends, not while it
runs, so that decoding takes no CPU from the process being benchmarked; a
payload that does not decode has width and height null. Keeping them costs
the hub, though: see PayloadStore and --keep-mb.

Handshakes tell a test when to start or stop waiting, so none has to sleep:
stdout gets "READY <endpoint>" once the socket is bound or connecting (with
--port 0 in REQ mode the endpoint carries the port the system chose), then
"CONNECTED" each time a peer completes the ZeroMQ handshake and
"DISCONNECTED" when one goes away. In PUB mode, CONNECTED is the moment after
which a publishing node's messages reach this hub.
"""

import argparse
import json
import os
import signal
import socket
import sys
import time

import cv2
import imagezmq
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message


def hub_arguments(description, bind_help):
    """The arguments every test hub takes (curve_hub.py adds its keys)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mode", choices=["req", "pub"], default="req",
                        help="req: bind a REP socket; pub: connect a SUB socket to a publishing node")
    parser.add_argument("--port", type=int, default=5555, help=bind_help)
    parser.add_argument("--host", default="127.0.0.1", help="pub mode: the publishing node's host")
    parser.add_argument("--format", choices=["jpg", "raw"], default="jpg",
                        help="jpg: receive with recv_jpg(); raw: receive arrays with recv_image()")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--idle", type=float, help="stop after this many seconds without a message")
    parser.add_argument("--work-ms", type=float, default=0.0,
                        help="REQ mode: milliseconds of work per message before the reply, "
                             "as a hub running a vision model spends (a slow hub)")
    parser.add_argument("--out", required=True, help="file to write the JSON summary to")
    return parser


def check_arguments(parser, args):
    if args.count is not None and args.count < 1:
        parser.error(f"--count {args.count}: must be at least 1")
    if args.idle is not None and args.idle <= 0:
        parser.error(f"--idle {args.idle}: must be a positive number of seconds")
    if args.work_ms < 0:
        parser.error(f"--work-ms {args.work_ms}: must be 0 or more milliseconds")
    if args.mode == "pub" and args.port == 0:
        parser.error("--port 0: in pub mode the hub connects, so give the node's port")


def parse_args():
    parser = hub_arguments(__doc__.split("\n\n")[0],
                           "req: port to bind on all interfaces (0 = any free port); pub: the node's port")
    parser.add_argument("--keep-mb", type=int, default=0,
                        help="memory to fault in before READY for the JPEG payloads kept until the end (see PayloadStore)")
    args = parser.parse_args()
    check_arguments(parser, args)
    if args.keep_mb < 0:
        parser.error(f"--keep-mb {args.keep_mb}: must be 0 or more megabytes")
    return args


def open_hub(args):
    """Opens the imagezmq hub and returns it with the endpoint to announce."""
    if args.mode == "req":
        # "*" as port asks libzmq for an ephemeral one, so parallel tests never collide.
        port = "*" if args.port == 0 else args.port
        hub = imagezmq.ImageHub(open_port=f"tcp://*:{port}")
        endpoint = hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)
    else:
        endpoint = f"tcp://{args.host}:{args.port}"
        hub = imagezmq.ImageHub(open_port=endpoint, REQ_REP=False)
    return hub, endpoint


def receive_one(hub, fmt):
    """Receives one message through imagezmq and returns (record, jpeg payload or None)."""
    now = time.time()
    if fmt == "jpg":
        msg, payload = hub.recv_jpg()
        return {"msg": msg, "kind": "jpg", "bytes": len(payload), "t": now}, payload
    try:
        msg, image = hub.recv_image()
    except (KeyError, ValueError, TypeError) as err:
        # recv_image() reads both frames before it interprets the header, so the
        # socket is still in step and the hub can answer and go on.
        return {"msg": None, "kind": "raw", "t": now,
                "error": f"imagezmq recv_image() could not rebuild the array: {err!r}"}, None
    shape = list(image.shape)
    record = {"msg": msg, "kind": "raw", "bytes": image.nbytes, "t": now,
              "dtype": str(image.dtype), "shape": shape}
    if len(shape) >= 2:
        record["height"], record["width"] = shape[0], shape[1]
    return record, None


def report_peer_event(monitor):
    event = recv_monitor_message(monitor)["event"]
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        print("CONNECTED", flush=True)
    elif event == zmq.EVENT_DISCONNECTED:
        print("DISCONNECTED", flush=True)


def signal_wakeup():
    """Returns a socket that becomes readable on SIGTERM or SIGINT.

    The handlers do nothing themselves; Python writes the signal number to the
    wakeup fd, and the receive loop polls it beside the ZeroMQ sockets. So a
    signal ends the loop at a clean point between messages, and one arriving
    while the summary is written changes nothing.
    """
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: None)
    return reader, writer


class PayloadStore:
    """Where the hub keeps JPEG payloads until it decodes them at the end.

    Kept each in memory of its own, they grow the process by a JPEG per
    message, and the page faults that takes cost the hub CPU that it shares
    with the node being measured: on the 2-core benchmark machine, 0.23 to
    0.38 ms per 1080p image (median 0.29 over 6 runs of 400), where a hub
    that only counts takes 0.1 to 0.13. So with `megabytes` the store faults
    that much memory in up front, before the hub announces READY, and
    copies each payload into it: 0.1 to 0.25 ms per image (median 0.2). A
    payload that no longer fits is kept as it came.
    """

    def __init__(self, megabytes):
        self.room = bytearray(megabytes << 20)
        # Written, not just allocated: every page resident before READY.
        self.room[::4096] = b"\1" * len(range(0, len(self.room), 4096))
        self.view = memoryview(self.room)
        self.used = 0

    def keep(self, payload):
        """The payload, copied into the store if it fits."""
        if payload is None or self.used + len(payload) > len(self.room):
            return payload
        kept = self.view[self.used:self.used + len(payload)]
        # recv_jpg() gives a zmq.Frame, which pyzmq 26 crashes on as the
        # source of a slice assignment; a memoryview of it copies fine.
        kept[:] = memoryview(payload)
        self.used += len(payload)
        return kept


def receive_until_done(hub, args, wakeup, records, payloads, store):
    """Receives until --count, --idle or a signal; returns why it stopped."""
    data = hub.zmq_socket
    monitor = data.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
    poller = zmq.Poller()
    poller.register(data, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    poller.register(wakeup.fileno(), zmq.POLLIN)
    last_message = time.monotonic()
    while args.count is None or len(records) < args.count:
        timeout_ms = None
        if args.idle is not None:
            remaining = args.idle - (time.monotonic() - last_message)
            if remaining <= 0:
                return "idle"
            timeout_ms = remaining * 1000
        ready = dict(poller.poll(timeout_ms))
        if wakeup.fileno() in ready:
            return "signal"
        if monitor in ready:
            report_peer_event(monitor)
        if data in ready:
            record, payload = receive_one(hub, args.format)
            if args.work_ms:
                time.sleep(args.work_ms / 1000)
            if args.mode == "req":
                hub.send_reply(b"OK")
            last_message = time.monotonic()
            records.append(record)
            payloads.append(store.keep(payload))
    return "count"


def decode_jpegs(records, payloads):
    for record, payload in zip(records, payloads):
        if payload is None:
            continue
        # imdecode asserts on an empty buffer (an event sent without an image)
        # and returns None on anything else it cannot decode.
        image = None
        if len(payload):
            image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            record["width"] = record["height"] = None
        else:
            record["height"], record["width"] = image.shape[:2]


def write_summary(path, summary):
    # Written whole and renamed, so a test polling for the file never reads half of it.
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main():
    args = parse_args()
    wakeup, _writer = signal_wakeup()
    hub, endpoint = open_hub(args)
    # linger=0: a reply owed to a node that has gone must not hold up the exit.
    serve(hub, endpoint, args, wakeup, close=lambda: hub.zmq_context.destroy(linger=0), keep_mb=args.keep_mb)


def serve(hub, endpoint, args, wakeup, close, keep_mb=0):
    """Announces READY, receives until done, closes the hub with `close`, and
    writes the summary: the whole life of a hub once its socket is open.
    `keep_mb`: see PayloadStore."""
    store = PayloadStore(keep_mb)
    print(f"READY {endpoint}", flush=True)
    records, payloads = [], []
    stopped_by = receive_until_done(hub, args, wakeup, records, payloads, store)
    decode_jpegs(records, payloads)
    close()
    write_summary(args.out, {
        "mode": args.mode,
        "format": args.format,
        "endpoint": endpoint,
        "stopped_by": stopped_by,
        "received": len(records),
        "errors": sum(1 for r in records if "error" in r),
        "messages": records,
    })
    print(f"{stopped_by}: {len(records)} messages, summary in {args.out}", file=sys.stderr)

if __name__ == "__main__":
    main()
