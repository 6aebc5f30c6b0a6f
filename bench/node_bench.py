"""Node benchmark: how fast and how light slicectl's slivers are on this node.

Run as root from the repository::

    .venv/bin/python bench/node_bench.py [--slivers N] [--rounds R] [--bind-rounds R2]

It starts a private node manager exactly as the ``nm`` test fixture does (own node id,
state and run directories and socket, on the node's engine and reference image), measures

1. acquire latency over the XML-RPC socket (and release),
2. bind-to-running latency against a bare ``docker create`` + ``start`` of the same image,
3. scale: N slivers through acquire+bind, host memory and exclusive btrfs disk per sliver,
   create rate, then teardown time,

prints each as a table and a final summary, and always removes what it created
(containers by node label, host accounts, state and run directories). The exit status is
0 whether or not targets are met; it is non-zero only when the benchmark itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

import docker
import docker.errors
import yaml

from slicectl.core.labels import LABEL_KIND, LABEL_NODE, LABEL_SLICE, REFERENCE_REPO
from slicectl.core.policy import NodePolicy
from slicectl.core.rspec import TOTAL_CPU_SHARES, parse_rspec
from slicectl.ipc.rpc import Client
from slicectl.node.accounts import HostAccounts
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import install_programs, prepare, remove_programs
from slicectl.node.dockerd import Say
from slicectl.node.nm.daemon import node_capacity

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from slicectl.testbed.privnode import (  # noqa: E402
    PRIVATE_STATE,
    create_network,
    log_path,
    private_config,
    reap_orphans,
)
from slicectl.testbed.privnode import cleanup as cleanup_private  # noqa: E402
from tests.docker.conftest import NMHandle  # noqa: E402

MIB = 1 << 20
KIB = 1 << 10
CGROUP_ROOT = Path("/sys/fs/cgroup")
PAPER_MEM_MB = 29.0
PAPER_CREATE_S = 9.66
TARGET_ACQUIRE_P50_MS = 10.0
TARGET_BIND_RATIO = 1.25
#: A warm bind (from the pool) against a bare docker create+start, and absolutely.
TARGET_WARM_RATIO = 0.5
TARGET_WARM_MS = 100.0
#: Pooled slivers the warm-bind rounds keep (node setting ``warm_pool``).
WARM_POOL = 2
TARGET_FLAT_RATIO = 1.2
#: slivers on the node when the flat-cost test takes its baseline
FLAT_FEW = 10
TARGET_NM_IDLE_PCT = 5.0
BENCH_SUBNET = "10.196.0.0/17"
#: seconds over which the node manager's idle CPU is measured with all slivers running
IDLE_S = 20.0
TARGET_MEM_MIB = 5.0
TARGET_DISK_KIB = 100.0
DU_SAMPLE = 3


# output -------------------------------------------------------------------------------


def say(msg: str) -> None:
    print(msg, flush=True)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned text table: title, header line, rule, rows (numbers right-aligned)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric,
                                                                            strict=True)]
        return "  ".join(parts).rstrip()

    print(f"\n== {title}")
    print(line(list(headers)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))
    sys.stdout.flush()


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return text in ("-", "n/a")
    return True


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


# host measurements ----------------------------------------------------------------------


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/meminfo: expected a MemAvailable line, found none")


def proc_kib(pid: int, path: str, key: str) -> int:
    """A ``key: N kB`` value from /proc/<pid>/<path>, 0 if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/{path}").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def processes() -> list[tuple[int, int, list[str]]]:
    """(pid, ppid, argv) of every process."""
    out: list[tuple[int, int, list[str]]] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in
                    (d / "cmdline").read_bytes().split(b"\0") if a]
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.append((int(d.name), ppid, argv))
    return out


@dataclass
class EnginePids:
    dockerd: int | None
    containerd: int | None


def engine_pids(node_cfg: NodeConfig) -> EnginePids:
    dockerd = read_pid(node_cfg.run_dir / "dockerd.pid")
    containerd = next((pid for pid, ppid, argv in processes()
                       if ppid == dockerd and argv and Path(argv[0]).name == "containerd"), None)
    return EnginePids(dockerd, containerd)


def shim_pids(container_ids: set[str]) -> dict[str, int]:
    """containerd-shim pid per container id (for those given)."""
    found: dict[str, int] = {}
    for pid, _ppid, argv in processes():
        if not argv or "containerd-shim" not in Path(argv[0]).name or "-id" not in argv:
            continue
        i = argv.index("-id")
        if i + 1 < len(argv) and argv[i + 1] in container_ids:
            found[argv[i + 1]] = pid
    return found


def cgroup_memory(cgroup_parent: str, cid: str) -> dict[str, int] | None:
    """The container's cgroup v1 memory charge: ``usage`` and the memory.stat counters."""
    d = CGROUP_ROOT / "memory" / cgroup_parent.lstrip("/") / cid
    try:
        out = {"usage": int((d / "memory.usage_in_bytes").read_text().strip())}
        for line in (d / "memory.stat").read_text().splitlines():
            key, value = line.split()
            out[key] = int(value)
    except (OSError, ValueError):
        return None
    return out


def run(argv: list[str]) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=600)
    if cp.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit status {cp.returncode}: {cp.stderr.strip()}")
    return cp.stdout


