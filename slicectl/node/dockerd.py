"""The node's own Docker engine: a dockerd instance on a btrfs data root.

slicectl runs a dedicated engine (socket ``/run/slicectl/docker.sock``) rather than
configuring the host's: btrfs storage gives per-sliver disk quotas, the engine socket is
root-only and never mounted into slivers, and the host's own engine (if any) is untouched.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import time
from pathlib import Path

import docker
import docker.errors
import requests

from slicectl.core.errors import EngineError
from slicectl.core.labels import LABEL_KIND, LABEL_PREFIX
from slicectl.node.config import NodeConfig
from slicectl.node.hostcmd import run

DOCKERD = "/usr/sbin/dockerd"
DEFAULT_DISK_GB = 40


class Say:
    """Progress output for long node operations: one line each, flushed."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"slicectl: {msg}", flush=True)


def data_root(cfg: NodeConfig) -> Path:
    return cfg.state_dir / "engine"


def engine_answers(cfg: NodeConfig) -> bool:
    if not cfg.engine_sock.exists():
        return False
    try:
        client = docker.DockerClient(base_url=cfg.engine_url, timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (docker.errors.DockerException, requests.RequestException, OSError):
        return False


def fs_type(path: Path) -> str:
    return run(["stat", "-f", "-c", "%T", str(path)], what=f"filesystem of {path}").stdout.strip()


# BTRFS_IOC_QUOTA_CTL = _IOWR(0x94, 40, struct btrfs_ioctl_quota_ctl_args {u64 cmd, status})
_BTRFS_IOC_QUOTA_CTL = (3 << 30) | (16 << 16) | (0x94 << 8) | 40
_QUOTA_CTL_ENABLE_SIMPLE = 4


def quota_mode(path: Path) -> str:
    """``squota`` (simple quotas), ``qgroup`` (full accounting) or ``none`` for the btrfs
    filesystem holding ``path``."""
    shown = run(["btrfs", "filesystem", "show", str(path)], what="btrfs filesystem show")
    uuid = next((ln.split("uuid:")[1].strip() for ln in shown.stdout.splitlines()
                 if "uuid:" in ln), "")
    mode = Path(f"/sys/fs/btrfs/{uuid}/qgroups/mode")
    return mode.read_text().strip() if mode.exists() else "none"


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


def ensure_btrfs(cfg: NodeConfig, disk_gb: int, say: Say) -> Path:
    """Make the engine's data root a btrfs filesystem (a loop file unless the disk is
    btrfs), with simple quotas turned on while it is still empty."""
    root = data_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if fs_type(root) != "btrfs":
        image = cfg.state_dir / "engine.btrfs"
        if not image.exists():
            say(f"creating a {disk_gb} GiB sparse btrfs file {image} for sliver root filesystems")
            with open(image, "wb") as f:
                f.truncate(disk_gb << 30)
            # Single-copy metadata (the file lives on a disk with its own redundancy) and
            # 4 KiB tree nodes: each sliver snapshot then costs ~4x less metadata.
            run(["mkfs.btrfs", "-q", "-L", "slicectl", "-m", "single", "-n", "4096", str(image)],
                what="mkfs.btrfs")
        run(["mount", "-o", "loop", str(image), str(root)], what=f"mount {image}")
        if fs_type(root) != "btrfs":
            raise EngineError(f"engine data root {root}: expected btrfs after mounting, found "
                              f"{fs_type(root)}")
    mode = quota_mode(root)
    if mode == "none" and not any(root.iterdir()):
        enable_simple_quotas(root)
    elif mode == "qgroup":
        say(f"note: {root} keeps full btrfs qgroup accounting (made before simple quotas); "
            "removing slivers costs more there")
    return root


def start_engine(cfg: NodeConfig, say: Say, disk_gb: int = DEFAULT_DISK_GB,
                 timeout_s: float = 60) -> bool:
    """Start the node's engine unless it answers already. Returns True if it was started."""
    if engine_answers(cfg):
        return False
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
        "--log-driver", "json-file", "--log-opt", "max-size=1m",
    ]
    say(f"starting the node's Docker engine (log: {log_path})")
    with open(log_path, "ab") as logf:
        subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                         start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if engine_answers(cfg):
            os.chmod(cfg.engine_sock, 0o600)
            return True
        time.sleep(0.2)
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
    raise EngineError(f"Docker engine on {cfg.engine_sock}: did not answer within {timeout_s:.0f}s; "
                      f"last log lines: {' | '.join(tail)}")


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
