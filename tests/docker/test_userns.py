"""Sliver root is not host root (issue 11): the engine remaps user namespaces, so root in a
sliver is an unprivileged host uid. A per-uid kernel limit it exhausts is not host root's,
and a file it creates is not owned by host root. Node services keep the host's namespace."""

from __future__ import annotations

import ctypes
import os
import secrets
import textwrap
from pathlib import Path

import docker

from slicectl.core.userns import SLIVER_LIMITS
from slicectl.node.dockerd import REMAP_USER, remap_root

from .conftest import NMHandle, sliver_exec, wait_for

#: Takes inotify instances as root in the sliver until refused (the sliver's user
#: namespace allows 128), then holds them.
HOG = r"""
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
fds = []
for _ in range(int(sys.argv[1])):
    fd = libc.inotify_init()
    if fd < 0:
        break
    fds.append(fd)
print(len(fds), flush=True)
open("/tmp/hog-ready", "w").write(str(len(fds)))
time.sleep(600)
"""


def host_inotify_ok() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init()
    if fd < 0:
        return False
    os.close(fd)
    return True


def test_sliver_root_is_a_remapped_host_uid(nm: NMHandle, engine: docker.DockerClient) -> None:
    info = dict(nm.call("bind", nm.slice("u"), nm.call("acquire", {})))
    pid = info["pid"]
    base = remap_root()
    assert base != 0
    uid_map = Path(f"/proc/{pid}/uid_map").read_text().split()
    assert uid_map[:2] == ["0", str(base)], uid_map
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{base}\t{base}" in status  # init runs as "root": host uid `base`
    # A file sliver root makes in its root fs is owned on the host by the remapped uid.
    name = f"/tmp/owned-{secrets.token_hex(4)}"
    assert sliver_exec(engine, info["container"], ["sh", "-c", f"touch {name} && id -u"]) \
        == (0, "0\n")
    st = os.stat(f"/proc/{pid}/root{name}")
    assert st.st_uid == base and st.st_uid != 0
    # The node's own services keep the host's user namespace.
    services = engine.containers.list(filters={"label": "org.slicectl.kind=service"})
    assert services, "the node runs its services"
    for c in services:
        assert c.attrs["HostConfig"]["UsernsMode"] == "host", c.name


def test_sliver_root_exhausting_inotify_leaves_host_root_working(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    limit = SLIVER_LIMITS["max_inotify_instances"]  # the sliver's namespace's own limit
    assert int(Path("/proc/sys/fs/inotify/max_user_instances").read_text()) > 100 * limit
    info = dict(nm.call("bind", nm.slice("hog"), nm.call("acquire", {"nofile": 4096})))
    assert host_inotify_ok()
    c = engine.containers.get(info["container"])
    c.exec_run(["python3", "-c", textwrap.dedent(HOG), str(limit + 2)], detach=True)
    wait_for(lambda: sliver_exec(engine, info["container"], ["cat", "/tmp/hog-ready"])[0] == 0,
             30, "the inotify hog to start")
    held = int(sliver_exec(engine, info["container"], ["cat", "/tmp/hog-ready"])[1])
    assert held == limit, f"sliver root got {held}; its namespace's limit is {limit}"
    # Without remapping, sliver root would be host uid 0 and this would fail with EMFILE.
    assert host_inotify_ok(), "host root's inotify was exhausted by a sliver"
    assert REMAP_USER  # the account the remapping belongs to
