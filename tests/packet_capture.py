"""A packet capture for tests, with nothing but a raw socket: every frame that crosses a network
interface, in both directions, until told to stop; and the reading of what it wrote.

Run as ``python tests/packet_capture.py IFACE OUTFILE`` (as root, in the interface's network
namespace). It prints ``ready`` once it listens, records each frame to OUTFILE as a 4-byte
length and the frame, and when its stdin closes drains what the kernel still holds and prints
one JSON line: frames seen, and frames the kernel dropped or cut short (either would make
"this never crossed" unprovable, so tests check both are 0).
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
from typing import Iterator, NamedTuple

ETH_P_ALL = 0x0003  # every protocol (socket.ETH_P_ALL from Python 3.12)
SOL_PACKET = 263
PACKET_STATISTICS = 6  # struct tpacket_stats {unsigned tp_packets, tp_drops}
SO_RCVBUFFORCE = 33  # root may exceed net.core.rmem_max
RECEIVE_BUFFER = 32 << 20
# veth offloads segmentation, so one "frame" may carry a whole 64 KiB TCP send
LARGEST_FRAME = 256 << 10
RECORD = struct.Struct("<I")
ETHERNET_HEADER = 14
ETHERTYPE_IPV4 = 0x0800
IPPROTO_TCP = 6


class CaptureSummary(NamedTuple):
    frames: int
    dropped: int
    truncated: int


def capture(interface: str, out_path: str) -> CaptureSummary:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    sock.bind((interface, 0))
    frames = truncated = 0
    buffer = bytearray(LARGEST_FRAME)
    with open(out_path, "wb") as out:
        print("ready", flush=True)
        stopping = False
        while True:
            ready, _, _ = select.select([sock, sys.stdin], [], [], None if not stopping else 0)
            if sys.stdin in ready:
                stopping = True  # stdin closed: take what is queued, then stop
                os.read(sys.stdin.fileno(), 4096)
            if sock not in ready:
                if stopping:
                    break
                continue
            length = sock.recv_into(buffer, 0, socket.MSG_TRUNC)
            if length > len(buffer):
                truncated += 1
                length = len(buffer)
            out.write(RECORD.pack(length))
            out.write(memoryview(buffer)[:length])
            frames += 1
    _, dropped = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    sock.close()
    return CaptureSummary(frames, dropped, truncated)


def read_frames(path: str) -> Iterator[bytes]:
    """The frames a capture wrote, in order."""
    with open(path, "rb") as file:
        data = file.read()
    pos = 0
    while pos < len(data):
        (length,) = RECORD.unpack_from(data, pos)
        pos += RECORD.size
        yield data[pos:pos + length]
        pos += length


def tcp_payload(frame: bytes, port: int) -> bytes | None:
    """The TCP payload of an IPv4 Ethernet frame to or from ``port``, else None."""
    if len(frame) < ETHERNET_HEADER + 20 or \
            int.from_bytes(frame[12:14], "big") != ETHERTYPE_IPV4:
        return None
    ip = frame[ETHERNET_HEADER:]
    header_length = (ip[0] & 0x0F) * 4
    if ip[9] != IPPROTO_TCP:
        return None
    # 0 in a segmentation-offloaded frame larger than IPv4 can say ("BIG TCP")
    total_length = int.from_bytes(ip[2:4], "big") or len(ip)
    tcp = ip[header_length:total_length]
    source, destination = struct.unpack_from("!HH", tcp)
    if port not in (source, destination):
        return None
    return tcp[(tcp[12] >> 4) * 4:]


if __name__ == "__main__":
    summary = capture(sys.argv[1], sys.argv[2])
    print(json.dumps(summary._asdict()), flush=True)
