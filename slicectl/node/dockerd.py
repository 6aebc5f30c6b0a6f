"""The node's own Docker engine: a dockerd instance on a btrfs data root.

slicectl runs a dedicated engine (socket ``/run/slicectl/docker.sock``) rather than
configuring the host's: btrfs storage gives per-sliver disk quotas, the engine socket is
root-only and never mounted into slivers, and the host's own engine (if any) is untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import signal
import struct
import subprocess
import time
from pathlib import Path

import docker
import docker.errors
import requests

from slicectl.core.containerplan import SLIVER_IDS
from slicectl.core.errors import EngineError
from slicectl.core.labels import LABEL_KIND, LABEL_PREFIX
from slicectl.node.config import NodeConfig
from slicectl.node.hostcmd import run

DOCKERD = "/usr/sbin/dockerd"
DEFAULT_DISK_GB = 40

#: The account whose subordinate ids slivers' user namespaces map to (engine-wide
#: ``userns-remap``): root in a sliver is host uid REMAP_BASE, never host root.
REMAP_USER = "slicectl-remap"
#: Far above what useradd hands out (SUB_UID_MIN..SUB_UID_MAX, 100000..600100000).
REMAP_BASE = 700_000_000
REMAP_COUNT = SLIVER_IDS
SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))


def subid_entry(text: str, user: str) -> tuple[int, int] | None:
    """(first id, count) of ``user``'s line in an /etc/subuid-style text, or None."""
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[0] == user and fields[1].isdigit() and fields[2].isdigit():
            return int(fields[1]), int(fields[2])
    return None


def ensure_remap_user() -> int:
    """Make the remap account and its subordinate ids (idempotent); return the host uid
    that root in a sliver is."""
    try:
        pwd.getpwnam(REMAP_USER)
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", "--comment", "slicectl sliver user namespaces",
             REMAP_USER], what=f"account {REMAP_USER}")
    base = REMAP_BASE
    for path in SUBID_FILES:
        text = path.read_text() if path.exists() else ""
        entry = subid_entry(text, REMAP_USER)
        if entry is None:
            with path.open("a") as f:
                f.write(f"{'' if not text or text.endswith(chr(10)) else chr(10)}"
                        f"{REMAP_USER}:{REMAP_BASE}:{REMAP_COUNT}\n")
        elif path.name == "subuid":
            base = entry[0]
    return base


def remap_root() -> int:
    """The host uid of root in a sliver (from /etc/subuid).

    Raises:
        EngineError: the remap account has no subordinate ids (run ``slicectl node up``).
    """
    text = SUBID_FILES[0].read_text() if SUBID_FILES[0].exists() else ""
    entry = subid_entry(text, REMAP_USER)
    if entry is None:
        raise EngineError(f"{SUBID_FILES[0]}: expected a line for {REMAP_USER}, found none; "
                          "run `slicectl node up`")
    return entry[0]


def open_to_sliver_root(path: Path) -> None:
    """Let root in a sliver (the remapped uid, as owner) and the node's services (host
    root without capabilities, by group 0) connect to the socket at ``path``; nobody else
    but host root can. Which slivers see the socket at all is their mounts' business."""
    os.chown(path, remap_root(), 0)
    os.chmod(path, 0o660)


def engine_remaps(cfg: NodeConfig) -> bool:
    """Whether the running engine maps containers' users (``userns-remap``)."""
    client = docker.DockerClient(base_url=cfg.engine_url, timeout=10)
    try:
        return any("name=userns" in o for o in client.info().get("SecurityOptions") or [])
    finally:
        client.close()


def restart_for_remap(cfg: NodeConfig, say: Say, timeout_s: float = 60) -> None:
    """Stop an engine of ours that runs without user-namespace remapping, after removing
    its containers (slivers and services are made again on the remapping engine: the
    node manager recreates slivers from its database)."""
    say("the node's engine runs without user-namespace remapping; restarting it with "
        "remapping (sliver containers are recreated)")
    client = docker.DockerClient(base_url=cfg.engine_url, timeout=120)
    try:
        for c in client.containers.list(all=True):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
        client.images.prune(filters={"dangling": False})
    finally:
        client.close()
    pid = int((cfg.run_dir / "dockerd.pid").read_text().split()[0])
    if not stop_pid(pid, timeout_s):
        raise EngineError(f"Docker engine pid {pid}: did not stop within {timeout_s:.0f}s of "
                          "SIGTERM; stop it and run `slicectl node up` again")


def stop_pid(pid: int, timeout_s: float, *, kill_after: bool = False) -> bool:
    """SIGTERM a process we started (by its pid, never by name) and wait up to
    ``timeout_s`` for it to go; then SIGKILL it if ``kill_after``. True if it is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists() and kill_after:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return not Path(f"/proc/{pid}").exists()


def make_btrfs_file(path: Path, size_gb: int) -> None:
    """A sparse file of ``size_gb`` GiB holding a new btrfs for sliver root filesystems:
    single-copy metadata (the file lives on a disk with its own redundancy) and 4 KiB
    tree nodes, so each sliver snapshot costs ~4x less metadata. Made under a temporary
    name, so an interrupted mkfs leaves no file that looks finished."""
    part = path.with_suffix(".part")
    with open(part, "wb") as f:
        f.truncate(size_gb << 30)
    run(["mkfs.btrfs", "-q", "-L", "slicectl", "-m", "single", "-n", "4096", str(part)],
        what=f"mkfs.btrfs {part}")
    part.rename(path)


#: Debian's crun (an OCI runtime in C), registered with the engine when installed.
CRUN = "/usr/bin/crun"


class Say:
    """Progress output for long node operations: one line each, flushed."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"slicectl: {msg}", flush=True)


