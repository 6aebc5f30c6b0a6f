"""Dormant-sliver benchmark: many slivers on one node, most of them dormant, woken by ssh.

Run as root from the repository::

    .venv/bin/python bench/dormant_bench.py [--slivers N] [--wakes K] [--after S] [--jobs J]

It starts a private node manager as ``bench/node_bench.py`` does (a node policy that
admits N default slivers, CPU shares overcommitted where N passes the node's 1000), sets
``dormant_after_s`` to S and binds N slivers, which go dormant S seconds after their
bind as they come; then it reports

1. bind p50 with the first 100 slivers on the node beside bind p50 with all N (flat cost),
2. host memory (MemAvailable drop) and exclusive disk per sliver with all N bound and
   dormant, and how many ran at the peak (a Linux bridge holds at most 1,024 ports),
3. wake-up: ``ssh slice@node true`` into K random dormant slivers, p50/p99, beside the
   same ssh into the same slivers once they run (the baseline: the same login, no wake),

and always removes what it created. The exit status is non-zero only when the benchmark
itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import node_bench as nb  # bench/ is the script's directory, first on sys.path
import yaml

from slicectl.ipc.rpc import Client
from slicectl.node.config import NodeConfig

TARGET_WAKE_S = 1.0
BRIDGE_PORTS = 1024
#: Each sliver's rspec: the default, with the memory and disk bounds of an idle sliver, so
#: that 10,000 fit this machine's admission within the policy's 100x overcommit ceiling.
BENCH_RSPEC: dict[str, Any] = {"mem_mb": 128, "disk_mb": 256}


def bind(nm: Client, name: str) -> float:
    """Acquire :data:`BENCH_RSPEC` and bind it to a new sliver; the bind's time."""
    rcap = nm.call("acquire", BENCH_RSPEC)
    t0 = time.perf_counter()
    info = nm.call("bind", name, rcap)
    dt = time.perf_counter() - t0
    if info.get("state") != "running":
        raise RuntimeError(f"bind {name}: expected a running sliver, found {info.get('state')}")
    return dt


def ssh_true(port: int, key: Path, user: str) -> float:
    argv = ["ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-l", user, "127.0.0.1", "true"]
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"ssh {user}@127.0.0.1 true: exit {out.returncode}: "
                           f"{out.stderr.strip()[:300]}")
    return dt


def states(node: nb.Node) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in node.nm.call("list"):
        out[s["state"]] = out.get(s["state"], 0) + 1
    return out


class Peak:
    """Samples the number of running slivers while the fill goes on."""

    def __init__(self, node: nb.Node) -> None:
        self.node = node
        self.running = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nm = Client(self.node.cfg.nm_sock)
        while not self.stop.wait(2):
            with contextlib.suppress(Exception):
                n = sum(1 for s in nm.call("list") if s["state"] == "running")
                self.running = max(self.running, n)


