"""Safe raw sockets and the admin sniffer, measured beside native baselines in one run.

Run as root on a prepared node: ``.venv/bin/python bench/raw_bench.py``. It starts a
private node (NM, admin sniffer, shim), one sliver and a namespace acting as the outside,
and prints three tables:

1. packets/s: native raw sockets in the sliver's namespace (one ``sendto`` per packet,
   and ``sendmmsg`` of 64, the fair baseline for batches) vs a safe raw socket in the
   sliver (what the shim checked and sent: ``send`` one at a time, and ``send_many`` of
   64), all sending the same 46-byte UDP packets to the outside; the four interleaved over
   ``--rounds`` rounds (medians), so that load from elsewhere hits all alike.
2. round trip: UDP echo off a server in the outside namespace, from a host UDP socket,
   from the sliver's own kernel (a UDP socket) and through the shim (saferaw), kernel and
   shim rounds interleaved; the added median is shim minus kernel, from the same sliver.
3. admin sniffer at the node cap: a sliver floods 64-byte frames at 100 Mbit/s; packets
   the HTB class passed, records a consumer received, ring drops, the sniffer's CPU and
   its packets per CPU-second; and the parser alone on a synthetic ring block.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slicectl.core.netplan import handle, sliver_xid_range
from slicectl.core.sniffrecord import read_frames_blocking
from slicectl.ipc.rpc import Client
from slicectl.node import shim, tc
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import SHIM, SNIFFER, daemon_pid, prepare
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.ring import in_netns, synthetic_block
from slicectl.node.sniffer import parse_block
from slicectl.saferaw.mmsg import Outbox
from slicectl.saferaw.packet import packet, udp_segment
from slicectl.testbed.privnode import private_node


def sh(cmd: str) -> None:
    subprocess.run(cmd.split(), check=True, capture_output=True)


class OutsideNs:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.ns, self.host_if = f"slicectl-bout-{tag}", f"slcbo{tag}"
        self.node_addr, self.addr = "198.18.254.1", "198.18.254.2"
        for c in (f"ip netns add {self.ns}",
                  f"ip link add {self.host_if} type veth peer name slcbi{tag}",
                  f"ip link set slcbi{tag} netns {self.ns}",
                  f"ip addr add {self.node_addr}/30 dev {self.host_if}",
                  f"ip link set {self.host_if} up",
                  f"ip -n {self.ns} addr add {self.addr}/30 dev slcbi{tag}",
                  f"ip -n {self.ns} link set slcbi{tag} up",
                  f"ip -n {self.ns} route add default via {self.node_addr}"):
            sh(c)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# 1. packets per second --------------------------------------------------------------------

BATCH = 64
SHIM_PPS = """
import json, saferaw, sys, time
dst, secs, batch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
s = saferaw.socket("udp"); s.bind(40500)
pkt = saferaw.packet(s.address, dst, 17, saferaw.udp_segment(s.address, dst, 40500, 9, b"x" * 18))
pkts = [pkt] * batch
n = 0; t0 = time.monotonic(); end = t0 + secs
while time.monotonic() < end:
    if batch:
        for _ in range(4):
            n += s.send_many(pkts)
    else:
        for _ in range(256):
            s.send(pkt)
        n += 256
