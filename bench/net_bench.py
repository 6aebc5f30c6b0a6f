"""Network benchmark: configured vs achieved rate under HTB, and the cost of a sliver's
network on bind. Run as root on a prepared node: ``.venv/bin/python bench/net_bench.py``.

Every number comes from this run: iperf3 goodput from a sliver to the host, the bytes the
kernel's class counted, and the time the node manager spends on a sliver's network
(classes, filters, veth redirect, port chains) beside the whole bind.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from slicectl.core.netplan import handle
from slicectl.core.rspec import parse_rspec
from slicectl.ipc.rpc import Client
from slicectl.node import tc
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import prepare
from slicectl.node.dockerd import Say
from slicectl.node.engine import engine_client
from slicectl.node.network import NodeNetwork
from slicectl.node.nm.boundary import NetIdentity
from slicectl.node.store import Store
from slicectl.testbed.privnode import private_node


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def rate_table(nm: Client, cfg: NodeConfig, engine: Any, caps: list[int], seconds: int) -> list[str]:
    gw = str(ipaddress.ip_network(cfg.subnet).network_address + 1)
    rows = [f"{'configured kbit/s':>18} {'goodput kbit/s':>15} {'wire kbit/s':>12} "
            f"{'goodput/cap':>12} {'wire/cap':>9}"]
    for cap in caps:
        name = f"b{cfg.state_dir.name}_rate{cap}"
        info = nm.call("bind", name, nm.call("acquire", {"net_max_kbit": cap}))
        port = free_port()
        server = subprocess.Popen(["iperf3", "-s", "-1", "-B", gw, "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.4)
        klass = handle(0xC000 + info["xid"])
        before = tc.read_classes(cfg.ifb)[klass].bytes
        t0 = time.monotonic()
        res = engine.containers.get(info["container"]).exec_run(
            ["iperf3", "-c", gw, "-p", str(port), "-t", str(seconds), "-J"], user=str(info["uid"]))
        elapsed = time.monotonic() - t0
        sent = tc.read_classes(cfg.ifb)[klass].bytes - before
        server.wait(10)
        goodput = json.loads(res.output)["end"]["sum_received"]["bits_per_second"] / 1000
        wire = sent * 8 / 1000 / elapsed
        rows.append(f"{cap:>18} {goodput:>15.0f} {wire:>12.0f} {goodput / cap:>12.3f} "
                    f"{wire / cap:>9.3f}")
        nm.call("destroy", name)
    return rows


def cost_table(nm: Client, cfg: NodeConfig, engine: Any, rounds: int) -> list[str]:
    """Time the network steps of a bind on a live sliver, in this process, against the
    same kernel objects the node manager uses; and whole binds for scale."""
    name = f"b{cfg.state_dir.name}_cost"
    info = nm.call("bind", name, nm.call("acquire", {"tcp_ports": [45001]}))
    net = NodeNetwork(Store(cfg.db_path), node_id=cfg.node_id, subnet=cfg.subnet,
                      bridge=cfg.bridge, ifb=cfg.ifb)
    ident = NetIdentity(name, info["xid"], parse_rspec({"tcp_ports": [45001]}, time.time()))
    add, remove, binds = [], [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        net.detach(ident)
        net.apply_ports([])
        t1 = time.perf_counter()
        net.attach(ident, info["pid"])
        net.apply_ports([ident])
        t2 = time.perf_counter()
        remove.append((t1 - t0) * 1000)
        add.append((t2 - t1) * 1000)
    nm.call("destroy", name)
    for i in range(max(3, rounds // 4)):
        rcap = nm.call("acquire", {})
        t0 = time.perf_counter()
        nm.call("bind", f"b{cfg.state_dir.name}_w{i}", rcap)
        binds.append((time.perf_counter() - t0) * 1000)
        nm.call("destroy", f"b{cfg.state_dir.name}_w{i}")
    rows = [f"{'step':34} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}"]
    for label, vals in (("add a sliver's network", add), ("remove a sliver's network", remove),
                        ("whole bind (baseline, same run)", binds)):
        rows.append(f"{label:34} {statistics.median(vals):>8.1f} {pct(vals, 0.9):>8.1f} "
                    f"{max(vals):>8.1f}")
    rows.append(f"network share of a bind: {statistics.median(add):.1f} ms of "
                f"{statistics.median(binds):.1f} ms (target: under 50 ms)")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--caps", default="1000,10000,50000", help="kbit/s, comma-separated")
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("net_bench: run as root on a node (it drives tc, iptables and the engine)")
        return 2
    base = NodeConfig.from_env(os.environ)
    base = base.with_(image=prepare(base, os.environ, Say(quiet=True)))
    engine = engine_client(base.engine_url)
    with private_node(base, engine, kind="bench") as cfg:
        nm = Client(cfg.nm_sock)
        print(f"# net_bench on {os.uname().nodename}, {os.cpu_count()} CPUs, node {cfg.node_id}")
        print("\n## HTB cap: iperf3 TCP from a sliver to the host, "
              f"{args.seconds} s each (wire = bytes the sliver's class counted)")
        for row in rate_table(nm, cfg, engine, [int(c) for c in args.caps.split(",")],
                              args.seconds):
            print(row)
        print(f"\n## Cost of a sliver's network ({args.rounds} rounds on one live sliver)")
        for row in cost_table(nm, cfg, engine, args.rounds):
            print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
