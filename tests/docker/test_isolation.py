"""Isolation is the product: limits and rights read back from the kernel, forbidden actions
that fail, slivers that cannot see each other, and antagonists (disk, fork bomb, memory, CPU)
that hurt only themselves. See DESIGN.md, principle 3 and the vserver root row."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import docker

from slicectl.node.dockerd import quota_mode, remap_root

from .conftest import NMHandle, sliver_exec, wait_for

CGROUP = Path("/sys/fs/cgroup")
MIB = 1 << 20

#: Capability bits (linux/capability.h) a sliver's root must not have, and some it keeps.
BANNED_CAPS = {"SYS_ADMIN": 21, "NET_ADMIN": 12, "NET_RAW": 13, "SYS_MODULE": 16,
               "SYS_RAWIO": 17, "SYS_BOOT": 22, "SYS_TIME": 25, "SYS_PTRACE": 19, "MKNOD": 27}
KEPT_CAPS = {"CHOWN": 0, "SETUID": 7}


# helpers ------------------------------------------------------------------------------------

def make_sliver(nm: NMHandle, name: str, **rspec: Any) -> dict[str, Any]:
    """Acquire an rcap for ``rspec`` and bind it to a new slice; return the sliver's info."""
    info: dict[str, Any] = nm.call("bind", nm.slice(name), nm.call("acquire", rspec))
    assert info["state"] == "running", info
    return info


def cg_path(ctrl: str, container_id: str, fname: str) -> Path:
    return CGROUP / ctrl / "slicectl" / container_id / fname


def cg_int(ctrl: str, container_id: str, fname: str) -> int:
    return int(cg_path(ctrl, container_id, fname).read_text().strip())


def cg_procs(ctrl: str, container_id: str) -> list[int]:
    return [int(p) for p in cg_path(ctrl, container_id, "cgroup.procs").read_text().split()]


def py(engine: docker.DockerClient, container: str, code: str, user: str = "root") -> tuple[int, str]:
    """Run a python3 snippet inside a sliver; return (exit status, output)."""
    return sliver_exec(engine, container, ["python3", "-c", textwrap.dedent(code)], user=user)


def py_json(engine: docker.DockerClient, container: str, code: str, user: str = "root") -> Any:
    """Run a snippet that prints one JSON document as its last line; return it."""
    status, out = py(engine, container, code, user)
    assert status == 0, out
    return json.loads(out.strip().splitlines()[-1])


def sh(engine: docker.DockerClient, container: str, script: str, user: str = "root") -> tuple[int, str]:
    return sliver_exec(engine, container, ["sh", "-c", script], user=user)


def detach(engine: docker.DockerClient, container: str, script: str) -> None:
    """Start ``script`` in the background inside a sliver (the sliver's destroy ends it)."""
    engine.containers.get(container).exec_run(["sh", "-c", script], detach=True)




