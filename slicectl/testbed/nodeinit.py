"""A testbed node's first process (``python -m slicectl.testbed.nodeinit``).

It waits for its enrolment (the key PLC's admin made for it, written by ``slicectl
testbed up`` to ``/etc/slicectl/testbed``), starts the node's own engine, loads the
images the machine running the testbed saved for it, and then joins PLC exactly as a real
machine does: ``slicectl node up --plc-url URL --node-key FILE``. On SIGTERM it stops
the node's daemons and its engine, so the engine's loop file is unmounted and nothing of
the node stays on the machine. Restarted, it brings the same node back (the node
manager's database and the slivers' filesystems are in the container).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import FrameType

import docker.errors

from slicectl.core.errors import SlicectlError
from slicectl.node.config import NodeConfig, default_config
from slicectl.node.dockerd import Say, data_root, start_engine, stop_pid
from slicectl.node.engine import engine_client
from slicectl.testbed.layout import ENGINE_DEVICE

ENROL_DIR = Path("/etc/slicectl/testbed")
KEY_FILE = ENROL_DIR / "node.key"
CA_FILE = ENROL_DIR / "plc.crt"
IMAGES_TAR = Path("/testbed/images.tar")
#: Present once the node is up (the healthcheck and ``testbed status`` read it).
READY = Path("/run/slicectl/testbed-ready")
ENGINE_STOP_S = 10
JOIN_TRIES, JOIN_PAUSE_S = 5, 3


def tar_tags(tar: Path) -> list[str]:
    """The image tags a ``docker save`` tar holds (from its manifest)."""
    with tarfile.open(tar) as t:
        member = t.extractfile("manifest.json")
        if member is None:
            return []
        return [tag for entry in json.load(member) for tag in entry.get("RepoTags") or []]


def load_images(engine_url: str, tar: Path, say: Say) -> None:
    """``docker load`` of ``tar`` unless the engine has every tag in it."""
    client = engine_client(engine_url)
    try:
        missing = []
        for tag in tar_tags(tar):
            try:
                client.images.get(tag)
            except docker.errors.ImageNotFound:
                missing.append(tag)
        if not missing:
            return
        say(f"loading {len(missing)} image(s) from {tar}")
        started = time.monotonic()
        with tar.open("rb") as f:
            client.images.load(f)
        say(f"images loaded in {time.monotonic() - started:.1f}s")
    finally:
        client.close()


_MS_REMOUNT, _MNT_DETACH = 0x20, 2


def _mount(source: str, target: str, fstype: str, flags: int) -> None:
    """mount(2) itself: util-linux's mount refuses in a container without every
    capability ("must be superuser") where the system call works."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        err = ctypes.get_errno()
        raise SlicectlError(f"mount {source or '(remount)'} on {target}: {os.strerror(err)}")


def over_mounts(mountinfo: str) -> list[str]:
    """The mount points that cover parts of /proc or /sys/firmware, deepest first."""
    points = [ln.split()[4] for ln in mountinfo.splitlines() if len(ln.split()) > 4]
    ours = [p for p in points if p.startswith("/proc/") or p.startswith("/sys/firmware")]
    return sorted(set(ours), key=lambda p: (-p.count("/"), p))


def mount_engine_disk(cfg: NodeConfig, say: Say) -> None:
    """/proc and /sys as a machine has them, and the engine's btrfs from the block
    device the machine running the testbed made for this node.

    The container engine masks parts of /proc and /sys (files under /dev/null, read-only
    /proc/sys); the kernel then refuses a fresh proc or sysfs in a user namespace (a
    sliver's) as revealing more than its parent sees. Removing the masks shows the node's
    slivers nothing: their own mounts cover them.
    """
    for point in over_mounts(Path("/proc/self/mountinfo").read_text()):
        ctypes.CDLL(None, use_errno=True).umount2(point.encode(), _MNT_DETACH)
    _mount("", "/sys", "", _MS_REMOUNT)
    root = data_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    if os.path.ismount(root):
        return
    if not Path(ENGINE_DEVICE).exists():
        raise SlicectlError(f"{ENGINE_DEVICE}: expected the engine's disk (compose devices), "
                            "found none; start the node with `slicectl testbed up`")
    _mount(ENGINE_DEVICE, str(root), "btrfs", 0)
    say(f"engine disk {ENGINE_DEVICE} mounted on {root}")


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, check=False)
    if proc.returncode:
        raise SlicectlError(f"{' '.join(argv)}: exit status {proc.returncode}")


def stop(say: Say) -> None:
    """The node's daemons, then its engine (slivers stop with it), then its data root."""
    cfg = default_config()
    subprocess.run([sys.executable, "-m", "slicectl.cli", "node", "down"], check=False)
    pidfile = cfg.run_dir / "dockerd.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text().split()[0])
        # live-restore keeps the slivers running while it stops, and it may take long
        # over that: what is left ends with this PID namespace, like a machine's power-off
        stop_pid(pid, ENGINE_STOP_S, kill_after=True)
    ctypes.CDLL(None, use_errno=True).umount2(str(data_root(cfg)).encode(), _MNT_DETACH)
    say("node stopped")


def main() -> int:
    say = Say()
    stopping = False

    def on_term(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    url = os.environ.get("TESTBED_PLC_URL", "")
    waited = 0.0
    while not KEY_FILE.exists():
        if stopping:
            return 0
        if waited % 30 == 0:
            say(f"waiting for enrolment: {KEY_FILE} (slicectl testbed up writes it)")
        time.sleep(0.5)
        waited += 0.5
    cfg = default_config()
    try:
        mount_engine_disk(cfg, say)
        start_engine(cfg, say)
        load_images(cfg.engine_url, IMAGES_TAR, say)
        for attempt in range(1, JOIN_TRIES + 1):  # PLC may be busy or not reachable yet
            try:
                _run([sys.executable, "-m", "slicectl.cli", "node", "up", "--no-demo",
                      "--plc-url", url, "--node-key", str(KEY_FILE), "--cafile", str(CA_FILE)])
                break
            except SlicectlError as e:
                if attempt == JOIN_TRIES or stopping:
                    raise
                say(f"try {attempt} of {JOIN_TRIES} failed ({e}); again in {JOIN_PAUSE_S}s")
                time.sleep(JOIN_PAUSE_S)
    except (SlicectlError, OSError) as e:
        say(f"node failed to come up: {e}")
        stop(say)
        return 1
    READY.write_text(f"{time.time():.0f}\n")
    say("node ready")
    while not stopping:
        time.sleep(0.5)
    READY.unlink(missing_ok=True)
    stop(say)
    return 0


if __name__ == "__main__":
    sys.exit(main())
