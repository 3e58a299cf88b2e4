"""An imagezmq hub secured with pyzmq's CURVE, for camnode's security interop tests.

It is the hub of imagezmq_hub.py (same handshakes on stdout, same receive
loop, same JSON summary, see that file) with one difference: its socket is a
CURVE end, set up with pyzmq's own tools and the certificate files that
`camnode keygen` writes, read with zmq.auth.load_certificate:

- REQ mode (camnode nodes connect): the hub binds REP as the CURVE server,
  and zmq.auth.thread.ThreadAuthenticator admits only the nodes whose public
  NAME.key files are in --allowed-dir (zmq.auth.load_certificates' rule).
- PUB mode (a camnode node binds PUB and is the CURVE server): the hub
  connects SUB as a CURVE client that knows the node's key (--server-cert).

imagezmq has no hook for socket options, and CURVE options take effect only
when set before bind/connect, which imagezmq's ImageHub does in its
constructor. So CurveImageHub redoes ImageHub's two small init methods with
the options in between; receiving and replying stay imagezmq's own code.
"""

import sys

import imagezmq
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from imagezmq_hub import check_arguments, hub_arguments, serve, signal_wakeup


class CurveImageHub(imagezmq.ImageHub):
    """imagezmq.ImageHub whose socket is a CURVE server (REP) or client (SUB)."""

    def __init__(self, open_port, REQ_REP, secret_cert, allowed_dir=None, server_cert=None):
        self.public_key, self.secret_key = zmq.auth.load_certificate(secret_cert)
        if self.secret_key is None:
            raise ValueError(f"{secret_cert} holds no secret key: pass the NAME.key_secret file")
        self.allowed_dir = allowed_dir
        self.server_key = zmq.auth.load_certificate(server_cert)[0] if server_cert else None
        self.auth = None
        super().__init__(open_port=open_port, REQ_REP=REQ_REP)

    def init_reqrep(self, address):
        self.zmq_context = imagezmq.SerializingContext()
        # The authenticator must answer before the first handshake: started
        # and configured before the socket binds.
        self.auth = ThreadAuthenticator(self.zmq_context)
        self.auth.start()
        self.auth.configure_curve(domain="*", location=self.allowed_dir)
        self.zmq_socket = self.zmq_context.socket(zmq.REP)
        self.zmq_socket.curve_secretkey = self.secret_key
        self.zmq_socket.curve_publickey = self.public_key
        self.zmq_socket.curve_server = True
        self.zmq_socket.bind(address)

    def init_pubsub(self, address):
        self.zmq_context = imagezmq.SerializingContext()
        self.zmq_socket = self.zmq_context.socket(zmq.SUB)
        self.zmq_socket.setsockopt(zmq.SUBSCRIBE, b"")
        self.zmq_socket.curve_secretkey = self.secret_key
        self.zmq_socket.curve_publickey = self.public_key
        self.zmq_socket.curve_serverkey = self.server_key
        self.zmq_socket.connect(address)


def parse_args():
    parser = hub_arguments(__doc__.split("\n\n")[0],
                           "req: port to bind on 127.0.0.1 (0 = any free port); pub: the node's port")
    parser.add_argument("--secret-cert", required=True, help="this hub's NAME.key_secret (from camnode keygen)")
    parser.add_argument("--allowed-dir", help="req mode: directory of the allowed nodes' public NAME.key files")
    parser.add_argument("--server-cert", help="pub mode: the node's public NAME.key")
    args = parser.parse_args()
    check_arguments(parser, args)
    if args.mode == "req" and not args.allowed_dir:
        parser.error("--allowed-dir is required in req mode: the hub is the CURVE server")
    if args.mode == "pub" and not args.server_cert:
        parser.error("--server-cert is required in pub mode: the hub connects as a CURVE client")
    return args


def main():
    args = parse_args()
    wakeup, _writer = signal_wakeup()
    if args.mode == "req":
        port = "*" if args.port == 0 else args.port
        hub = CurveImageHub(f"tcp://127.0.0.1:{port}", True, args.secret_cert, allowed_dir=args.allowed_dir)
        endpoint = hub.zmq_socket.getsockopt_string(zmq.LAST_ENDPOINT)
    else:
        endpoint = f"tcp://{args.host}:{args.port}"
        hub = CurveImageHub(endpoint, False, args.secret_cert, server_cert=args.server_cert)

    def close():
        if hub.auth is not None:
            hub.auth.stop()
        hub.zmq_context.destroy(linger=0)

    serve(hub, endpoint, args, wakeup, close)


if __name__ == "__main__":
    main()