@dataclass
class Btrfs:
    """Exclusive bytes of the engine's btrfs subvolumes, from qgroups (data + metadata)."""

    root: Path
    driver_dir: str = "btrfs"

    def subvolume_ids(self) -> dict[str, int]:
        """Subvolume directory name -> subvolume id."""
        ids: dict[str, int] = {}
        for line in run(["btrfs", "subvolume", "list", str(self.root)]).splitlines():
            parts = line.split()
            if len(parts) >= 9 and parts[0] == "ID":
                ids[Path(parts[-1]).name] = int(parts[1])
        return ids

    def qgroups(self) -> dict[int, int]:
        """Level-0 qgroup id (= subvolume id) -> exclusive bytes, after a commit."""
        run(["btrfs", "filesystem", "sync", str(self.root)])
        excl: dict[int, int] = {}
        for line in run(["btrfs", "qgroup", "show", "--raw", str(self.root)]).splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0].startswith("0/") and parts[2].isdigit():
                excl[int(parts[0][2:])] = int(parts[2])
        return excl

    def exclusive(self) -> dict[str, int]:
        """Subvolume directory name -> exclusive bytes."""
        ids = self.subvolume_ids()
        excl = self.qgroups()
        return {name: excl[i] for name, i in ids.items() if i in excl}

    def pending_drops(self) -> set[int]:
        """Ids of deleted subvolumes the kernel's btrfs-cleaner has not dropped yet."""
        out = run(["btrfs", "subvolume", "list", "-d", str(self.root)])
        return {int(line.split()[1]) for line in out.splitlines() if line.startswith("ID ")}

    def mount_id(self, cid: str) -> str | None:
        """The container's read-write layer: its subvolume's directory name."""
        path = self.root / "image" / self.driver_dir / "layerdb" / "mounts" / cid / "mount-id"
        try:
            return path.read_text().strip()
        except OSError:
            return None

    def du_exclusive(self, names: list[str]) -> dict[str, int]:
        """File-data-only exclusive bytes (``btrfs filesystem du``), slow: walks the files."""
        paths = [str(self.root / self.driver_dir / "subvolumes" / n) for n in names]
        out: dict[str, int] = {}
        for line in run(["btrfs", "filesystem", "du", "-s", "--raw", *paths]).splitlines()[1:]:
            parts = line.split(None, 3)
            if len(parts) == 4 and parts[1].isdigit():
                out[Path(parts[3]).name] = int(parts[1])
        return out


# the benchmark --------------------------------------------------------------------------


@dataclass
class Node:
    """The private node manager and what the benchmark talks to."""

    node_cfg: NodeConfig
    handle: NMHandle
    engine: docker.DockerClient
    nm: Client
    image: str
    btrfs: Btrfs

    @property
    def cfg(self) -> NodeConfig:
        return self.handle.cfg

    def slice(self, name: str) -> str:
        return f"b{self.handle.tag}_{name}"


