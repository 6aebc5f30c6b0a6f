"""plping, pltraceroute and plabdump: ping, traceroute and a pcap sniffer for slivers,
built on safe raw sockets (installed in the reference image as commands)."""

from __future__ import annotations

import argparse
import errno
import os
import random
import select
import socket as _socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

from . import RawSocket, icmp_echo, sniffer, socket, udp_segment
from .packet import ICMP, pcap_header, pcap_record

ECHO_REPLY = 0
TIME_EXCEEDED = 11
UNREACH = 3


def _resolve(host: str, prog: str) -> str:
    try:
        return _socket.gethostbyname(host)
    except OSError:
        sys.stderr.write(f"{prog}: {host}: Name or service not known\n")
        raise SystemExit(2) from None


def _bind_free(bind: Callable[[int], None], lo: int, hi: int, tries: int = 20) -> int:
    for _ in range(tries):
        n = random.randint(lo, hi)
        try:
            bind(n)
            return n
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, f"no free value in {lo}..{hi} after {tries} tries")


def _fail(prog: str, e: OSError) -> int:
    sys.stderr.write(f"{prog}: {e.strerror or e}\n")
    return 2


def plping(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plping", description="ping over a safe raw socket")
    p.add_argument("host")
    p.add_argument("-c", "--count", type=int, default=4)
    p.add_argument("-i", "--interval", type=float, default=1.0)
    p.add_argument("-W", "--timeout", type=float, default=2.0)
    p.add_argument("-s", "--size", type=int, default=56)
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    dst = _resolve(a.host, "plping")
    try:
        s = socket("icmp")
        ident = _bind_free(s.bind_icmp_id, 1, 0xFFFF)
    except OSError as e:
        return _fail("plping", e)
    print(f"PING {a.host} ({dst}) {a.size}({a.size + 28}) bytes of data.", flush=True)
    rtts: list[float] = []
    started = time.monotonic()
    sent = 0
    try:
        for seq in range(1, a.count + 1):
            payload = struct.pack("!d", time.monotonic()) + bytes(max(0, a.size - 8))
            t0 = time.monotonic()
            s.sendto(icmp_echo(ident, seq, payload[:a.size]), (dst, 0))
            sent += 1
            deadline = t0 + a.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([s], [], [], left)[0]:
                    break
                pkt = s.recv()
                ihl = (pkt[0] & 15) * 4
                if pkt[ihl] != ECHO_REPLY or struct.unpack_from("!H", pkt, ihl + 6)[0] != seq:
                    continue
                rtt = (time.monotonic() - t0) * 1000
                rtts.append(rtt)
                if not a.quiet:
                    print(f"{len(pkt) - ihl} bytes from {_socket.inet_ntoa(pkt[12:16])}: "
                          f"icmp_seq={seq} ttl={pkt[8]} time={rtt:.3f} ms", flush=True)
                break
            if seq < a.count:
                time.sleep(max(0.0, a.interval - (time.monotonic() - t0)))
    except KeyboardInterrupt:
        pass
    except OSError as e:
        return _fail("plping", e)
    finally:
        s.close()
    total_ms = (time.monotonic() - started) * 1000
    loss = 100 * (sent - len(rtts)) // max(sent, 1)
    print(f"\n--- {a.host} ping statistics ---")
    print(f"{sent} packets transmitted, {len(rtts)} received, {loss}% packet loss, "
          f"time {total_ms:.0f}ms")
    if rtts:
        mdev = statistics.pstdev(rtts)
        print(f"rtt min/avg/max/mdev = {min(rtts):.3f}/{statistics.fmean(rtts):.3f}/"
              f"{max(rtts):.3f}/{mdev:.3f} ms")
    return 0 if rtts else 1


def pltraceroute(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pltraceroute",
                                description="traceroute (UDP probes) over a safe raw socket")
    p.add_argument("host")
    p.add_argument("-m", "--max-hops", type=int, default=30)
    p.add_argument("-q", "--queries", type=int, default=3)
    p.add_argument("-w", "--wait", type=float, default=2.0)
    p.add_argument("-p", "--port", type=int, default=33434, help="first destination port")
    a = p.parse_args(argv)
    dst = _resolve(a.host, "pltraceroute")
    try:
        s: RawSocket = socket("udp")
        sport = _bind_free(s.bind, 33000, 60999)
    except OSError as e:
        return _fail("pltraceroute", e)
    print(f"traceroute to {a.host} ({dst}), {a.max_hops} hops max, 60 byte packets", flush=True)
    dport = a.port
    try:
        for ttl in range(1, a.max_hops + 1):
            s.setsockopt(_socket.IPPROTO_IP, _socket.IP_TTL, ttl)
            line = f"{ttl:2d} "
            last_from = None
            reached = False
            for _ in range(a.queries):
                t0 = time.monotonic()
                s.sendto(udp_segment(s.address, dst, sport, dport, bytes(32)), (dst, 0))
                dport += 1
                deadline = t0 + a.wait
                got = None
                while got is None:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([s], [], [], left)[0]:
                        break
                    pkt = s.recv()
                    ihl = (pkt[0] & 15) * 4
                    if pkt[9] != ICMP or pkt[ihl] not in (TIME_EXCEEDED, UNREACH):
                        continue
                    inner = ihl + 8
                    qdport = struct.unpack_from("!H", pkt, inner + (pkt[inner] & 15) * 4 + 2)[0]
                    if qdport != dport - 1:
                        continue
                    got = (_socket.inet_ntoa(pkt[12:16]), (time.monotonic() - t0) * 1000,
                           pkt[ihl] == UNREACH)
                if got is None:
                    line += " *"
                    continue
                hop, rtt, at_end = got
                if hop != last_from:
                    line += f"  {hop}"
                    last_from = hop
                line += f"  {rtt:.3f} ms"
                reached = reached or at_end
            print(line, flush=True)
            if reached:
                break
    except KeyboardInterrupt:
        pass
    except OSError as e:
        return _fail("pltraceroute", e)
    finally:
        s.close()
    return 0


def plabdump(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="plabdump", description="write pcap of every packet sent or received on a port "
        "this sliver owns, e.g.: plabdump 8080 | tcpdump -nr -")
    p.add_argument("port", type=int)
    p.add_argument("-p", "--proto", choices=("tcp", "udp", "both"), default="both")
    p.add_argument("-c", "--count", type=int, default=0, help="stop after this many packets")
    a = p.parse_args(argv)
    protos = ("tcp", "udp") if a.proto == "both" else (a.proto,)
    socks: list[RawSocket] = []
    errors: list[str] = []
    for proto in protos:
        try:
            socks.append(sniffer(proto, a.port))
        except OSError as e:
            errors.append(f"{proto}: {e.strerror or e}")
    if not socks:
        sys.stderr.write(f"plabdump: {'; '.join(errors)}\n")
        return 2
    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    out.write(pcap_header())
    out.flush()
    n = 0
    try:
        while not a.count or n < a.count:
            for s in select.select(socks, [], [])[0]:
                pkt = s.recv()
                out.write(pcap_record(s.last_ts, pkt))
                out.flush()
                n += 1
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        for s in socks:
            s.close()
    return 0
