#!/usr/bin/env python3
"""Host-side checks of scripts/pi-vm.sh, on what the emulated Pi leaves behind.

    pi-vm-check.py led QMP_SOCKET --pin N --seconds S [--until PATTERN --timeout T]
        Samples the BCM2837's GPLEV0 register (0x3f200034, the levels of
        GPIO 0-31) through QEMU's QMP monitor every 20 ms, and names the
        status LED pattern it saw (see src/gpio/led.rs); with --until, again
        until that pattern shows or T seconds passed. Prints JSON.

    pi-vm-check.py spool DIR
        Reads a copy of camnode's spool directory (as it was on the card when
        the power was cut) the way camnode does: the 28-byte preamble, the
        lengths, the CRC-32, the JSON header. Prints JSON: the whole messages
        (node, boot, seq, msg) and the damaged or unfinished files.

    pi-vm-check.py hub JSONL...
        The unique messages in `camnode hub --jsonl` files (a message redelivered
        to a hub that restarted counts once), and every saved image checked
        whole: a JPEG that starts with SOI, ends with EOI and has the size the
        hub recorded; and how many images carry the motion detector's score
        in their header. Prints JSON.

    pi-vm-check.py missing SPOOL_JSON HUB_JSON
        The spooled messages of SPOOL_JSON that HUB_JSON does not have.

    pi-vm-check.py replug QMP_SOCKET
        Unplugs the emulated Pi's USB network device (id "nic") and plugs it
        in again on the same port, as a person would replug a cable.

Only the standard library: it runs wherever the scripts do.
"""

import argparse
import json
import socket
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path

GPLEV0 = 0x3F200034


class Qmp:
    """A QMP client, just enough for `human-monitor-command`."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self._read()  # the greeting
        self.call("qmp_capabilities")

    def _read(self):
        while True:
            reply = json.loads(self.file.readline())
            if "event" not in reply:
                return reply

    def call(self, command, **arguments):
        self.file.write(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        self.file.flush()
        reply = self._read()
        if "error" in reply:
            raise RuntimeError(f"QMP {command}: {reply['error']}")
        return reply["return"]

    def wait_event(self, name, timeout):
        """Waits for the QMP event `name`; False if it did not come in time."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if json.loads(self.file.readline()).get("event") == name:
                    return True
        except (TimeoutError, socket.timeout):
            return False
        finally:
            self.sock.settimeout(None)

    def read_word(self, address):
        # `xp /1wx ADDR` prints "ADDR: 0xVALUE": one physical word, read as the
        # guest's CPU would, through the device model (bcm2835_gpio).
        out = self.call("human-monitor-command", **{"command-line": f"xp /1wx {address:#x}"})
        return int(out.split(":")[1].split()[0], 16)


def classify(widths, intervals, level):
    """The LED pattern of src/gpio/led.rs that these pulses are."""
    if not widths:
        return "event" if level else "off"
    width = statistics.median(widths)
    if width > 0.35:
        return "starting"
    if not intervals:
        return "unknown"
    rate = len(intervals) / sum(intervals)
    if width < 0.08 and rate > 5:
        return "fatal"
    # Trouble: two 100 ms flashes 250 ms apart every second; running: one
    # 100 ms flash every 3 s.
    if rate > 1.5:
        return "trouble"
    if 2.0 <= statistics.median(intervals) <= 4.5:
        return "running"
    return "unknown"


def led(args):
    qmp = Qmp(args.socket)
    start = time.monotonic()
    while True:
        result = led_window(qmp, args)
        # A pattern is waited for: the LED may still show what came before
        # (a motion event at start-up, say) for a while.
        if not args.until or result["pattern"] == args.until or time.monotonic() - start > args.timeout:
            break
    result["waited_s"] = round(time.monotonic() - start - args.seconds, 1)
    json.dump(result, sys.stdout)
    print()


def led_window(qmp, args):
    """The LED's pulses over one window of `args.seconds`."""
    mask = 1 << args.pin
    samples = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        samples.append((time.monotonic(), bool(qmp.read_word(GPLEV0) & mask)))
        time.sleep(0.02)
    rises = [t for (t, lit), (_, was) in zip(samples[1:], samples) if lit and not was]
    falls = [t for (t, lit), (_, was) in zip(samples[1:], samples) if was and not lit]
    # Pulse widths: each rise to the next fall.
    widths = []
    for rise in rises:
        after = [f for f in falls if f > rise]
        if after:
            widths.append(after[0] - rise)
    intervals = [b - a for a, b in zip(rises, rises[1:])]
    toggles = len(rises) + len(falls)
    return {
        "pin": args.pin,
        "seconds": args.seconds,
        "samples": len(samples),
        "toggles": toggles,
        "flashes": len(rises),
        "pulse_ms_median": round(1000 * statistics.median(widths)) if widths else None,
        "flash_interval_s_median": round(statistics.median(intervals), 2) if intervals else None,
        "pattern": classify(widths, intervals, samples[-1][1] if samples else False),
    }