def measure(node: nb.Node, cfg: NodeConfig, args: argparse.Namespace, key_dir: Path) -> None:
    """The bench's three parts on the running private node (ssh keys in ``key_dir``)."""
    key = key_dir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True)
    pub = Path(f"{key}.pub").read_text().strip()
    node.nm.call("set_node", "dormant_after_s", args.after)
    names = [node.slice(f"d{i:05d}") for i in range(args.slivers)]
    avail0 = nb.mem_available_kib()
    peak = Peak(node)
    peak.thread.start()
    nb.say(f"[1/3] binding {len(names)} slivers ({args.jobs} clients); each goes dormant "
           f"{args.after} s after its bind")
    t_fill, each = nb.for_each(node, names, args.jobs, "bound",
                               lambda nm, name: bind(nm, name))
    nb.say(f"  bound {len(names)} in {t_fill:.0f} s; waiting for all to go dormant")
    deadline = time.monotonic() + args.after * 4 + 120
    while states(node).get("running", 0) > 0 and time.monotonic() < deadline:
        time.sleep(2)
    peak.stop.set()
    time.sleep(3)
    avail1 = nb.mem_available_kib()
    seen = states(node)
    mem_kib = (avail0 - avail1) / len(names)
    sample = random.Random(7).sample(names, min(20, len(names)))
    listed = {s["name"]: s for s in node.nm.call("list")}
    disk = [d for d in (nb.container_disk_kib(node, listed[n]["container_id"])
                        for n in sample) if d is not None]
    few = each[:100]
    probe = [bind(node.nm, node.slice("probe"))]
    node.nm.call("destroy", node.slice("probe"))

    nb.say(f"[2/3] waking {args.wakes} random dormant slivers by ssh")
    chosen = random.Random(11).sample(names, args.wakes)
    for name in chosen:
        node.nm.call("set_keys", name, [pub])
    wakes = []
    for name in chosen:
        if node.nm.call("get_sliver", name)["state"] != "dormant":
            raise RuntimeError(f"{name}: expected dormant before its wake")
        wakes.append(ssh_true(cfg.ssh_port, key, name))
    nb.say("[3/3] the same ssh into the same slivers, running (the baseline)")
    node.nm.call("set_node", "dormant_after_s", 0)
    warm = [ssh_true(cfg.ssh_port, key, name) for name in chosen]

    nb.table("dormant slivers", ["measure", "value", "target"], [
        ["slivers bound", len(names), args.slivers],
        ["dormant at the end", seen.get("dormant", 0), len(names)],
        ["most running at once", peak.running, f"< {BRIDGE_PORTS} (bridge ports)"],
        ["host memory a sliver (KiB)", f"{mem_kib:.0f}", "-"],
        ["exclusive disk a sliver (KiB, 20 sampled)",
         f"{nb.pct(disk, 50):.0f}" if disk else "n/a", "<= 100"],
    ])
    nb.table("bind latency (ms)", ["slivers on the node", "n", "p50", "p90"], [
        [f"first {len(few)}", len(few), nb.ms(nb.pct(few, 50)), nb.ms(nb.pct(few, 90))],
        [f"last {len(few)}", len(few), nb.ms(nb.pct(each[-100:], 50)),
         nb.ms(nb.pct(each[-100:], 90))],
        [f"all {len(names)} (probe)", 1, nb.ms(probe[0]), "-"],
    ])
    nb.table("ssh slice@node true (ms)", ["sliver", "n", "p50", "p99", "max"], [
        ["dormant (woken by the login)", len(wakes), nb.ms(nb.pct(wakes, 50)),
         nb.ms(nb.pct(wakes, 99)), nb.ms(max(wakes))],
        ["running (baseline)", len(warm), nb.ms(nb.pct(warm, 50)),
         nb.ms(nb.pct(warm, 99)), nb.ms(max(warm))],
    ])
    extra = nb.pct(wakes, 50) - nb.pct(warm, 50)
    nb.say(f"wake-up: {extra * 1000:.0f} ms at p50 over a login into a running sliver "
           f"(target {TARGET_WAKE_S * 1000:.0f} ms): "
           f"{'met' if extra <= TARGET_WAKE_S else 'MISSED'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slivers", type=int, default=10_000, metavar="N",
                        help="slivers to bind (default 10000)")
    parser.add_argument("--wakes", type=int, default=100, metavar="K",
                        help="random dormant slivers to wake by ssh (default 100)")
    parser.add_argument("--after", type=int, default=5, metavar="S",
                        help="the node's dormant_after_s during the bench (default 5)")
    parser.add_argument("--jobs", type=int, default=4, metavar="J",
                        help="concurrent clients binding slivers (default 4)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("dormant_bench: needs root (it drives the node's engine and host accounts)",
              file=sys.stderr)
        return 2
    if not 100 <= args.slivers <= 16_000:
        parser.error("--slivers: expected 100..16000 (the bench's subnet addresses 16,383)")
    if not 1 <= args.wakes <= args.slivers:
        parser.error(f"--wakes: expected 1..{args.slivers}")
    if args.after < 1:
        parser.error("--after: expected at least 1 second")
    signal.signal(signal.SIGTERM, nb.on_sigterm)
    t_start = time.perf_counter()
    node, cfg = nb.start_node(args.slivers + 1)
    policy = nb.overcommit_for(args.slivers + 1, node.engine.info()["DockerRootDir"],
                               BENCH_RSPEC)
    cfg.policy_path.write_text(yaml.safe_dump(policy))
    nb.say(f"dormant_bench: private node manager {cfg.node_id}; its policy for {BENCH_RSPEC} "
           "slivers: " + ", ".join(f"{k} {v:g}" for k, v in policy.items()))
    with tempfile.TemporaryDirectory(prefix="slicectl-bench-") as keys:
        status = nb.run_on(node, lambda: measure(node, cfg, args, Path(keys)))
    nb.say(f"dormant_bench: done in {time.perf_counter() - t_start:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