@dataclass
class Results:
    acquire: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)
    bind: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    bare_crun: list[float] = field(default_factory=list)
    #: binds that took a pooled sliver, and from each bind's call until the sliver's init
    #: had made the slice's home (it runs as the slice's)
    warm: list[float] = field(default_factory=list)
    warm_home: list[float] = field(default_factory=list)
    #: why crun, though registered, could not start a container here ("" if it could)
    crun_error: str = ""
    bare_disk_kib: float | None = None
    n: int = 0
    jobs: int = 1
    create_s: float = 0.0
    create_each: list[float] = field(default_factory=list)
    teardown_s: float = 0.0
    mem_mib: float = float("nan")
    disk_kib: list[float] = field(default_factory=list)
    pending_drops: int = 0
    subvols: int = 0
    cleaner_cpu_s: float = 0.0
    drain_s: float | None = None
    flat_few: int = 0
    flat_bind_few: list[float] = field(default_factory=list)
    flat_destroy_few: list[float] = field(default_factory=list)
    flat_bind_full: list[float] = field(default_factory=list)
    flat_destroy_full: list[float] = field(default_factory=list)
    #: the engine's own growth, in the same rounds: bare create+start and force-remove
    flat_bare_few: list[float] = field(default_factory=list)
    flat_bare_rm_few: list[float] = field(default_factory=list)
    flat_bare_full: list[float] = field(default_factory=list)
    flat_bare_rm_full: list[float] = field(default_factory=list)
    nm_idle_pct: float = float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def bench_acquire(node: Node, rounds: int, res: Results) -> None:
    say(f"[1/3] acquire latency: {rounds} acquire calls (cpu_share 1), then release each")
    rcaps: list[str] = []
    for _ in range(rounds):
        dt, rcap = timed(partial(node.nm.call, "acquire", {"cpu_share": 1}))
        res.acquire.append(dt)
        rcaps.append(rcap)
    for rcap in rcaps:
        dt, _ = timed(partial(node.nm.call, "release", rcap))
        res.release.append(dt)
    tenth = max(1, rounds // 10)
    rows: list[list[object]] = []
    for label, xs in (("acquire", res.acquire), ("release", res.release)):
        rows.append([label, len(xs), ms(pct(xs, 50)), ms(pct(xs, 90)), ms(pct(xs, 99)), ms(max(xs)),
                     ms(statistics.median(xs[:tenth])), ms(statistics.median(xs[-tenth:]))])
    table("acquire/release latency over the XML-RPC socket (ms)",
          ["call", "n", "p50", "p90", "p99", "max", "p50 first 10%", "p50 last 10%"], rows)


def bare_create_start(node: Node, runtime: str | None = None) -> tuple[float, Any]:
    def go() -> Any:
        c = node.engine.containers.create(
            node.image, command=["sleep", "infinity"], init=True, network=node.cfg.network,
            labels={LABEL_NODE: node.cfg.node_id, LABEL_KIND: "bench-bare"},
            storage_opt={"size": "2G"}, cgroup_parent=node.cfg.cgroup_parent,
            runtime=runtime,
        )
        try:
            c.start()
        except BaseException:
            c.remove(force=True, v=True)
            raise
        return c

    return timed(go)


def crun_works(node: Node) -> str | None:
    """None if a bare container starts under crun here, else the engine's reason."""
    try:
        _, c = bare_create_start(node, "crun")
    except docker.errors.APIError as e:
        return str(e.explanation or e)
    c.remove(force=True, v=True)
    return None


def sliver_bind(node: Node, name: str, nm: Client | None = None) -> float:
    """Acquire a default rcap and bind it to a new sliver ``name``; return the bind's time."""
    nm = nm or node.nm
    rcap = nm.call("acquire", {})
    dt, info = timed(partial(nm.call, "bind", name, rcap))
    if info.get("state") != "running":
        raise RuntimeError(f"bind {name}: expected a running sliver, found state {info.get('state')}")
    return float(dt)


def bench_bind(node: Node, rounds: int, res: Results) -> None:
    crun = "crun" in node.engine.info().get("Runtimes", {})
    if crun and (why := crun_works(node)) is not None:
        say(f"crun is registered with the engine but does not start a container here: {why}")
        res.crun_error = why
        crun = False
    say(f"[2/3] bind-to-running vs bare docker create+start: {rounds} rounds "
        "(+1 untimed warm-up), alternating" + ("" if crun or res.crun_error else
        "; crun is not registered with the engine (install it, then restart the engine: "
        "slicectl node down && slicectl node up)"))
    for i in range(-1, rounds):
        tag = "warm" if i < 0 else f"l{i:03d}"
        name = node.slice(tag)
        order = ("sliver", "bare") if i % 2 == 0 else ("bare", "sliver")
        if crun:
            order = (*order, "crun") if i % 2 == 0 else ("crun", *order)
        for kind in order:
            if kind == "sliver":
                dt = sliver_bind(node, name)
                node.nm.call("destroy", name)
                if i >= 0:
                    res.bind.append(dt)
            else:
                dt, c = bare_create_start(node, "crun" if kind == "crun" else None)
                try:
                    c.reload()
                    if c.status != "running":
                        raise RuntimeError(f"bare container {c.id[:12]}: expected running, "
                                           f"found {c.status}")
                    if i == rounds - 1:
                        res.bare_disk_kib = container_disk_kib(node, c.id)
                finally:
                    c.remove(force=True, v=True)
                if i >= 0:
                    (res.bare_crun if kind == "crun" else res.bare).append(dt)
    bench_warm(node, rounds, res)
    ratio = statistics.median(res.bind) / statistics.median(res.bare)
    rows: list[list[object]] = [
        ["slicectl acquire+bind (bind timed)", len(res.bind), ms(pct(res.bind, 50)),
         ms(pct(res.bind, 90)), ms(max(res.bind)), f"{ratio:.2f}"],
        ["bare docker create+start", len(res.bare), ms(pct(res.bare, 50)), ms(pct(res.bare, 90)),
         ms(max(res.bare)), "1.00"],
    ]
    for label, xs in ((f"warm bind (pool of {WARM_POOL}, full before each)", res.warm),
                      ("warm bind until the slice's home exists", res.warm_home)):
        rows.append([label, len(xs), ms(pct(xs, 50)), ms(pct(xs, 90)), ms(max(xs)),
                     f"{statistics.median(xs) / statistics.median(res.bare):.2f}"])
    if res.bare_crun:
        rows.append(["bare docker create+start, runtime crun", len(res.bare_crun),
                     ms(pct(res.bare_crun, 50)), ms(pct(res.bare_crun, 90)),
                     ms(max(res.bare_crun)),
                     f"{statistics.median(res.bare_crun) / statistics.median(res.bare):.2f}"])
    table("bind-to-running latency (ms)", ["path", "n", "p50", "p90", "max", "ratio of p50"], rows)


def pool_full(node: Node, want: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while int(node.nm.call("status")["pool_ready"]) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"warm pool: expected {want} ready within {timeout:.0f} s, found "
                               f"{node.nm.call('status')['pool_ready']}; see {node.handle.log_path}")
        time.sleep(0.1)


def bench_warm(node: Node, rounds: int, res: Results) -> None:
    """Binds that take a pooled sliver: the node keeps ``WARM_POOL`` ready, each round
    waits until it is full again (so no refill competes with the timed bind), then binds
    a default rcap and waits for the slice's home to appear in the sliver's root."""
    say(f"[2/3] warm binds: {rounds} rounds from a pool of {WARM_POOL} (node setting "
        "warm_pool), each after the pool is full again")
    node.nm.call("set_node", "warm_pool", WARM_POOL)
    try:
        for i in range(rounds):
            pool_full(node, WARM_POOL)
            name = node.slice(f"w{i:03d}")
            rcap = node.nm.call("acquire", {})
            t0 = time.perf_counter()
            info = node.nm.call("bind", name, rcap)
            dt = time.perf_counter() - t0
            c = node.engine.containers.get(info["container_id"])
            if LABEL_SLICE in c.labels:
                raise RuntimeError(f"bind {name}: expected a pooled container, found a new one")
            home = Path(f"/proc/{c.attrs['State']['Pid']}/root/home/{name}")
            while not home.is_dir():
                if time.perf_counter() - t0 > 30:
                    raise RuntimeError(f"sliver {name}: its home {home} did not appear in 30 s")
                time.sleep(0.002)
            res.warm.append(dt)
            res.warm_home.append(time.perf_counter() - t0)
            node.nm.call("destroy", name)
    finally:
        node.nm.call("set_node", "warm_pool", 0)


def container_disk_kib(node: Node, cid: str) -> float | None:
    mid = node.btrfs.mount_id(cid)
    if mid is None:
        return None
    excl = node.btrfs.exclusive()
    if mid not in excl:
        return None
    return (excl[mid] + excl.get(f"{mid}-init", 0)) / KIB


def progress_every(n: int) -> int:
    return max(1, n // 10)


def for_each(node: Node, names: list[str], jobs: int, verb: str,
             fn: Callable[[Client, str], object]) -> tuple[float, list[float]]:
    """Run ``fn(client, name)`` for every name on ``jobs`` threads (one RPC client each),
    printing progress every 10%. Returns the wall time and each call's time, in order.

    The first failure stops the remaining calls and is raised.
    """
    n = len(names)
    step = progress_every(n)
    lock = threading.Lock()
    local = threading.local()
    failed = threading.Event()
    done = 0
    t0 = time.perf_counter()

    def one(name: str) -> float:
        nonlocal done
        if failed.is_set():
            raise RuntimeError("skipped after an earlier failure")
        if not hasattr(local, "nm"):
            local.nm = Client(node.cfg.nm_sock)
        t1 = time.perf_counter()
        try:
            fn(local.nm, name)
        except BaseException:
            failed.set()
            raise
        dt = time.perf_counter() - t1
        with lock:
            done += 1
            if done % step == 0 or done == n:
                say(f"  {verb} {done}/{n} in {time.perf_counter() - t0:.1f}s")
        return dt

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        each = list(pool.map(one, names))
    except BaseException:  # a failure, or an interrupt: let only the calls under way finish
        failed.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return time.perf_counter() - t0, each


def cleaner_cpu_s() -> float:
    """CPU seconds used so far by the kernel's btrfs-cleaner threads (every btrfs mounted)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if "(btrfs-cleaner)" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_for_drops(node: Node, ids: set[int], limit_s: float) -> float:
    """Wait until the cleaner has dropped ``ids``; the time taken, or NaN past ``limit_s``."""
    t0 = time.perf_counter()
    last = 0.0
    while True:
        left = ids & node.btrfs.pending_drops()
        elapsed = time.perf_counter() - t0
        if not left:
            return elapsed
        if elapsed > limit_s:
            return float("nan")
        if elapsed - last >= 30:
            say(f"  waiting for btrfs-cleaner: {len(left)} of {len(ids)} subvolumes left "
                f"after {elapsed:.0f}s")
            last = elapsed
        time.sleep(2)


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def cpu_pct(pid: int, seconds: float) -> float:
    """The share of one core a process used over the next ``seconds``."""
    t0, c0 = time.monotonic(), cpu_ticks(pid)
    time.sleep(seconds)
    return (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0) * 100


@dataclass
class Probes:
    """One flat-cost probe series: slicectl's bind and destroy, and in the same rounds a
    bare docker create+start and force-remove (how much the engine itself grows)."""

    binds: list[float] = field(default_factory=list)
    destroys: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    bare_rm: list[float] = field(default_factory=list)


def probe_binds(node: Node, rounds: int, tag: str) -> Probes:
    """Bind and destroy a probe sliver ``rounds`` times, one at a time, on the node as it is,
    each round beside a bare container made and removed (the flat-cost test: the same rounds
    with few and with all slivers on the node)."""
    out = Probes()
    for i in range(rounds):
        name = node.slice(f"{tag}{i:03d}")
        out.binds.append(sliver_bind(node, name))
        dt, _ = timed(partial(node.nm.call, "destroy", name))
        out.destroys.append(dt)
        dt, c = bare_create_start(node)
        out.bare.append(dt)
        dt, _ = timed(partial(c.remove, force=True, v=True))
        out.bare_rm.append(dt)
    return out


def bench_scale(node: Node, n: int, jobs: int, drain_s: float, res: Results,
                flat_rounds: int = 10) -> None:
    say(f"[3/3] scale: {n} slivers with the default rspec through acquire+bind "
        f"({jobs} concurrent client{'s' if jobs > 1 else ''})")
    res.jobs = jobs
    cpu0 = cleaner_cpu_s()
    res.n = n
    # With probes, the fill leaves room for one: the probe is the node's n-th sliver (a
    # default sliver holds one of the node's 1000 CPU shares).
    names = [node.slice(f"s{i:04d}") for i in range(n - 1 if flat_rounds else n)]
    n = res.n = len(names)
    pids = engine_pids(node.node_cfg)
    nm_pid = node.handle.pid
    rss0 = {k: proc_kib(p, "status", "VmRSS") if p else 0 for k, p in
            (("dockerd", pids.dockerd), ("containerd", pids.containerd), ("node manager", nm_pid))}
    avail0 = mem_available_kib()
    few = min(FLAT_FEW, n)
    t_few, each_few = for_each(node, names[:few], jobs, "created",
                               lambda nm, name: sliver_bind(node, name, nm))
    res.flat_few = few
    few_probes = probe_binds(node, flat_rounds, "f")
    res.flat_bind_few, res.flat_destroy_few = few_probes.binds, few_probes.destroys
    res.flat_bare_few, res.flat_bare_rm_few = few_probes.bare, few_probes.bare_rm
    t_rest, each_rest = for_each(node, names[few:], jobs, "created",
                                 lambda nm, name: sliver_bind(node, name, nm))
    res.create_s, res.create_each = t_few + t_rest, each_few + each_rest
    full_probes = probe_binds(node, flat_rounds, "g")
    res.flat_bind_full, res.flat_destroy_full = full_probes.binds, full_probes.destroys
    res.flat_bare_full, res.flat_bare_rm_full = full_probes.bare, full_probes.bare_rm
    time.sleep(3)  # let each sliver's init finish its first-start work
    avail1 = mem_available_kib()
    res.nm_idle_pct = cpu_pct(nm_pid, IDLE_S)
    res.mem_mib = (avail0 - avail1) / KIB / n
    rss1 = {k: proc_kib(p, "status", "VmRSS") if p else 0 for k, p in
            (("dockerd", pids.dockerd), ("containerd", pids.containerd), ("node manager", nm_pid))}

    listed = node.nm.call("list")
    cids = {s["container_id"] for s in listed if s.get("container_id")}
    if len(cids) != len(names):
        raise RuntimeError(f"list: expected {len(names)} slivers with containers, found "
                           f"{len(cids)}")
    shims = shim_pids(cids)
    shim_pss = [proc_kib(p, "smaps_rollup", "Pss") for p in shims.values()]
    cg = [m for m in (cgroup_memory(node.cfg.cgroup_parent, c) for c in cids) if m is not None]

    excl = node.btrfs.exclusive()
    ids = node.btrfs.subvolume_ids()
    ours_subvols: set[int] = set()
    rw_kib: list[float] = []
    init_kib: list[float] = []
    missing = 0
    mids: list[str] = []
    for cid in sorted(cids):
        mid = node.btrfs.mount_id(cid)
        if mid is None or mid not in excl:
            missing += 1
            continue
        mids.append(mid)
        ours_subvols.update(ids[x] for x in (mid, f"{mid}-init") if x in ids)
        rw_kib.append(excl[mid] / KIB)
        init_kib.append(excl.get(f"{mid}-init", 0) / KIB)
    res.disk_kib = [a + b for a, b in zip(rw_kib, init_kib, strict=True)]
    du = node.btrfs.du_exclusive([x for m in mids[:DU_SAMPLE] for x in (m, f"{m}-init")])
    du_kib = [(du.get(m, 0) + du.get(f"{m}-init", 0)) / KIB for m in mids[:DU_SAMPLE]]

    say(f"  destroying {n} slivers")
    res.teardown_s, _ = for_each(node, names, jobs, "destroyed",
                                 lambda nm, name: nm.call("destroy", name))
    left = node.engine.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node.cfg.node_id}"})
    accounts_left = HostAccounts().ours(node.cfg.slivers_dir)
    if left or accounts_left:
        say(f"  WARNING: after destroy, {len(left)} containers and {len(accounts_left)} host "
            "accounts of this node remain (cleanup will remove them)")
    res.subvols = len(ours_subvols)
    res.pending_drops = len(ours_subvols & node.btrfs.pending_drops())
    if drain_s > 0 and res.pending_drops:
        res.drain_s = wait_for_drops(node, ours_subvols, drain_s)
    res.cleaner_cpu_s = cleaner_cpu_s() - cpu0

    tenth = max(1, n // 10)
    table(f"scale: {n} slivers, default rspec", ["metric", "value"], [
        [f"create total (acquire+bind, {jobs} concurrent)", f"{res.create_s:.1f} s"],
        ["create wall time per sliver (total / N)", f"{res.create_s / n * 1000:.0f} ms"],
        ["create rate", f"{n / res.create_s:.2f} slivers/s"],
        ["acquire+bind p50 / p90 / max", f"{ms(pct(res.create_each, 50))} / "
         f"{ms(pct(res.create_each, 90))} / {ms(max(res.create_each))} ms"],
        ["acquire+bind p50 first 10% -> last 10%", f"{ms(statistics.median(res.create_each[:tenth]))} -> "
         f"{ms(statistics.median(res.create_each[-tenth:]))} ms"],
        [f"teardown total (destroy, {jobs} concurrent)", f"{res.teardown_s:.1f} s"],
        ["teardown wall time per sliver (total / N)", f"{res.teardown_s / n * 1000:.0f} ms"],
    ])
    mem_rows: list[list[object]] = [
        ["MemAvailable drop / N", f"{res.mem_mib:.2f}",
         f"{(avail0 - avail1) / KIB:.0f} MiB total ({avail0 // KIB} -> {avail1 // KIB} MiB)"],
        ["  sliver cgroup memory.usage (median)", _median_mib(cg, "usage"), f"{len(cg)} cgroups read"],
        ["    of which page cache (memory.stat cache)", _median_mib(cg, "cache"),
         "btrfs snapshots share no page cache"],
        ["    of which mapped files (mapped_file)", _median_mib(cg, "mapped_file"),
         "binaries and libraries, one copy per sliver"],
        ["    of which anonymous (memory.stat rss)", _median_mib(cg, "rss"), ""],
        ["  containerd-shim PSS (median)",
         f"{statistics.median(shim_pss) / KIB:.2f}" if shim_pss else "n/a",
         f"{len(shim_pss)} shims, sum {sum(shim_pss) / KIB:.0f} MiB"],
    ]
    for k in rss0:
        mem_rows.append([f"  {k} RSS growth / N", f"{(rss1[k] - rss0[k]) / KIB / n:.2f}",
                         f"{rss0[k] // KIB} -> {rss1[k] // KIB} MiB"])
    table("host memory per sliver (MiB)", ["component", "per sliver", "detail"], mem_rows)
    disk_rows: list[list[object]] = [
        ["rw layer + init layer (qgroup)", len(res.disk_kib), _kib(pct(res.disk_kib, 50)),
         _kib(pct(res.disk_kib, 90)), _kib(max(res.disk_kib, default=float("nan")))],
        ["  rw layer (qgroup)", len(rw_kib), _kib(pct(rw_kib, 50)), _kib(pct(rw_kib, 90)),
         _kib(max(rw_kib, default=float("nan")))],
        ["  init layer (qgroup)", len(init_kib), _kib(pct(init_kib, 50)), _kib(pct(init_kib, 90)),
         _kib(max(init_kib, default=float("nan")))],
        [f"file data only (btrfs fi du, sample of {len(du_kib)})", len(du_kib), _kib(pct(du_kib, 50)),
         _kib(pct(du_kib, 90)), _kib(max(du_kib, default=float("nan")))],
    ]
    table("exclusive disk per sliver (KiB)", ["what", "n", "p50", "p90", "max"], disk_rows)
    if missing:
        say(f"  note: {missing} slivers' subvolumes were not found in the qgroup listing")
    drained = ("not waited for" if res.drain_s is None else
               f"all dropped {res.drain_s:.0f}s after teardown" if res.drain_s == res.drain_s
               else f"not all dropped within {drain_s:.0f}s")
    table("btrfs background cleanup (kernel btrfs-cleaner, qgroups enabled)", ["metric", "value"], [
        ["sliver subvolumes (rw + init layers)", res.subvols],
        ["still queued for the cleaner when teardown returned", res.pending_drops],
        ["drain of the queue", drained],
        ["btrfs-cleaner CPU during scale phase (all btrfs users)", f"{res.cleaner_cpu_s:.1f} s"],
    ])


def _median_mib(stats: list[dict[str, int]], key: str) -> str:
    values = [m[key] for m in stats if key in m]
    return f"{statistics.median(values) / MIB:.2f}" if values else "n/a"


def _kib(v: float) -> str:
    return "n/a" if v != v else f"{v:.0f}"


def summary(res: Results) -> None:
    def ok(value: float, target: float) -> str:
        return "n/a" if value != value else ("yes" if value <= target else "NO")

    acq = pct(res.acquire, 50) * 1000
    bind = pct(res.bind, 50) * 1000
    bare = pct(res.bare, 50) * 1000
    ratio = bind / bare if bare else float("nan")
    warm = pct(res.warm, 50) * 1000 if res.warm else float("nan")
    disk50 = pct(res.disk_kib, 50)
    disk_max = max(res.disk_kib, default=float("nan"))
    per = res.create_s / res.n if res.n else float("nan")
    bare_disk = "n/a" if res.bare_disk_kib is None else f"bare container {res.bare_disk_kib:.0f} KiB"
    rows: list[list[object]] = [
        ["acquire latency p50", f"{acq:.1f} ms", f"<= {TARGET_ACQUIRE_P50_MS:g} ms", "-",
         ok(acq, TARGET_ACQUIRE_P50_MS)],
        ["bind-to-running p50", f"{bind:.0f} ms", "-", f"bare docker {bare:.0f} ms", "-"],
        ["bind / bare docker (p50 ratio)", f"{ratio:.2f}", f"<= {TARGET_BIND_RATIO:g}", "1.00",
         ok(ratio, TARGET_BIND_RATIO)],
        ["warm bind p50 (from the pool)", f"{warm:.0f} ms", f"< {TARGET_WARM_MS:g} ms",
         f"bare docker {bare:.0f} ms", ok(warm, TARGET_WARM_MS - 1e-9)],
        ["warm bind / bare docker (p50 ratio)", f"{warm / bare:.2f}",
         f"<= {TARGET_WARM_RATIO:g}", "1.00", ok(warm / bare, TARGET_WARM_RATIO)],
        ["host memory per sliver", f"{res.mem_mib:.2f} MiB", f"<= {TARGET_MEM_MIB:g} MiB",
         f"paper {PAPER_MEM_MB:g} MB/vserver", ok(res.mem_mib, TARGET_MEM_MIB)],
        ["exclusive disk per sliver p50", f"{disk50:.0f} KiB", f"<= {TARGET_DISK_KIB:g} KiB",
         bare_disk, ok(disk50, TARGET_DISK_KIB)],
        ["exclusive disk per sliver max", f"{disk_max:.0f} KiB", f"<= {TARGET_DISK_KIB:g} KiB", "-",
         ok(disk_max, TARGET_DISK_KIB)],
        ["create one sliver (bind p50, idle NM)", f"{bind / 1000:.2f} s", "-",
         f"paper {PAPER_CREATE_S:g} s/vserver", "-"],
        [f"create {res.n} slivers ({res.jobs} concurrent)", f"{res.create_s:.1f} s", "-",
         f"{res.n / res.create_s:.2f} slivers/s" if res.create_s else "-", "-"],
        ["create wall time per sliver (total / N)", f"{per:.2f} s", "-",
         f"paper {PAPER_CREATE_S:g} s/vserver", "-"],
        [f"teardown {res.n} slivers ({res.jobs} concurrent)", f"{res.teardown_s:.1f} s", "-", "-", "-"],
        [f"node manager idle CPU with {res.n} slivers", f"{res.nm_idle_pct:.1f} %",
         f"< {TARGET_NM_IDLE_PCT:g} %", f"over {IDLE_S:g} s", ok(res.nm_idle_pct, TARGET_NM_IDLE_PCT)],
        ["subvolumes still queued for btrfs-cleaner", f"{res.pending_drops} of {res.subvols}", "-",
         "-" if res.drain_s is None else ("drain timed out" if res.drain_s != res.drain_s
                                          else f"drained in {res.drain_s:.0f} s"), "-"],
    ]
    if res.flat_bind_few and res.flat_bind_full:
        for what, few, full in (("bind", res.flat_bind_few, res.flat_bind_full),
                                ("destroy", res.flat_destroy_few, res.flat_destroy_full)):
            r = statistics.median(full) / statistics.median(few)
            rows.append([f"{what} p50 as sliver {res.n + 1} / as sliver {res.flat_few + 1}",
                         f"{r:.2f}",
                         f"<= {TARGET_FLAT_RATIO:g}",
                         f"{ms(statistics.median(few))} -> {ms(statistics.median(full))} ms",
                         ok(r, TARGET_FLAT_RATIO)])
        for what, few, full in (("bare docker create+start", res.flat_bare_few,
                                 res.flat_bare_full),
                                ("bare docker force-remove", res.flat_bare_rm_few,
                                 res.flat_bare_rm_full)):
            if few and full:
                r = statistics.median(full) / statistics.median(few)
                rows.append([f"{what} p50 beside {res.n} / beside {res.flat_few} (same rounds)",
                             f"{r:.2f}", "-",
                             f"{ms(statistics.median(few))} -> {ms(statistics.median(full))} ms",
                             "-"])
    table("summary", ["metric", "measured", "target", "paper/baseline", "ok?"], rows)
    if res.crun_error:
        say(f"crun: not measured, it does not start containers on this machine ({res.crun_error})")


# setup and cleanup ----------------------------------------------------------------------


def overcommit_for(n: int, data_root: str,
                   rspec: dict[str, Any] | None = None) -> dict[str, float]:
    """Overcommit factors (node policy) that admit ``n`` slivers of ``rspec`` (default:
    the default rspec) on this machine, never below the defaults: PlanetLab's nodes
    overcommitted so too, since a sliver's reservation is a bound, not what it holds (the
    bench reports what it holds)."""
    spec = parse_rspec(rspec or {}, time.time())
    cap = node_capacity(data_root, NodePolicy())
    need = {"cpu_overcommit": n * spec.cpu_share / cap.cpu_shares,
            "mem_overcommit": n * spec.mem_mb / cap.mem_mb,
            "disk_overcommit": n * spec.disk_mb / cap.disk_mb,
            "nproc_overcommit": n * spec.nproc / cap.max_nproc,
            "nofile_overcommit": n * spec.nofile / cap.total_nofile}
    return {k: min(100.0, max(getattr(NodePolicy(), k), math.ceil(v * 1.1)))
            for k, v in need.items()}


def start_node(n: int) -> tuple[Node, NodeConfig]:
    """Prepare the node and start a private node manager, as the ``nm`` fixture does, with
    a node policy that admits ``n`` default slivers."""
    node_cfg = NodeConfig.from_env(os.environ)
    node_cfg = node_cfg.with_(image=prepare(node_cfg, os.environ, Say(quiet=True)))
    engine = docker.DockerClient(base_url=node_cfg.engine_url, timeout=120)
    # A private node's /22 addresses 510 slivers; the bench's takes a /17 (xids to 16,383)
    # outside the ranges private nodes and testbeds use.
    cfg = private_config(node_cfg, engine, kind="bench").with_(subnet=BENCH_SUBNET)
    PRIVATE_STATE.mkdir(parents=True, exist_ok=True)
    os.chmod(PRIVATE_STATE, 0o755)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    policy = overcommit_for(n, engine.info()["DockerRootDir"])
    cfg.policy_path.write_text(yaml.safe_dump(policy))
    say("node policy for the bench: " + ", ".join(f"{k} {v:g}" for k, v in policy.items()))
    reap_orphans(node_cfg, engine, say)  # what private nodes whose owner died left
    cfg = create_network(cfg, engine)
    install_programs(cfg, lambda d: log_path(cfg, d.name), os.getpid())
    handle = NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))
    info = engine.info()
    image = engine.images.get(cfg.image or f"{REFERENCE_REPO}:latest").id
    node = Node(node_cfg=node_cfg, handle=handle, engine=engine, nm=Client(cfg.nm_sock),
                image=image, btrfs=Btrfs(Path(info["DockerRootDir"]), info.get("Driver", "btrfs")))
    return node, cfg


def cleanup(node: Node) -> bool:
    """Stop the node manager and remove what this node id created; True if nothing is left."""
    cfg = node.cfg
    t0 = time.perf_counter()
    try:
        node.handle.stop()
    finally:
        try:
            remove_programs(cfg)
        finally:
            cleanup_private(cfg, node.engine)
    left = node.engine.containers.list(all=True, filters={"label": f"{LABEL_NODE}={cfg.node_id}"})
    accounts = HostAccounts().ours(cfg.slivers_dir)
    node.engine.close()
    if left or accounts or cfg.state_dir.exists() or cfg.run_dir.exists():
        say(f"cleanup of {cfg.node_id}: INCOMPLETE: {len(left)} containers, {len(accounts)} "
            f"accounts, state dir {'present' if cfg.state_dir.exists() else 'gone'}")
        return False
    say(f"cleanup of {cfg.node_id}: no container, account or directory left (took "
        f"{time.perf_counter() - t0:.0f} s)")
    return True


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_on(node: Node, body: Callable[[], None]) -> int:
    """Run ``body`` against the bench's private node, then remove all the node made, also
    after a failure or an interrupt (a failure is shown with the node manager's last log
    lines). The exit status: 130 interrupted, 1 failed or something left, else 0."""
    status = 0
    clean = False
    try:
        node.handle.start()
        body()
    except BaseException as e:  # report, clean up, exit non-zero
        status = 130 if isinstance(e, KeyboardInterrupt) else 1
        traceback.print_exc()
        with contextlib.suppress(OSError):
            tail = node.handle.log_path.read_text(errors="replace").strip().splitlines()[-10:]
            print("node manager log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            clean = cleanup(node)
        except Exception:
            traceback.print_exc()
    return status or (0 if clean else 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--slivers", type=int, default=100, metavar="N",
                        help="slivers to create in the scale test (default 100)")
    parser.add_argument("--rounds", type=int, default=200, metavar="R",
                        help="acquire calls in the latency test (default 200)")
    parser.add_argument("--bind-rounds", type=int, default=None, metavar="R2",
                        help="rounds of bind vs bare docker (default 20, or R if smaller)")
    parser.add_argument("--jobs", type=int, default=4, metavar="J",
                        help="concurrent clients creating and destroying slivers in the scale "
                        "test (default 4; 1 creates them one after another)")
    parser.add_argument("--drain", type=float, default=0, metavar="SECONDS",
                        help="after teardown, wait up to this long for the kernel to finish "
                        "dropping the slivers' btrfs subvolumes, and report how long it took "
                        "(default 0: do not wait)")
    parser.add_argument("--flat-rounds", type=int, default=10, metavar="F",
                        help="probe binds and destroys, one at a time, with "
                        f"{FLAT_FEW} slivers on the node and again with all N (default 10)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("node_bench: needs root (it drives the node's engine and host accounts)", file=sys.stderr)
        return 2
    if not 1 <= args.slivers <= TOTAL_CPU_SHARES:
        parser.error(f"--slivers: expected 1..{TOTAL_CPU_SHARES} (each default rspec holds one "
                     "of the node's cpu shares)")
    if not 1 <= args.rounds <= TOTAL_CPU_SHARES:
        parser.error(f"--rounds: expected 1..{TOTAL_CPU_SHARES}")
    if args.jobs < 1:
        parser.error("--jobs: expected at least 1")
    if args.bind_rounds is None:
        args.bind_rounds = min(20, args.rounds)
    if args.bind_rounds < 1:
        parser.error("--bind-rounds: expected at least 1")
    signal.signal(signal.SIGTERM, on_sigterm)

    t_start = time.perf_counter()
    node, cfg = start_node(args.slivers + args.flat_rounds)
    say(f"node_bench: private node manager {cfg.node_id} (state {cfg.state_dir}, "
        f"socket {cfg.nm_sock}); {os.cpu_count()} CPUs, image {node.image[:19]}")
    res = Results()

    def body() -> None:
        bench_acquire(node, args.rounds, res)
        bench_bind(node, args.bind_rounds, res)
        bench_scale(node, args.slivers, args.jobs, args.drain, res, args.flat_rounds)
        summary(res)

    status = run_on(node, body)
    say(f"node_bench: done in {time.perf_counter() - t_start:.0f}s")
    return status


if __name__ == "__main__":
    sys.exit(main())
