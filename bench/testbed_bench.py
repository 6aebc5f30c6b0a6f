"""Testbed benchmark: how fast a slice made in PLC is live on every node.

For each testbed size (1, 3 and 5 nodes by default) a real testbed comes up (`slicectl
testbed up`: PLC and N nodes in containers, each node with its own engine, NM and agent),
a PI makes slices, and we time from `AddSliceToNodes` returning to `ssh slice@node true`
succeeding on every node (one thread per node, retrying every 0.25 s). Beside it, in the
same run on the same testbed, the baseline: PLC restarted with `--no-change-notices`, so
the agents learn only from their periodic GetSlivers (60 s plus jitter), as PlanetLab's
node manager did (its poll was 10 minutes, and creating a vserver took 9.66 s: the
"paper model" column). Also: a key added to a slice (`AddPersonToSlice`) until it logs
in on every node, and each node agent's idle CPU and memory (its sliver's cgroup, over
``--idle-s`` seconds).

Run: ``.venv/bin/python bench/testbed_bench.py [--nodes 1,3,5] [--samples 7] [--poll-samples 3]``
(root; builds the node image on its first run). The testbed is taken down at the end,
also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from slicectl.node.dockerd import Say
from slicectl.testbed import lifecycle
from slicectl.testbed.drive import Node, Site, Testbed, ssh_ok, until
from slicectl.testbed.layout import layout

PROJECT = "slicectl-bench"
SUBNET = "10.197.0.0/24"
#: PlanetLab's node manager (the paper, section 5.2): a 10-minute poll, then 9.66 s to
#: create a vserver from a warm cache (nodes in parallel).
PAPER_POLL_S, PAPER_CREATE_S = 600.0, 9.66
#: Between ssh tries to a node: each try costs the node an sshd, a login and an entry
#: into the sliver, which on a two-core machine slows the creation being measured.
PROBE_S = 0.25


def live_everywhere(nodes: list[Node], key: Path, user: str, started: float,
                    timeout_s: float) -> float:
    """Seconds from ``started`` until ``ssh user@node true`` worked on every node."""
    done: dict[str, float] = {}

    def one(node: Node) -> None:
        while time.monotonic() - started < timeout_s:
            if ssh_ok(key, user, node):
                done[node.name] = time.monotonic() - started
                return
            time.sleep(PROBE_S)

    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if len(done) < len(nodes):
        missing = sorted({n.name for n in nodes} - set(done))
        raise SystemExit(f"{user}: not live on {', '.join(missing)} within {timeout_s:.0f}s")
    return max(done.values())


def slice_latency(site: Site, short: str, timeout_s: float) -> float:
    tb = site.tb
    name = f"{site.login_base}_{short}"
    site.call(site.pi, "AddSlice", {"name": name, "url": "https://bench.example.org/",
                                    "description": "testbed bench"})
    site.call(site.pi, "AddPersonToSlice", site.pi.person_id, name)
    site.call(site.pi, "AddSliceToNodes", name, [n.hostname for n in tb.nodes])
    started = time.monotonic()
    # kept until the phase ends: a removal in progress would delay the next sample
    return live_everywhere(tb.nodes, site.pi.key, name, started, timeout_s)


def remove_slices(site: Site, names: list[str]) -> None:
    """Delete ``names`` in PLC and wait until no node has them."""
    for name in names:
        site.call(site.pi, "DeleteSlice", name)
    for node in site.tb.nodes:
        until(lambda n=node: not set(names) & site.tb.slivers(n), 120, f"removal on {node.name}",
              pause=0.5)


def key_latency(site: Site, keys: Path, slice_name: str, i: int) -> float:
    newcomer = site.person(f"key{i}@{site.login_base}.example.org", "user", keys)
    site.call(site.pi, "AddPersonToSlice", newcomer.person_id, slice_name)
    started = time.monotonic()
    try:
        return live_everywhere(site.tb.nodes, newcomer.key, slice_name, started, 60)
    finally:
        site.call(site.pi, "DeletePersonFromSlice", newcomer.person_id, slice_name)


def agent_idle(tb: Testbed, node: Node, seconds: float) -> tuple[float, float]:
    """(CPU % of one core, MiB of memory) of the node agent's sliver, idle."""
    pid = tb.slicectl(node, "show", "slicectl_agent")["pid"]
    cg = {line.split(":")[1]: line.split(":")[2]
          for line in tb.on_node(node, "cat", f"/proc/{pid}/cgroup", check=True).stdout.splitlines()}
    cpu = next(v for k, v in cg.items() if "cpuacct" in k.split(","))
    mem = cg["memory"]
    cpu_dir = next(d for d in ("cpu,cpuacct", "cpuacct") if tb.on_node(
        node, "test", "-e", f"/sys/fs/cgroup/{d}{cpu}/cpuacct.usage").returncode == 0)

    def usage() -> int:
        return int(tb.on_node(node, "cat", f"/sys/fs/cgroup/{cpu_dir}{cpu}/cpuacct.usage",
                              check=True).stdout)

    before, t0 = usage(), time.monotonic()
    time.sleep(seconds)
    pct = (usage() - before) / 1e9 / (time.monotonic() - t0) * 100
    stat = dict(line.split() for line in tb.on_node(
        node, "cat", f"/sys/fs/cgroup/memory{mem}/memory.stat", check=True).stdout.splitlines())
    return pct, (int(stat["total_rss"]) + int(stat.get("total_mapped_file", 0))) / 2**20


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def run_size(n: int, args: argparse.Namespace, keys: Path, say: Say) -> dict[str, object]:
    lay = layout(n, PROJECT, subnet=SUBNET)
    lifecycle.down(lay, Say(quiet=True))
    t0 = time.monotonic()
    lifecycle.up(lay, os.environ, Say(quiet=True))
    up_s = time.monotonic() - t0
    say(f"{n} node(s) up in {up_s:.0f}s")
    try:
        tb = Testbed.of(lay)
        site = Site(tb, "bench", keys)
        warm = slice_latency(site, "warmup", 120)  # first slice after up: not counted
        notices = [slice_latency(site, f"n{i}", 120) for i in range(args.samples)]
        say(f"  with change notices: p50 {statistics.median(notices):.2f}s (warm-up {warm:.2f}s)")
        remove_slices(site, [f"bench_n{i}" for i in range(args.samples)] + ["bench_warmup"])
        home = f"{site.login_base}_keys"
        site.call(site.pi, "AddSlice", {"name": home, "url": "https://bench.example.org/",
                                        "description": "key bench"})
        site.call(site.pi, "AddPersonToSlice", site.pi.person_id, home)
        site.call(site.pi, "AddSliceToNodes", home, [x.hostname for x in tb.nodes])
        live_everywhere(tb.nodes, site.pi.key, home, time.monotonic(), 120)
        key = [key_latency(site, keys, home, i) for i in range(args.samples)]
        say(f"  key change: p50 {statistics.median(key):.2f}s")
        idle = [agent_idle(tb, node, args.idle_s) for node in tb.nodes]
        lifecycle.set_plc_args(lay, "--no-change-notices", Say(quiet=True))
        poll = [slice_latency(site, f"p{i}", 300) for i in range(args.poll_samples)]
        say(f"  poll only: p50 {statistics.median(poll):.1f}s")
        return {"n": n, "up_s": up_s, "notices": notices, "key": key, "poll": poll, "idle": idle}
    finally:
        lifecycle.down(lay, Say(quiet=True))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="1,3,5")
    ap.add_argument("--samples", type=int, default=7)
    ap.add_argument("--poll-samples", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=20)
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    say = Say()
    rows = []
    with tempfile.TemporaryDirectory(prefix="slicectl-bench-keys-") as tmp:
        for n in sizes:
            rows.append(run_size(n, args, Path(tmp), say))
    print()
    print("AddSliceToNodes -> `ssh slice@node true` on every node (seconds)")
    print(f"{'nodes':>5} | {'notices p50':>11} {'p90':>6} {'max':>6} | {'poll-only p50':>13} "
          f"{'max':>6} | {'paper model':>11} | {'key p50':>7} {'max':>6} | "
          f"{'agent idle CPU':>14} {'agent MiB':>9} | {'up s':>5}")
    for r in rows:
        notices, poll, key = r["notices"], r["poll"], r["key"]
        idle = r["idle"]
        assert isinstance(notices, list) and isinstance(poll, list) and isinstance(key, list)
        assert isinstance(idle, list)
        cpu = statistics.mean(c for c, _ in idle)
        mib = statistics.mean(m for _, m in idle)
        print(f"{r['n']:>5} | {statistics.median(notices):>11.2f} {pct(notices, 0.9):>6.2f} "
              f"{max(notices):>6.2f} | {statistics.median(poll):>13.1f} {max(poll):>6.1f} | "
              f"{PAPER_POLL_S / 2 + PAPER_CREATE_S:>11.1f} | {statistics.median(key):>7.2f} "
              f"{max(key):>6.2f} | {cpu:>13.2f}% {mib:>9.1f} | {r['up_s']:>5.0f}")
    print(f"\npaper model: half of a {PAPER_POLL_S:.0f} s poll on average plus {PAPER_CREATE_S} s "
          "to create the vserver; samples per size: "
          f"{args.samples} (notices, keys), {args.poll_samples} (poll only)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