PREAMBLE = struct.Struct("<4sB3xdIII")


def read_spool_file(path):
    """(header dict, None) for a whole message, (None, why) otherwise."""
    data = path.read_bytes()
    if len(data) < PREAMBLE.size:
        return None, "shorter than its preamble"
    magic, _kind, _ts, header_len, payload_len, crc = PREAMBLE.unpack_from(data)
    if magic != b"CNS1":
        return None, "not a camnode spool file"
    if len(data) != PREAMBLE.size + header_len + payload_len:
        return None, f"{len(data)} bytes where its preamble says {PREAMBLE.size + header_len + payload_len}"
    if zlib.crc32(data[:24] + data[PREAMBLE.size:]) != crc:
        return None, "CRC mismatch"
    return json.loads(data[PREAMBLE.size : PREAMBLE.size + header_len]), None


def message_id(header):
    return [header.get("node"), header.get("boot"), header.get("seq"), header.get("msg")]


def spool(args):
    valid, damaged, unfinished = [], [], []
    # No directory: nothing had reached the card when the power went.
    paths = sorted(Path(args.dir).iterdir()) if Path(args.dir).is_dir() else []
    for path in paths:
        if path.name.endswith(".tmp"):
            unfinished.append(path.name)
        elif path.name.endswith(".msg"):
            header, why = read_spool_file(path)
            if header is None:
                damaged.append({"file": path.name, "why": why})
            else:
                valid.append({"file": path.name, "id": message_id(header)})
    json.dump({"messages": valid, "damaged": damaged, "unfinished": unfinished}, sys.stdout)
    print()


def jpeg_whole(path, width, height):
    """SOI first, EOI last, and the frame size of its SOF marker as the hub recorded."""
    data = Path(path).read_bytes()
    if not (data.startswith(b"\xff\xd8") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return False
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return False
        marker, length = data[at + 1], struct.unpack_from(">H", data, at + 2)[0]
        if marker in (0xC0, 0xC1, 0xC2):
            h, w = struct.unpack_from(">HH", data, at + 5)
            return (w, h) == (width, height)
        at += 2 + length
    return False


def hub(args):
    seen, images, scored, broken = {}, 0, 0, []
    for name in args.jsonl:
        for line in Path(name).read_text().splitlines():
            received = json.loads(line)
            key = json.dumps(message_id(received))
            if key in seen:
                continue
            seen[key] = received
            if received.get("kind") == "jpg":
                images += 1
                scored += received.get("score") is not None
                path = received.get("path")
                if path and not jpeg_whole(path, received.get("width"), received.get("height")):
                    broken.append(path)
    json.dump(
        {"messages": [json.loads(k) for k in seen], "images": images, "scored_images": scored, "broken_images": broken},
        sys.stdout,
    )
    print()


def missing(args):
    spooled = json.loads(Path(args.spool_json).read_text())["messages"]
    at_hub = {json.dumps(m) for m in json.loads(Path(args.hub_json).read_text())["messages"]}
    json.dump([m for m in spooled if json.dumps(m["id"]) not in at_hub], sys.stdout)
    print()


def replug(args):
    qmp = Qmp(args.socket)
    qmp.call("device_del", id="nic")
    if not qmp.wait_event("DEVICE_DELETED", 30):
        sys.exit("the USB network device was not unplugged within 30 s")
    # The same device on the same root port of the dwc2 controller: no hub.
    qmp.call("device_add", driver="usb-net", netdev="net0", id="nic", bus="usb-bus.0", port="1")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("led")
    p.add_argument("socket")
    p.add_argument("--pin", type=int, default=17)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--until", help="sample again until this pattern shows")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for --until")
    p.set_defaults(run=led)
    p = commands.add_parser("spool")
    p.add_argument("dir")
    p.set_defaults(run=spool)
    p = commands.add_parser("hub")
    p.add_argument("jsonl", nargs="+")
    p.set_defaults(run=hub)
    p = commands.add_parser("missing")
    p.add_argument("spool_json")
    p.add_argument("hub_json")
    p.set_defaults(run=missing)
    p = commands.add_parser("replug")
    p.add_argument("socket")
    p.set_defaults(run=replug)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
