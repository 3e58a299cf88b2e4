"""An imagezmq subscriber of camnode hub's --publish (or a PULL peer of --push),
for the hub's tests.

It opens an unchanged imagezmq.ImageHub(open_port=ADDR, REQ_REP=False), the
way a viewer subscribes to a PUB node, and receives with recv_jpg(). Two
socket options a viewer may set are offered:

- --prefix TEXT: subscribe to headers starting with TEXT instead of
  everything (ZeroMQ matches the first frame, the JSON header); the hub
  publishes every header as '{"msg": "...', so '{"msg": "cam1 ' selects
  node cam1's images and events;
- --rcvhwm N and --rcvbuf BYTES: keep little waiting on this side (ZeroMQ's
  queue, the kernel's buffer), so that a slow viewer loses frames instead of
  showing old ones.

imagezmq sets no socket options and connects in ImageHub's constructor, so
ViewerHub redoes ImageHub's small init_pubsub() with the options (and the
handshake monitor) in between, as curve_hub.py does for CURVE; receiving
stays imagezmq's own recv_jpg().

--delay makes it slow (seconds per message). With --pull it is a plain pyzmq
PULL socket connected to the hub's --push address instead, receiving the
same two frames.

stdout: "READY" once connected, "CONNECTED" when the handshake with the
hub is done (messages published from then on arrive), then one line per
message: "GOT <msg> <tag>" (tag: the JPEG comment the tests put after SOI, or
"-"). It stops after --idle seconds without a message.
"""

import argparse
import json
import sys
import time

import imagezmq
import zmq
from zmq.utils.monitor import recv_monitor_message

from worker import jpeg_comment


class ViewerHub(imagezmq.ImageHub):
    """imagezmq.ImageHub(REQ_REP=False) with a prefix, a receive HWM and a monitor."""

    def __init__(self, open_port, prefix, rcvhwm, rcvbuf):
        self.prefix, self.rcvhwm, self.rcvbuf, self.monitor = prefix, rcvhwm, rcvbuf, None
        super().__init__(open_port=open_port, REQ_REP=False)

    def init_pubsub(self, address):
        self.zmq_context = imagezmq.SerializingContext()
        self.zmq_socket = self.zmq_context.socket(zmq.SUB)
        self.zmq_socket.setsockopt(zmq.SUBSCRIBE, (self.prefix or "").encode())
        if self.rcvhwm is not None:
            self.zmq_socket.setsockopt(zmq.RCVHWM, self.rcvhwm)
        if self.rcvbuf is not None:
            self.zmq_socket.setsockopt(zmq.RCVBUF, self.rcvbuf)
        self.monitor = self.zmq_socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        self.zmq_socket.connect(address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connect", required=True, help="the hub's --publish (or --push) address")
    parser.add_argument("--prefix", help="subscription prefix (default: everything)")
    parser.add_argument("--rcvhwm", type=int, help="messages kept waiting on this side")
    parser.add_argument("--rcvbuf", type=int, help="the kernel's receive buffer, bytes")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds spent per message")
    parser.add_argument("--idle", type=float, default=5.0, help="stop after this long without a message")
    parser.add_argument("--pull", action="store_true", help="PULL from a --push address instead")
    args = parser.parse_args()

    if args.pull:
        context = zmq.Context()
        socket = context.socket(zmq.PULL)
        monitor = socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        socket.connect(args.connect)
        receive = lambda: (lambda parts: (json.loads(parts[0])["msg"], parts[1]))(socket.recv_multipart())
    else:
        hub = ViewerHub(args.connect, args.prefix, args.rcvhwm, args.rcvbuf)
        socket, monitor, receive = hub.zmq_socket, hub.monitor, hub.recv_jpg
    print("READY", flush=True)
    recv_monitor_message(monitor)
    print("CONNECTED", flush=True)
    poller = zmq.Poller()
    poller.register(socket, zmq.POLLIN)
    while poller.poll(args.idle * 1000):
        msg, jpg = receive()
        print(f"GOT {msg.replace(' ', '_')} {jpeg_comment(jpg)}", flush=True)
        if args.delay:
            time.sleep(args.delay)
    print("IDLE", flush=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(0)