def cmdlines(pids: list[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        except OSError:
            continue
    return out


def wait_idle(container_id: str) -> None:
    """Wait until the sliver's init script has finished and only ``sleep infinity`` is left."""
    wait_for(lambda: "sleep infinity" in cmdlines(cg_procs("pids", container_id))
             and len(cg_procs("pids", container_id)) == 2, 30, "the sliver to settle")


def cpu_seconds(container_id: str) -> float:
    return cg_int("cpuacct", container_id, "cpuacct.usage") / 1e9


def caps(status_text: str) -> dict[str, int]:
    """The Cap* masks of a /proc/<pid>/status text."""
    return {m.group(1): int(m.group(2), 16)
            for m in re.finditer(r"^(Cap\w+):\s*([0-9a-f]+)$", status_text, re.M)}


def status_uid(status_text: str) -> int:
    m = re.search(r"^Uid:\s*(\d+)", status_text, re.M)
    assert m, status_text
    return int(m.group(1))


def assert_root_caps(mask: dict[str, int], where: str) -> None:
    for key in ("CapEff", "CapBnd", "CapPrm"):
        for cap, bit in BANNED_CAPS.items():
            assert not mask[key] >> bit & 1, f"{where}: {key} has CAP_{cap}"
    for key in ("CapEff", "CapBnd"):
        for cap, bit in KEPT_CAPS.items():
            assert mask[key] >> bit & 1, f"{where}: {key} lacks CAP_{cap}"


# 1. limits read back -------------------------------------------------------------------------

def test_limits_read_back_from_the_kernel(nm: NMHandle, engine: docker.DockerClient) -> None:
    ncpus = os.cpu_count() or 1
    capped = make_sliver(nm, "capped", cpu_share=50, cpu_capped=True, mem_mb=96, nproc=100,
                         nofile=2048)
    free = make_sliver(nm, "free", cpu_share=30)
    cid, fid = capped["container_id"], free["container_id"]

    assert cg_int("cpu", cid, "cpu.shares") == 50 * 256
    assert cg_int("cpu", fid, "cpu.shares") == 30 * 256
    period, quota = cg_int("cpu", cid, "cpu.cfs_period_us"), cg_int("cpu", cid, "cpu.cfs_quota_us")
    assert period == 100_000
    assert quota * 1000 == period * 50 * ncpus  # 50/1000 of all the node's CPUs
    assert cg_int("cpu", fid, "cpu.cfs_quota_us") == -1  # uncapped: no quota

    assert cg_int("memory", cid, "memory.limit_in_bytes") == 96 * MIB
    assert cg_int("memory", cid, "memory.memsw.limit_in_bytes") == 96 * MIB  # no swap on top
    assert cg_int("memory", fid, "memory.limit_in_bytes") == 512 * MIB  # the rspec default
    assert cg_int("pids", cid, "pids.max") == 100
    assert cg_int("pids", fid, "pids.max") == 512

    # nofile: every process of the sliver, init and exec'd ones, as the kernel holds it.
    assert sh(engine, capped["container"], "ulimit -Sn; ulimit -Hn") == (0, "2048\n2048\n")
    detach(engine, capped["container"], "exec sleep 4321")
    wait_for(lambda: "sleep 4321" in cmdlines(cg_procs("pids", cid)), 30, "sleep in the sliver")
    pids = cg_procs("pids", cid)
    assert capped["pid"] in pids and len(pids) >= 3
    for pid in pids:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"^Max open files\s+2048\s+2048\s+files", limits, re.M), (pid, limits)
    limits = Path(f"/proc/{free['pid']}/limits").read_text()
    assert re.search(r"^Max open files\s+1024\s+1024\s+files", limits, re.M), limits


# 2. capabilities ----------------------------------------------------------------------------

def test_root_in_a_sliver_lacks_dangerous_capabilities(nm: NMHandle,
                                                       engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "caps")
    # The sliver's init, seen from the host...
    host_view = Path(f"/proc/{info['pid']}/status").read_text()
    assert info["container_id"] in Path(f"/proc/{info['pid']}/cgroup").read_text()
    assert status_uid(host_view) == remap_root() != 0  # root inside, not host root
    assert_root_caps(caps(host_view), "sliver init")
    # ...and a root process started inside it.
    status, inside = sliver_exec(engine, info["container"], ["cat", "/proc/self/status"])
    assert status == 0, inside
    assert status_uid(inside) == 0
    mask = caps(inside)
    assert_root_caps(mask, "root in the sliver")
    assert mask["CapEff"] == mask["CapBnd"]  # root has all it may have, and no more
    # The slice user has no effective capabilities at all.
    status, user = sliver_exec(engine, info["container"], ["cat", "/proc/self/status"],
                               user=str(info["uid"]))
    assert status == 0, user
    assert status_uid(user) == info["uid"]
    assert caps(user)["CapEff"] == 0


# 3. forbidden actions -----------------------------------------------------------------------

FORBIDDEN = r"""
import ctypes, errno, json, os, socket, stat, time

libc = ctypes.CDLL(None, use_errno=True)
SYS_init_module, SYS_finit_module = 175, 313  # x86_64


def outcome(fn):
    try:
        ctypes.set_errno(0)
        r = fn()
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    if isinstance(r, int) and r == -1:
        return errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
    if isinstance(r, socket.socket):
        r.close()
    return "ok"


class timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def settime():
    ts = timespec()  # set the clock to what it already says: harmless if it ever succeeded
    assert libc.clock_gettime(0, ctypes.byref(ts)) == 0
    return libc.clock_settime(0, ctypes.byref(ts))


def finit():
    fd = os.open("/bin/true", os.O_RDONLY)
    try:
        return libc.syscall(SYS_finit_module, fd, b"", 0)
    finally:
        os.close(fd)


os.makedirs("/mnt/x", exist_ok=True)
res = {
    "udp_socket": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
    "mount": outcome(lambda: libc.mount(b"none", b"/mnt/x", b"tmpfs", 0, None)),
    "finit_module": outcome(finit),
    "init_module": outcome(lambda: libc.syscall(SYS_init_module, None, 0, b"")),
    "raw_socket": outcome(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW,
                                                socket.IPPROTO_ICMP)),
    "packet_socket": outcome(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                                   socket.htons(3))),
    "reboot": outcome(lambda: libc.reboot(0)),  # LINUX_REBOOT_CMD_CAD_OFF
    "clock_settime": outcome(settime),
    "mknod": outcome(lambda: os.mknod("/tmp/null2", 0o600 | stat.S_IFCHR, os.makedev(1, 3))),
    "sethostname": outcome(lambda: libc.sethostname(b"evil", 4)),
    "ioperm": outcome(lambda: libc.ioperm(0x80, 1, 1)),
    "mounted": any(line.split()[1] == "/mnt/x" for line in open("/proc/mounts")),
    "null2_exists": os.path.exists("/tmp/null2"),
}
print(json.dumps(res))
"""


def test_forbidden_actions_fail_for_sliver_root(nm: NMHandle, engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "deny")
    name = info["container"]
    res = py_json(engine, name, FORBIDDEN)
    assert res["udp_socket"] == "ok"  # the harness itself works
    for action in ("mount", "finit_module", "init_module", "raw_socket", "packet_socket",
                   "reboot", "clock_settime", "mknod", "sethostname", "ioperm"):
        assert res[action] == "EPERM", (action, res)
    assert res["mounted"] is False and res["null2_exists"] is False
    # The same through the tools an admin would reach for.
    now = int(time.time())
    for cmd in ("mount -t tmpfs none /mnt", f"date -s @{now}", "mknod /tmp/null3 c 1 3",
                "ip link add slicectl0 type dummy", "ip link set lo mtu 1280"):
        status, out = sh(engine, name, cmd + " 2>&1")
        assert status != 0, (cmd, out)
        assert re.search(r"not permitted|permission denied", out, re.I), (cmd, out)
    # The sliver is still running afterwards (reboot did nothing).
    assert engine.containers.get(name).status == "running"
    assert sh(engine, name, "echo alive") == (0, "alive\n")


# 4. slivers cannot see each other, nor the engine ----------------------------------------------

NM_CLIENT = r"""
import http.client, json, socket, sys, xmlrpc.client

class Unix(http.client.HTTPConnection):
    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(60)
        s.connect("/run/slicectl/nm/nm.sock")
        self.sock = s

def call(method, *args):
    try:
        conn = Unix("localhost", timeout=60)
        conn.request("POST", "/RPC2", xmlrpc.client.dumps(args, method, allow_none=True),
                     {"Content-Type": "text/xml"})
        body = conn.getresponse().read().decode()
    except OSError as e:
        return {"oserror": type(e).__name__}
    try:
        return {"raw": body, "value": xmlrpc.client.loads(body)[0][0]}
    except xmlrpc.client.Fault as f:
        return {"raw": body, "fault": f.faultString}

print(json.dumps({"status": call("status"), "destroy": call("destroy", sys.argv[1])},
                 default=str))
"""


def test_slivers_cannot_see_each_other_nor_the_engine(nm: NMHandle,
                                                      engine: docker.DockerClient) -> None:
    a = make_sliver(nm, "a")
    b = make_sliver(nm, "b")
    a_name, b_name = a["container"], b["container"]
    # A process started in A is visible in A (and on the host), not in B.
    detach(engine, a_name, "exec sleep 12345")
    wait_for(lambda: "sleep 12345" in sh(engine, a_name, "ps -eo args")[1], 30, "sleep in A")
    assert "sleep 12345" in cmdlines(cg_procs("pids", a["container_id"]))
    status, b_ps = sh(engine, b_name, "ps -eo pid,args")
    assert status == 0 and "PID" in b_ps
    assert "12345" not in b_ps
    assert len(b_ps.splitlines()) < 8, b_ps  # only B's own few processes
    # A file written in A's /tmp is not in B's.
    marker = f"/tmp/marker-{secrets.token_hex(4)}"
    assert sh(engine, a_name, f"echo secret > {marker} && cat {marker}") == (0, "secret\n")
    assert sh(engine, b_name, f"test -e {marker}")[0] == 1
    assert sh(engine, b_name, "ls /tmp")[1].count("marker-") == 0
    # Neither reaches the engine; unprivileged slivers have no NM socket either (the
    # image has the empty mount point, so a first start writes nothing there).
    for name in (a_name, b_name):
        for path in ("/run/slicectl/docker.sock", "/var/run/docker.sock", "/run/docker.sock",
                     "/run/slicectl/nm/nm.sock"):
            status, out = sh(engine, name, f"test -e {path}")
            assert status == 1, (name, path, out)
        assert sh(engine, name, "ls -A /run/slicectl/nm") == (0, "")
        assert sh(engine, name, "test -d /etc/slicectl")[0] == 0  # the probe itself works


def test_privileged_sliver_reaches_the_nm_as_itself(nm: NMHandle,
                                                    engine: docker.DockerClient) -> None:
    other = make_sliver(nm, "other")
    priv = make_sliver(nm, "priv", nm_privileged=True)
    assert sh(engine, priv["container"], "test -S /run/slicectl/nm/nm.sock")[0] == 0
    code = textwrap.dedent(NM_CLIENT)
    status, out = sliver_exec(engine, priv["container"], ["python3", "-c", code, other["name"]])
    assert status == 0, out
    res = json.loads(out.strip().splitlines()[-1])
    # The NM identified the caller by its peer credentials: the sliver's slice, not root.
    assert f"slice:{priv['name']}" in res["status"]["raw"]
    assert res["status"]["value"]["caller"] == f"slice:{priv['name']}"
    assert res["status"]["value"]["node_id"] == nm.cfg.node_id
    # So it may not manage a sliver it did not create (root created both).
    assert "fault" in res["destroy"], res["destroy"]
    assert "did not create it" in res["destroy"]["fault"]
    assert nm.call("get_sliver", other["name"])["state"] == "running"
    # The socket is root's: the slice user inside cannot open it.
    status, out = sliver_exec(engine, priv["container"], ["python3", "-c", code, other["name"]],
                              user=str(priv["uid"]))
    assert status == 0, out
    assert json.loads(out.strip().splitlines()[-1])["status"] == {"oserror": "PermissionError"}


# 5. root may install software in its own root fs ----------------------------------------------

BUILD_DEB = r"""
set -e
rm -rf /tmp/pkg && mkdir -p /tmp/pkg/DEBIAN /tmp/pkg/usr/local/bin
chmod 0755 /tmp/pkg /tmp/pkg/DEBIAN
cat > /tmp/pkg/DEBIAN/control <<EOF
Package: slicectl-hello
Version: 1.0
Architecture: all
Maintainer: Test <t@example.org>
Description: slicectl isolation test package
EOF
printf '#!/bin/sh\necho hello from a sliver package\n' > /tmp/pkg/usr/local/bin/slicectl-hello
chmod 0755 /tmp/pkg/usr/local/bin/slicectl-hello
dpkg-deb --root-owner-group --build /tmp/pkg /tmp/hello.deb >/dev/null
dpkg -i /tmp/hello.deb >/dev/null
dpkg-query -W -f='${Status}\n' slicectl-hello
slicectl-hello
"""


def test_root_installs_packages_but_slice_user_cannot_write_usr(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "pkg")
    other = make_sliver(nm, "nopkg")
    name = info["container"]
    status, out = sh(engine, name, BUILD_DEB + " 2>&1")
    assert status == 0, out
    assert out.splitlines()[-2:] == ["install ok installed", "hello from a sliver package"]
    assert sh(engine, name, "stat -c %U:%a /usr/local/bin/slicectl-hello") == (0, "root:755\n")
    # Only this sliver's root fs changed: not the other sliver's, not the host's.
    assert sh(engine, other["container"], "test -e /usr/local/bin/slicectl-hello")[0] == 1
    assert not Path("/usr/local/bin/slicectl-hello").exists()
    # The slice user can write its own files but not the system's.
    uid = str(info["uid"])
    assert sh(engine, name, "touch /tmp/mine && id -u", user=uid) == (0, f"{uid}\n")
    for cmd in ("touch /usr/slicectl-x", "touch /usr/local/bin/slicectl-x",
                "echo x >> /usr/local/bin/slicectl-hello", "rm -f /usr/local/bin/slicectl-hello",
                "mkdir /usr/lib/slicectl-x"):
        status, out = sh(engine, name, cmd + " 2>&1", user=uid)
        assert status != 0, (cmd, out)
        assert "Permission denied" in out, (cmd, out)
    assert sh(engine, name, "slicectl-hello") == (0, "hello from a sliver package\n")
    assert sh(engine, name, "ls /usr/slicectl-x /usr/local/bin/slicectl-x /usr/lib/slicectl-x "
                            "2>/dev/null | wc -l") == (0, "0\n")


# 6. disk quota ------------------------------------------------------------------------------

def test_disk_quota_stops_one_sliver_only(nm: NMHandle, engine: docker.DockerClient) -> None:
    hog = make_sliver(nm, "hog", disk_mb=64)
    calm = make_sliver(nm, "calm")
    status, out = sh(engine, hog["container"],
                     "dd if=/dev/zero of=/var/tmp/big bs=1M count=200 conv=fsync 2>&1")
    assert status != 0, out
    assert re.search(r"Disk quota exceeded|No space left on device", out), out
    status, size = sh(engine, hog["container"], "stat -c %s /var/tmp/big")
    assert status == 0, size
    written = int(size) / MIB
    assert written < 64 + 8, f"{written:.1f} MiB written under a 64 MiB quota"
    # And the sliver got the 64 MiB it was promised. Simple quotas charge it only for what
    # it writes; a legacy filesystem with full qgroups charges it for the image's blocks and
    # metadata too, which the image's size underestimates (~51 MiB fitted there).
    root = Path(engine.info()["DockerRootDir"])
    least = 64 - 4 if quota_mode(root) == "squota" else 32
    assert written >= least, f"only {written:.1f} MiB fitted under a 64 MiB quota"
    # The neighbour and the host still write.
    status, out = sh(engine, calm["container"], "dd if=/dev/zero of=/var/tmp/ten bs=1M count=10 "
                     "conv=fsync 2>&1 && stat -c %s /var/tmp/ten")
    assert status == 0, out
    assert out.splitlines()[-1] == str(10 * MIB)
    with tempfile.NamedTemporaryFile(dir="/tmp", prefix="slicectl-isolation-") as f:
        f.write(b"\0" * 10 * MIB)
        f.flush()
        os.fsync(f.fileno())
        assert os.fstat(f.fileno()).st_size == 10 * MIB
    # The hog is still alive and gets its space back once it deletes the file.
    status, out = sh(engine, hog["container"], "rm /var/tmp/big && sync && "
                     "dd if=/dev/zero of=/var/tmp/small bs=1M count=8 conv=fsync 2>&1")
    assert status == 0, out


# 7. fork bomb -------------------------------------------------------------------------------

FORK_BOMB = r"""
import errno, json, os, time

forked, error = 0, None
while forked < 1000:  # a safety stop should the limit ever be missing
    try:
        pid = os.fork()
    except OSError as e:
        error = errno.errorcode.get(e.errno, str(e.errno))
        break
    if pid == 0:
        fd = os.open("/dev/null", os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        time.sleep(300)
        os._exit(0)
    forked += 1
print(json.dumps({"forked": forked, "error": error}))
"""


def test_fork_bomb_is_held_by_nproc(nm: NMHandle, engine: docker.DockerClient) -> None:
    bomb = make_sliver(nm, "bomb", nproc=64)
    calm = make_sliver(nm, "calm")
    cid = bomb["container_id"]
    children: list[int] = []
    try:
        res = py_json(engine, bomb["container"], FORK_BOMB)
        assert res["error"] == "EAGAIN", res
        assert 50 <= res["forked"] < 64, res  # init, its sleep and the bomb itself count too
        assert cg_int("pids", cid, "pids.current") <= 64
        assert int(cg_path("pids", cid, "pids.events").read_text().split()[1]) > 0
        children = cg_procs("pids", cid)
        assert len(children) >= 50
        # The neighbour and the host are unaffected.
        assert sh(engine, calm["container"], "echo alive") == (0, "alive\n")
        assert subprocess.run(["true"], check=False).returncode == 0
    finally:
        nm.call("destroy", bomb["name"])
    # Destroying the sliver killed every forked child.
    for pid in children:
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        assert cid not in text, f"pid {pid} of the destroyed sliver is still alive"
    assert not cg_path("pids", cid, "").exists()


# 8. memory ----------------------------------------------------------------------------------

MEMORY_HOG = r"""
chunks = []
for i in range(200):
    chunks.append(bytearray(b"x") * (1 << 20))  # written, so really resident
print("allocated", len(chunks), "MiB")
"""


def test_memory_hog_is_oom_killed_within_its_limit(nm: NMHandle, engine: docker.DockerClient) -> None:
    hog = make_sliver(nm, "mem", mem_mb=64)
    cid = hog["container_id"]
    status, out = py(engine, hog["container"], MEMORY_HOG)
    assert "allocated" not in out, out
    assert status == 137 or "MemoryError" in out, (status, out)
    limit = cg_int("memory", cid, "memory.limit_in_bytes")
    assert limit == 64 * MIB
    peak = cg_int("memory", cid, "memory.max_usage_in_bytes")
    assert limit * 0.9 <= peak <= limit  # it did reach the limit, and not beyond
    assert cg_int("memory", cid, "memory.memsw.max_usage_in_bytes") <= limit
    if status == 137:
        oom = dict(line.split() for line in cg_path("memory", cid, "memory.oom_control")
                   .read_text().splitlines())
        assert int(oom["oom_kill"]) >= 1, oom
    # Only the hog died: the sliver (and its init) runs on.
    assert engine.containers.get(hog["container"]).status == "running"
    assert hog["pid"] in cg_procs("memory", cid)
    assert sh(engine, hog["container"], "echo alive") == (0, "alive\n")


# 9. idle sliver -----------------------------------------------------------------------------

def test_idle_sliver_uses_no_cpu(nm: NMHandle) -> None:
    info = make_sliver(nm, "idle")
    cid = info["container_id"]
    wait_idle(cid)
    before = cpu_seconds(cid)
    time.sleep(2)
    used = cpu_seconds(cid) - before
    assert used < 0.020, f"an idle sliver used {used * 1000:.1f} ms of CPU in 2 s"


# 10. CPU shares and caps ---------------------------------------------------------------------

BUSY2 = "python3 -c 'while 1: pass' & python3 -c 'while 1: pass' & wait"


def measure(cids: list[str], window_s: float) -> list[float]:
    """CPU-seconds each cgroup used over ``window_s`` seconds of wall time."""
    before = [cpu_seconds(c) for c in cids]
    t0 = time.monotonic()
    time.sleep(window_s)
    after = [cpu_seconds(c) for c in cids]
    elapsed = time.monotonic() - t0
    return [(a - b) * window_s / elapsed for a, b in zip(after, before, strict=True)]


def busy_loops_running(cid: str, n: int = 2) -> bool:
    """Whether ``n`` busy loops run in the sliver: each has already used CPU (a loop that
    exists may still be paging python in from a busy disk)."""
    ticks = []
    for pid in cg_procs("pids", cid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if cmd == b"python3\0-c\0while 1: pass\0":
            ticks.append(int(stat[11]) + int(stat[12]))  # utime + stime
    return len(ticks) == n and min(ticks) >= 5  # 50 ms each at 100 ticks a second


def test_cpu_shares_are_proportional(nm: NMHandle, engine: docker.DockerClient) -> None:
    low = make_sliver(nm, "low", cpu_share=100)
    high = make_sliver(nm, "high", cpu_share=300)
    try:
        for s in (low, high):
            detach(engine, s["container"], BUSY2)
        for s in (low, high):
            wait_for(lambda s=s: busy_loops_running(s["container_id"]), 30, "two busy loops")
        time.sleep(1)  # let the scheduler settle
        used_low, used_high = measure([low["container_id"], high["container_id"]], 4)
    finally:
        for s in (low, high):
            nm.call("destroy", s["name"])
    ratio = used_high / used_low
    assert used_low + used_high > 4 * 0.25, (used_low, used_high)  # both really ran
    assert 2.2 <= ratio <= 4.0, f"shares 100:300 got {used_low:.2f}:{used_high:.2f} CPU-s"


def test_capped_sliver_stays_under_its_cap(nm: NMHandle, engine: docker.DockerClient) -> None:
    ncpus = os.cpu_count() or 1
    capped = make_sliver(nm, "cap", cpu_share=100, cpu_capped=True)
    cid = capped["container_id"]
    cap = 100 / 1000 * ncpus  # CPUs: 10% of the node
    try:
        detach(engine, capped["container"], BUSY2)
        wait_for(lambda: busy_loops_running(cid), 30, "two busy loops")
        time.sleep(0.5)
        (used,) = measure([cid], 3)
    finally:
        nm.call("destroy", capped["name"])
    rate = used / 3
    assert rate <= cap + 0.05, f"capped at {cap} CPU, used {rate:.3f}"
    assert rate >= cap / 4, f"the busy loops barely ran ({rate:.3f} CPU)"


# 11. stop, start and rc.vinit -----------------------------------------------------------------

def test_stop_is_fast_and_rc_vinit_runs_at_every_start(nm: NMHandle,
                                                       engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "boot")
    name, container = info["name"], info["container"]
    wait_idle(info["container_id"])  # the first boot is over, rc.vinit checked and skipped
    assert nm.call("set_initscript", name, "#!/bin/sh\necho started >> /var/tmp/boots\n")
    assert sh(engine, container, "cat /var/tmp/boots")[0] != 0  # not run before a start
    for boot in (1, 2):
        t0 = time.monotonic()
        stopped = nm.call("stop", name)
        took = time.monotonic() - t0
        state = engine.containers.get(container).attrs["State"]
        # docker-init passed SIGTERM on and the sliver ended on it (143), rather than being
        # killed when the stop timeout ran out (137).
        assert (state["Status"], state["ExitCode"]) == ("exited", 143), state
        assert took < 3, f"stop took {took:.2f} s"
        assert stopped["state"] == "exited"
        started = nm.call("start", name)
        assert started["state"] == "running"
        assert started["container_id"] == info["container_id"]  # the same sliver, restarted

        def booted(n: int = boot) -> bool:
            status, out = sh(engine, container, "cat /var/tmp/boots")
            return status == 0 and out.splitlines() == ["started"] * n

        wait_for(booted, 30, f"rc.vinit to have run {boot} time(s)")
    assert nm.call("get_sliver", name)["state"] == "running"
    # slicectl-vinit logged both runs as successful (it writes the status just after).
    wait_for(lambda: sh(engine, container, "cat /var/log/rc.vinit.log")[1]
             .count("exit status 0") == 2, 30, "rc.vinit's exit status in its log")