print(json.dumps({"sent": n, "elapsed": time.monotonic() - t0}))
"""


def native_pps(src: str, dst: str, secs: float, netns_pid: int | None = None,
               batch: int = 0) -> float:
    """A native raw socket sending 46-byte UDP packets: on the host, or (with
    ``netns_pid``) in that process's network namespace, as CAP_NET_RAW would allow; one
    ``sendto`` per packet, or (``batch``) ``sendmmsg`` of that many."""
    pkt = packet(src, dst, 17, udp_segment(src, dst, 40500, 9, b"x" * 18))
    if netns_pid is None:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    else:
        with in_netns(netns_pid):
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out = Outbox(batch, batch * len(pkt), named=True) if batch else None
    where = socket.inet_aton(dst)
    n = 0
    t0 = time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        if out is not None:
            for _ in range(4):
                for _ in range(batch):
                    out.add(pkt, where)
                while out.pending:
                    n += out.send(s)
            continue
        for _ in range(256):
            s.sendto(pkt, (dst, 0))
        n += 256
    s.close()
    return n / (time.monotonic() - t0)


def shim_pps(engine: Any, container: str, cfg: NodeConfig, dst: str, secs: float,
             batch: int) -> tuple[float, float]:
    """Packets/s the shim checked and sent for a sliver's safe raw socket, ``send`` one
    at a time or (``batch``) ``send_many`` of that many; and the shim's CPU microseconds
    per packet (its checks, and the kernel's sending, which a native sender pays too)."""
    pid = daemon_pid(cfg, SHIM)
    assert pid is not None
    before, cpu0 = shim.stats(cfg).get("sent", 0), cpu_s(pid)
    r = exec_py(engine, container, SHIM_PPS, dst, str(secs), str(batch))
    sent = int(shim.stats(cfg).get("sent", 0)) - int(before)
    return sent / float(r["elapsed"]), (cpu_s(pid) - cpu0) / max(1, sent) * 1e6


def exec_py(engine: Any, container: str, script: str, *args: str) -> dict[str, Any]:
    return exec_cmd(engine, container, ["python3", "-c", script, *args])


def exec_cmd(engine: Any, container: str, cmd: list[str]) -> dict[str, Any]:
    res = engine.containers.get(container).exec_run(cmd)
    if res.exit_code != 0:
        raise RuntimeError(res.output.decode(errors="replace"))
    out: dict[str, Any] = json.loads(res.output.decode().strip().splitlines()[-1])
    return out


# 2. round trips ---------------------------------------------------------------------------

KERNEL_RTT = """
import json, socket, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40700))
rtts = []
for seq in range(n):
    msg = seq.to_bytes(4, "big") + b"x" * 14
    t0 = time.perf_counter(); s.sendto(msg, (dst, port))
    while s.recv(2048)[:4] != msg[:4]:
        pass
    rtts.append((time.perf_counter() - t0) * 1e6)
print(json.dumps({"rtts": rtts}))
"""

SHIM_RTT = """
import json, saferaw, sys, time
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = saferaw.socket("udp"); s.bind(40701)
rtts = []
for seq in range(n):
    msg = seq.to_bytes(4, "big") + b"x" * 14
    seg = saferaw.udp_segment(s.address, dst, 40701, port, msg)
    t0 = time.perf_counter(); s.sendto(seg, (dst, 0))
    while True:
        p = s.recv(); ihl = (p[0] & 15) * 4
        if p[9] == 17 and p[ihl + 8:ihl + 12] == msg[:4]:
            break
    rtts.append((time.perf_counter() - t0) * 1e6)
print(json.dumps({"rtts": rtts}))
"""

PINGPONG = """
import os, socket, statistics, sys, time
def run(n, cpus):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        a.close()
        if cpus: os.sched_setaffinity(0, cpus)
        while True:
            d = b.recv(100)
            if not d: os._exit(0)
            b.send(d)
    b.close()
    if cpus: os.sched_setaffinity(0, cpus)
    r = []
    for _ in range(n):
        t = time.perf_counter(); a.send(b"x"); a.recv(100); r.append((time.perf_counter() - t) * 1e6)
    a.close(); os.waitpid(pid, 0)
    os.sched_setaffinity(0, range(os.cpu_count()))
    return statistics.median(r)
n = int(sys.argv[1])
print("%.1f %.1f" % (run(n, None), run(n, {0})))
"""

ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


def native_rtts(dst: str, port: int, n: int) -> list[float]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtts = []
    for seq in range(n):
        msg = seq.to_bytes(4, "big") + b"x" * 14
        t0 = time.perf_counter()
        s.sendto(msg, (dst, port))
        while s.recv(2048)[:4] != msg[:4]:
            pass
        rtts.append((time.perf_counter() - t0) * 1e6)
    s.close()
    return rtts


# 3. the admin sniffer ---------------------------------------------------------------------

FLOOD = """
import json, socket, sys, time
dst, secs = sys.argv[1], float(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 40600))
payload = b"x" * 18   # 14 + 20 + 8 + 18 = 60 bytes on the wire, 64 with the FCS
n = 0; t0 = time.monotonic(); end = t0 + secs
while time.monotonic() < end:
    for _ in range(512):
        try:
            s.sendto(payload, (dst, 9))
        except OSError:
            pass
    n += 512
print(json.dumps({"offered": n, "elapsed": time.monotonic() - t0}))
"""


def flood(engine: Any, container: str, out: OutsideNs, secs: float) -> dict[str, Any]:
    """Offer more than 100 Mbit/s of 60-byte frames from the sliver with iperf3 (C, so the
    sender is not the bottleneck) to an iperf3 server in the outside namespace."""
    server = subprocess.Popen(["ip", "netns", "exec", out.ns, "iperf3", "-s", "-1", "-B",
                               out.addr, "-p", "5299"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    try:
        res = engine.containers.get(container).exec_run(
            ["iperf3", "-c", out.addr, "-p", "5299", "-u", "-l", "18", "-b", "150M",
             "-t", str(int(secs)), "-J"])
        data = json.loads(res.output)
        end = data["end"]["sum"]
        return {"offered": int(end["packets"]), "elapsed": float(end["seconds"])}
    finally:
        server.wait(30)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    def __init__(self, path: Path, xid: int) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.xid = xid
        self.records = 0
        self.drops: dict[str, int] = {}
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        try:
            for f in read_frames_blocking(self.sock):
                if f.kind == b"R":
                    self.records += sum(1 for r in f.records() if r[1] == self.xid)
                elif f.kind == b"D":
                    self.drops = f.json()
        except OSError:
            pass


def parser_rate(n: int = 20000) -> float:
    """Packets per CPU-second of parse_block alone, on a synthetic ring block."""
    base, last = sliver_xid_range("172.30.0.0/16")
    src, dst = "172.30.128.7", "198.18.254.2"
    frame = b"\0" * 12 + b"\x08\x00" + packet(src, dst, 17, udp_segment(src, dst, 40600, 9, b"x" * 18))
    block = synthetic_block([frame] * n)
    m = mmap.mmap(-1, len(block))
    m.write(block)
    out = bytearray()
    t0 = time.process_time()
    rounds = 10
    for _ in range(rounds):
        out.clear()
        parse_block(m, 0, n, 48, out, 0, base, last, set())
    return rounds * n / (time.process_time() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pings", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds of the four packets/s paths, interleaved (medians)")
    ap.add_argument("--sections", default="1,2,3",
                    help="which tables: 1 packets/s, 2 round trips, 3 admin sniffer")
    args = ap.parse_args(argv)
    sections = {int(x) for x in args.sections.split(",") if x.strip()}
    if os.geteuid() != 0:
        print("raw_bench: run as root", file=sys.stderr)
        return 2
    # Cleanup runs in ``finally`` blocks: turn SIGTERM into an exception that reaches them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    base = NodeConfig.from_env(os.environ)
    base = base.with_(image=prepare(base, os.environ, Say(quiet=True)))
    engine = engine_client(base.engine_url)
    out = OutsideNs()
    try:
        with private_node(base, engine, kind="bench", daemons=True) as cfg:
            nm = Client(cfg.nm_sock, timeout=300)
            name = f"b{cfg.state_dir.name}_raw"
            info = nm.call("bind", name, nm.call("acquire", {"net_max_kbit": 100_000,
                                                             "cpu_share": 500}))
            ct = info["container"]
            print(f"raw_bench: node {cfg.node_id}, sliver {name}, outside {out.addr}",
                  flush=True)

            if 1 in sections:
                pps_table(engine, cfg, info, out, args.seconds, args.rounds)
            if 2 in sections:
                rtt_table(engine, ct, out, args.pings)
            if 3 in sections:
                sniffer_table(engine, cfg, info, out, args.seconds)
            nm.call("destroy", name)
    finally:
        out.close()
        engine.close()
    return 0


def pps_table(engine: Any, cfg: NodeConfig, info: dict[str, Any], out: OutsideNs,
              secs: float, rounds: int) -> None:
    ct, address = info["container"], info["net"]["address"]
    sliver_pid = int(engine.containers.get(ct).attrs["State"]["Pid"])
    paths: dict[str, list[float]] = {k: [] for k in ("host", "native", "native_mmsg", "safe",
                                                      "safe_mmsg")}
    cpu: dict[str, list[float]] = {"safe": [], "safe_mmsg": []}
    for _ in range(rounds):
        paths["host"].append(native_pps(out.node_addr, out.addr, secs))
        paths["native"].append(native_pps(address, out.addr, secs, sliver_pid))
        paths["native_mmsg"].append(native_pps(address, out.addr, secs, sliver_pid, BATCH))
        for key, batch in (("safe", 0), ("safe_mmsg", BATCH)):
            rate, us = shim_pps(engine, ct, cfg, out.addr, secs, batch)
            paths[key].append(rate)
            cpu[key].append(us)
    pps = {k: statistics.median(v) for k, v in paths.items()}
    nat, nat_m = pps["native"], pps["native_mmsg"]
    rows = []
    for key, label in (
            ("host", "native raw socket on the host (straight to the outside), sendto"),
            ("native", "native raw socket in the sliver's namespace (NET_RAW), sendto"),
            ("native_mmsg", f"native raw socket in the sliver's namespace, sendmmsg of {BATCH}"),
            ("safe", "safe raw socket in the sliver (shim sent), send one at a time"),
            ("safe_mmsg", f"safe raw socket in the sliver (shim sent), send_many of {BATCH}")):
        spread = f"{min(paths[key]):,.0f}-{max(paths[key]):,.0f}"
        rows.append([label, f"{pps[key]:,.0f}", spread,
                     "-" if key == "host" else f"{pps[key] / nat:.2f}",
                     "-" if key == "host" else f"{pps[key] / nat_m:.2f}",
                     f"{statistics.median(cpu[key]):.1f}" if key in cpu else "-"])
    table(f"1. packets per second, 46-byte UDP packets (one sender process each; median of "
          f"{rounds} interleaved rounds of {secs:g} s)",
          ["path", "packets/s", "range", "vs native sendto", "vs native sendmmsg",
           "shim cpu us/pkt"], rows)


def rtt_table(engine: Any, ct: str, out: OutsideNs, pings: int) -> None:
    echo = subprocess.Popen(["ip", "netns", "exec", out.ns, "python3", "-c", ECHO,
                             out.addr, "7"])
    time.sleep(0.5)
    pingpong = subprocess.run([sys.executable, "-c", PINGPONG, str(pings)],
                              capture_output=True, text=True, check=True).stdout.split()
    try:
        nat_rtt = native_rtts(out.addr, 7, pings)
        # Alternate kernel and shim rounds so that load from elsewhere hits both alike.
        k_rtt, s_rtt = [], []
        chunk = str(max(1, pings // 4))
        for _ in range(4):
            k_rtt += exec_py(engine, ct, KERNEL_RTT, out.addr, "7", chunk)["rtts"]
            s_rtt += exec_py(engine, ct, SHIM_RTT, out.addr, "7", chunk)["rtts"]
    finally:
        echo.terminate()
        echo.wait(10)
    rows = []
    for label, v in (("host UDP socket", nat_rtt), ("sliver kernel UDP socket", k_rtt),
                     ("sliver safe raw UDP socket", s_rtt)):
        rows.append([label, f"{statistics.median(v):.1f}", f"{pct(v, 0.9):.1f}",
                     f"{pct(v, 0.99):.1f}"])
    table(f"2. UDP echo round trip to the outside, microseconds ({pings} each)",
          ["path", "p50", "p90", "p99"], rows)
    added = statistics.median(s_rtt) - statistics.median(k_rtt)
    print(f"   added by the shim (median): {added:.1f} us; for scale, a bare two-process "
          f"unix ping-pong here takes {pingpong[0]} us across CPUs and {pingpong[1]} us "
          "on one (the shim adds two such hops)")


def sniffer_table(engine: Any, cfg: NodeConfig, info: dict[str, Any], out: OutsideNs,
                  secs: float) -> None:
    sniffer_pid = daemon_pid(cfg, SNIFFER)
    assert sniffer_pid is not None
    counter = Counter(cfg.sniffer_dir / "records.sock", info["xid"])
    time.sleep(0.5)
    klass = handle(0xC000 + info["xid"])
    k_before = tc.read_classes(cfg.ifb)[klass].packets
    cpu0 = cpu_s(sniffer_pid)
    r = flood(engine, info["container"], out, secs)
    time.sleep(1.5)
    cpu = cpu_s(sniffer_pid) - cpu0
    passed = tc.read_classes(cfg.ifb)[klass].packets - k_before
    got = counter.records
    wire_mbit = passed * 60 * 8 / r["elapsed"] / 1e6
    table(f"3. admin sniffer at the node cap, {secs:.0f} s of 60-byte frames",
          ["offered pps", "passed pps", "wire Mbit/s", "records", "missing",
           "ring drops", "sniffer cpu s", "records per cpu-s"],
          [[f"{r['offered'] / r['elapsed']:,.0f}", f"{passed / r['elapsed']:,.0f}",
            f"{wire_mbit:.1f}", f"{got:,}", f"{passed - got:,}",
            str(counter.drops.get("kernel", "?")), f"{cpu:.2f}",
            f"{got / cpu:,.0f}" if cpu else "-"]])
    rate = parser_rate()
    print(f"   parser alone (synthetic ring block): {rate:,.0f} packets per CPU-second")


if __name__ == "__main__":
    sys.exit(main())