def data_root(cfg: NodeConfig) -> Path:
    return cfg.state_dir / "engine"


def socket_answers(sock: Path) -> bool:
    """Whether a Docker engine answers on the unix socket ``sock``."""
    if not sock.exists():
        return False
    try:
        client = docker.DockerClient(base_url=f"unix://{sock}", timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException, OSError):
        return False


def engine_answers(cfg: NodeConfig) -> bool:
    return socket_answers(cfg.engine_sock)


def wait_for_engine(sock: Path, log_path: Path, timeout_s: float, what: str) -> None:
    """Until the engine just started answers on ``sock`` (then only root may use it).

    Raises:
        EngineError: not within ``timeout_s``; with the last lines of its log.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if socket_answers(sock):
            os.chmod(sock, 0o600)
            return
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise EngineError(f"{what} on {sock}: did not answer within {timeout_s:.0f}s; "
                      f"last log lines: {' | '.join(tail)}")


def fs_type(path: Path) -> str:
    return run(["stat", "-f", "-c", "%T", str(path)], what=f"filesystem of {path}").stdout.strip()


# BTRFS_IOC_QUOTA_CTL = _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args {u64 cmd, status})
_BTRFS_IOC_QUOTA_CTL = (3 << 30) | (16 << 16) | (0x94 << 8) | 40
_QUOTA_CTL_ENABLE_SIMPLE = 4


def quota_mode(path: Path) -> str:
    """``squota`` (simple quotas), ``qgroup`` (full accounting) or ``none`` for the btrfs
    filesystem holding ``path`` (the engine's root is a subdirectory of it when it remaps
    user namespaces)."""
    d = _qgroups_dir(path)
    mode = d / "mode" if d is not None else None
    return mode.read_text().strip() if mode is not None and mode.exists() else "none"


#: btrfs's deepest tree level: dropping a subvolume of any height keeps qgroups exact.
_BTRFS_MAX_LEVEL = 8


def _qgroups_dir(path: Path) -> Path | None:
    mount = path.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    shown = run(["btrfs", "filesystem", "show", str(mount)], what="btrfs filesystem show")
    uuid = next((ln.split("uuid:")[1].strip() for ln in shown.stdout.splitlines()
                 if "uuid:" in ln), "")
    d = Path(f"/sys/fs/btrfs/{uuid}/qgroups")
    return d if uuid and d.is_dir() else None


def keep_quotas_exact(path: Path, say: Say) -> None:
    """Disk limits hold only while btrfs's qgroup numbers are exact. The kernel stops
    counting (marks them inconsistent, and no limit holds) when a subvolume taller than
    ``drop_subtree_threshold`` is dropped, which removing slivers does: raise it to the
    deepest level, and rescan (waiting) if the numbers are already inconsistent."""
    d = _qgroups_dir(path)
    if d is None:
        return
    thres = d / "drop_subtree_threshold"
    with contextlib.suppress(OSError):
        if int(thres.read_text()) < _BTRFS_MAX_LEVEL:
            thres.write_text(str(_BTRFS_MAX_LEVEL))
    inconsistent = d / "inconsistent"
    if inconsistent.exists() and inconsistent.read_text().strip() == "1":
        say(f"btrfs quotas of {path} are inconsistent (no disk limit holds): rescanning")
        run(["btrfs", "quota", "rescan", "-w", str(path)], what="btrfs quota rescan")


def enable_simple_quotas(path: Path) -> None:
    """Turn on btrfs simple quotas (kernel >= 6.7; Debian's btrfs-progs 6.2 cannot).

    A sliver's snapshot is then charged only for what it writes, not for the image it
    shares, and deleting a snapshot needs no backref walk: with full qgroup accounting
    the cleaner spent a core for many minutes after a few hundred slivers went away.
    Docker's btrfs driver later asks for (full) quotas itself; with quotas already on,
    that is a no-op.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _BTRFS_IOC_QUOTA_CTL,
                    bytearray(struct.pack("QQ", _QUOTA_CTL_ENABLE_SIMPLE, 0)))
    except OSError as e:
        raise EngineError(f"btrfs {path}: cannot enable simple quotas ({e.strerror}); is the "
                          "kernel older than 6.7?") from e
    finally:
        os.close(fd)


def atime_mounts(mountinfo: str, root: Path) -> list[str]:
    """Mount points at or below ``root`` (from ``/proc/self/mountinfo`` text) that still
    update access times: every sliver root is a snapshot on these mounts, and an access
    time written on a sliver's first read of a file copies that file's metadata into the
    sliver (about 100 KiB of each sliver's exclusive disk before anything else is written).
    Mount points with spaces come escaped (``\\040``) as the kernel writes them."""
    prefix = str(root).rstrip("/") + "/"
    found: list[str] = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        point = fields[4].replace("\\040", " ")
        if point != str(root) and not point.startswith(prefix):
            continue
        if "noatime" not in fields[5].split(","):
            found.append(point)
    return found


def keep_noatime(root: Path, say: Say) -> None:
    """Give every mount at or below the engine's data root ``noatime`` (a per-mount flag:
    the filesystem and the engine are not touched, running slivers keep running)."""
    for point in atime_mounts(Path("/proc/self/mountinfo").read_text(), root):
        run(["mount", "-o", "remount,bind,noatime", point], what=f"remount {point} noatime")
        say(f"{point}: remounted noatime (access times would copy metadata into slivers)")


def ensure_btrfs(cfg: NodeConfig, disk_gb: int, say: Say) -> Path:
    """Make the engine's data root a btrfs filesystem (a loop file unless the disk is
    btrfs), with simple quotas turned on while it is still empty."""
    root = data_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    # A btrfs of the engine's own (a disk or our loop file mounted right there), never
    # one it merely sits in: inside a container (a testbed node) that is the outer
    # engine's filesystem, whose quotas the inner engine would switch off at its shutdown.
    if not (fs_type(root) == "btrfs" and os.path.ismount(root)):
        image = cfg.state_dir / "engine.btrfs"
        if not image.exists():
            say(f"creating a {disk_gb} GiB sparse btrfs file {image} for sliver root filesystems")
            make_btrfs_file(image, disk_gb)
        run(["mount", "-o", "loop,noatime", str(image), str(root)], what=f"mount {image}")
        if fs_type(root) != "btrfs":
            raise EngineError(f"engine data root {root}: expected btrfs after mounting, found "
                              f"{fs_type(root)}")
    mode = quota_mode(root)
    if mode == "none":
        # Empty, or an engine's graceful shutdown switched quotas off (Docker's btrfs
        # driver does so on cleanup): without them no disk limit holds. On a filesystem
        # with data, what was written before is not charged to anyone.
        if any(root.iterdir()):
            say(f"btrfs quotas of {root} were off (no disk limit held): turning them on")
        enable_simple_quotas(root)
    elif mode == "qgroup":
        say(f"note: {root} keeps full btrfs qgroup accounting (made before simple quotas); "
            "removing slivers costs more there")
    keep_quotas_exact(root, say)
    keep_noatime(root, say)
    return root


def start_engine(cfg: NodeConfig, say: Say, disk_gb: int = DEFAULT_DISK_GB,
                 timeout_s: float = 60) -> bool:
    """Start the node's engine unless it answers already (with user-namespace remapping;
    an engine of ours without it is restarted). Returns True if it was started."""
    ensure_remap_user()
    root = data_root(cfg)
    if root.exists() and fs_type(root) == "btrfs":
        keep_quotas_exact(root, say)
        keep_noatime(root, say)
    if engine_answers(cfg):
        if engine_remaps(cfg):
            return False
        restart_for_remap(cfg, say)
    if not Path(DOCKERD).exists():
        raise EngineError(f"{DOCKERD}: not installed; run scripts/install-host.sh")
    root = ensure_btrfs(cfg, disk_gb, say)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path("/var/log/slicectl")
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "dockerd.log"
    argv = [
        DOCKERD,
        "--host", cfg.engine_url,
        "--data-root", str(root),
        "--exec-root", str(run_dir / "engine"),
        "--pidfile", str(run_dir / "dockerd.pid"),
        "--storage-driver", "btrfs",
        "--bridge", "none",
        "--live-restore",
        "--userland-proxy=false",
        "--userns-remap", REMAP_USER,
        "--log-driver", "json-file", "--log-opt", "max-size=1m",
        # crun beside the default runc, for bench/node_bench.py to measure both
        *(["--add-runtime", f"crun={CRUN}"] if Path(CRUN).exists() else []),
    ]
    say(f"starting the node's Docker engine (log: {log_path})")
    with open(log_path, "ab") as logf:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                         start_new_session=True, close_fds=True)
    wait_for_engine(cfg.engine_sock, log_path, timeout_s, "Docker engine")
    return True


def ensure_network(client: docker.DockerClient, name: str, subnet: str, bridge: str) -> None:
    """The node bridge slivers attach to, masqueraded to the node's address.

    Its Linux bridge has a name we choose (``slicectl0``); sliver addresses are fixed
    (from their xid, upper half of the subnet), the engine's own allocations take the
    lower half.
    """
    try:
        client.networks.get(name)
        return
    except docker.errors.NotFound:
        pass
    ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)])
    client.networks.create(
        name, driver="bridge", ipam=ipam, check_duplicate=True,
        options={"com.docker.network.bridge.name": bridge,
                 "com.docker.network.bridge.enable_ip_masquerade": "true",
                 "com.docker.network.bridge.enable_icc": "true"},
        labels={LABEL_KIND: "network", f"{LABEL_PREFIX}.owner": "slicectl"},
    )
