"""vsys end to end (issue 15): privileged operations by ACL on a private node with its
daemons, called from real slivers with the ``vsys`` command and module of the reference
image; fd_tuntap's tunnel watched on the node's bridge with tcpdump."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from slicectl.core.containerplan import SLIVER_VSYS_DIR
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import VSYS, daemon_pid
from slicectl.node.vsys import SHIPPED_SCRIPTS
from slicectl.testbed.drive import ENCAPSULATOR
from slicectl.testbed.privnode import log_path, private_node

from .conftest import NMHandle, gateway, make_sliver, sliver_exec, wait_for

TIMEOUT_S = 2
SOCK = f"{SLIVER_VSYS_DIR}/vsys.sock"

#: The local administrator's operations the tests install (root-owned, 0755).
SCRIPTS = {
    "upper": "#!/bin/sh\ntr a-z A-Z\necho \"args: $*\"\necho \"slice: $SLICECTL_VSYS_SLICE\"\n"
             "echo 'to stderr' >&2\nexit 3\n",
    "hang": "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/hang.pid\"\nsleep 600 &\n"
            "echo $! > \"$(dirname \"$0\")/hang-child.pid\"\nwait\n",
    "marker": "#!/bin/sh\ntouch \"$(dirname \"$0\")/marker.ran\"\necho ran\n",
}


@pytest.fixture
def vnm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[NMHandle]:
    """A private node with its daemons, a short vsys timeout and the test operations."""
    with private_node(node_cfg, engine, daemons=True,
                      policy={"vsys_timeout_s": TIMEOUT_S}) as cfg:
        d = cfg.vsys_scripts_dir
        d.mkdir(parents=True, exist_ok=True)
        for name, text in SCRIPTS.items():
            (d / name).write_text(text)
            os.chmod(d / name, 0o755)
        yield NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))


def as_slice(engine: docker.DockerClient, sliver: dict[str, Any], script: str
             ) -> tuple[int, str]:
    """Run ``sh -c script`` in the sliver as the slice's user."""
    return sliver_exec(engine, sliver["container"], ["sh", "-c", script],
                       user=str(sliver["uid"]))


def test_stdin_stdout_and_exit_status_pass_through(vnm: NMHandle,
                                                   engine: docker.DockerClient) -> None:
    a = make_sliver(vnm, "a", vsys=["upper"])
    status, out = as_slice(engine, a, "echo hello there | vsys upper one two 2>/dev/null; "
                                      "echo \"status=$?\"")
    assert out.splitlines() == ["HELLO THERE", "args: one two", f"slice: {a['name']}",
                                "status=3"], out
    status, out = as_slice(engine, a, "echo x | vsys upper 2>&1 >/dev/null")
    assert status == 3 and "to stderr" in out and "vsys: upper: exited with status 3" in out, out
    events = vnm.call("events", a["name"])
    assert any(e["action"] == "vsys upper" and e["who"] == "vsys"
               and e["detail"].startswith("status 3") for e in events), events


def test_a_slice_without_the_acl_is_refused(vnm: NMHandle, engine: docker.DockerClient) -> None:
    marker = vnm.cfg.vsys_scripts_dir / "marker.ran"
    other = make_sliver(vnm, "other", vsys=["upper"])
    status, out = as_slice(engine, other, "vsys marker")
    assert status == 126 and out.strip() == (
        f"vsys: marker: slice {other['name']}: expected marker in its vsys ACL, found upper"), out
    # the ACL is checked before the scripts: a name the node has not is refused alike
    status, out = as_slice(engine, other, "vsys nothing_here")
    assert status == 126 and "expected nothing_here in its vsys ACL" in out, out
    # a slice with no ACL at all has no socket to ask
    none = make_sliver(vnm, "none")
    status, out = as_slice(engine, none, f"test -e {SOCK}; echo $?; vsys marker")
    assert out.splitlines()[0] == "1" and status == 126, out
    assert not marker.exists()


#: Connects to the vsys socket from a child that exits at once, then sends the request
#: from the parent: the pinned peer is gone by then.
ORPHAN = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
pid = os.fork()
if pid == 0:
    try:
        s.connect(sys.argv[1])
    finally:
        os._exit(0)
os.waitpid(pid, 0)
try:
    s.send(json.dumps({"op": "marker"}).encode())
except OSError:
    pass
s.settimeout(10)
frames = []
while True:
    try:
        data = s.recv(65536)
    except OSError as e:
        frames.append(f"oserror {e}")
        break
    if not data:
        break
    frames.append(data.decode(errors="replace"))
print(json.dumps(frames))
"""


def test_an_unidentified_peer_gets_nothing(vnm: NMHandle, engine: docker.DockerClient) -> None:
    marker = vnm.cfg.vsys_scripts_dir / "marker.ran"
    a = make_sliver(vnm, "a", vsys=["marker"])
    status, out = sliver_exec(engine, a["container"],
                              ["python3", "-c", textwrap.dedent(ORPHAN), SOCK])
    assert status == 0, out
    frames = json.loads(out.strip().splitlines()[-1])
    assert len(frames) <= 1 and all(f.startswith("X") and not f.startswith("XO")
                                    for f in frames), frames
    if frames:
        end = json.loads(frames[0][1:])
        assert end["status"] == 126 and "ran" not in end.get("stderr", ""), end
    # host root is no slice either
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(ORPHAN)
                          .replace("pid = os.fork()", "pid = 1").replace(
                              "os.waitpid(pid, 0)", "s.connect(sys.argv[1])"),
                          str(vnm.cfg.vsys_dir / "vsys.sock")],
                         capture_output=True, text=True, timeout=60, check=False)
    frames = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(frames) == 1 and frames[0].startswith("X"), frames
    end = json.loads(frames[0][1:])
    assert end["status"] == 126 and "for slivers" in end["error"], end
    assert not marker.exists()
    # the slice itself, identified, runs it
    status, out = as_slice(engine, a, "vsys marker")
    assert (status, out.strip()) == (0, "ran") and marker.exists()


def test_a_hanging_script_is_killed_after_the_timeout(vnm: NMHandle,
                                                      engine: docker.DockerClient) -> None:
    a = make_sliver(vnm, "a", vsys=["hang"])
    status, out = as_slice(engine, a, "vsys hang < /dev/null")
    assert status == 124 and out.strip() == f"vsys: hang: timed out after {TIMEOUT_S} s", out
    d = vnm.cfg.vsys_scripts_dir
    for name in ("hang.pid", "hang-child.pid"):
        pid = int((d / name).read_text())
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 10,  # type: ignore[misc]
                 f"{name} {pid} to be gone")
    events = vnm.call("events", a["name"])
    assert any(e["action"] == "vsys hang" and "timed out" in e["detail"] for e in events)


def start_encap(engine: docker.DockerClient, sliver: dict[str, Any], mine: str,
                peer: str) -> None:
    c = engine.containers.get(sliver["container"])
    c.exec_run(["sh", "-c",
                f"python3 -c '{ENCAPSULATOR}' {mine} {peer} 5555 > /tmp/encap.log 2>&1"],
               user=str(sliver["uid"]), detach=True)
    wait_for(lambda: "ready" in as_slice(engine, sliver, "cat /tmp/encap.log")[1], 30,
             f"the encapsulator in {sliver['name']}")


def test_fd_tuntap_gives_a_working_tunnel(vnm: NMHandle, engine: docker.DockerClient) -> None:
    vnet = "10.201.7.0/24"
    a = make_sliver(vnm, "a", vsys=["fd_tuntap"], vsys_vnet=vnet)
    b = make_sliver(vnm, "b", vsys=["fd_tuntap"], vsys_vnet=vnet)
    # outside the slice's range: refused, nothing made
    status, out = as_slice(engine, a, "vsys fd_tuntap 10.9.9.1")
    assert status == 2 and "address: expected an address like 10.201.7.1" in out, out
    status, out = as_slice(engine, a, "cat /proc/net/dev")
    assert "tun" not in out
    start_encap(engine, a, "10.201.7.1", b["address"])
    start_encap(engine, b, "10.201.7.2", a["address"])
    log = as_slice(engine, a, "cat /tmp/encap.log")[1]
    assert log.split()[2:5] == ["tun0", "10.201.7.1/24", "tun0"], log
    status, out = as_slice(engine, a, "ip -o addr show dev tun0")
    assert "inet 10.201.7.1/24" in out, out
    tcpdump = subprocess.Popen(["tcpdump", "-i", vnm.cfg.bridge, "-n", "-l",
                                "--immediate-mode", "udp port 5555 or net 10.201.7.0/24"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        while "listening" not in (line := tcpdump.stderr.readline()):
            assert line, "tcpdump did not start"
        status, out = as_slice(engine, a, "ping -c 3 -W 2 10.201.7.2")
        assert status == 0 and " 0% packet loss" in out, out
    finally:
        time.sleep(0.3)
        tcpdump.terminate()
        wire, _ = tcpdump.communicate(timeout=10)
    lines = [ln for ln in wire.splitlines() if " IP " in ln]
    assert lines, wire
    # on the wire only the slivers' own addresses, never the overlay's
    pairs = {(a["address"], b["address"]), (b["address"], a["address"])}
    for ln in lines:
        src, dst = ln.split(" IP ")[1].split(":")[0].split(" > ")
        assert (src.rsplit(".", 1)[0], dst.rsplit(".", 1)[0]) in pairs, ln
    # what the sliver forwards out of its tunnel is masqueraded to its own address, and
    # it cannot change that: the rules carry slicectl's comment and it has no NET_ADMIN
    status, out = sliver_exec(engine, a["container"], ["iptables", "-t", "nat", "-S"])
    assert status != 0
    nat = subprocess.run(["nsenter", f"--net=/proc/{a['pid']}/ns/net", "iptables", "-t", "nat",
                          "-S", "POSTROUTING"], capture_output=True, text=True, check=True)
    assert f"-s {vnet} -o eth0 -m comment --comment slicectl-vsys -j MASQUERADE" in nat.stdout
    # closing the fd removes the device
    as_slice(engine, a, f"kill {log.split()[1]}")
    wait_for(lambda: "tun0" not in as_slice(engine, a, "cat /proc/net/dev")[1], 15,
             "tun0 to go with its fd")


#: Writes two ICMP echo requests for the node into a TUN device from fd_tuntap, as from
#: overlay peers this sliver is the gateway of: one from another address of the slice's
#: range, one from an address outside it (spoofed); prints what comes back out of the
#: device. (A source that is the device's own address would be a martian.)
PROBE = r"""
import os, select, socket, struct, sys, vsys
mine, peer, spoofed, dst = sys.argv[1:5]
r = vsys.call("fd_tuntap", [mine])
tun = r.fds[0]

def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF

def echo(src, ident):
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"probe"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp + b"\0")) + icmp[4:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), ident, 0, 64, 1, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + icmp

os.write(tun, echo(spoofed, 0x5151))
os.write(tun, echo(peer, 0x4242))
while select.select([tun], [], [], 5)[0]:
    pkt = os.read(tun, 65535)
    if pkt[9] == 1 and pkt[20] == 0:
        print("reply", socket.inet_ntoa(pkt[12:16]), "->", socket.inet_ntoa(pkt[16:20]),
              hex(struct.unpack("!H", pkt[24:26])[0]), flush=True)
print("done", open("/proc/sys/net/ipv4/ip_forward").read().strip(), flush=True)
"""


def test_what_leaves_a_tunnel_is_the_slivers_own_traffic(vnm: NMHandle,
                                                          engine: docker.DockerClient) -> None:
    """Forwarded out of the TUN device, a packet from the overlay leaves masqueraded to
    the sliver's address; one from outside the slice's range does not leave."""
    vnet = "10.202.7.0/24"
    a = make_sliver(vnm, "a", vsys=["fd_tuntap"], vsys_vnet=vnet)
    node = gateway(vnm)
    tcpdump = subprocess.Popen(["tcpdump", "-i", vnm.cfg.bridge, "-n", "-l",
                                "--immediate-mode", "icmp"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert tcpdump.stderr is not None
        while "listening" not in (line := tcpdump.stderr.readline()):
            assert line, "tcpdump did not start"
        status, out = sliver_exec(engine, a["container"],
                                  ["python3", "-c", PROBE, "10.202.7.9", "10.202.7.20", "10.99.0.1",
                                   node],
                                  user=str(a["uid"]))
    finally:
        time.sleep(0.3)
        tcpdump.terminate()
        wire, _ = tcpdump.communicate(timeout=10)
    assert status == 0, out
    # the reply came back into the tunnel, de-masqueraded, for the overlay's probe only
    assert out.splitlines() == [f"reply {node} -> 10.202.7.20 0x4242", "done 1"], out + wire
    requests = [ln for ln in wire.splitlines() if "echo request" in ln]
    assert requests and all(f"IP {a['address']} > {node}:" in ln for ln in requests), wire
    assert "10.202.7." not in wire and "10.99.0.1" not in wire, wire


def test_slice_reboot_restarts_only_the_caller(vnm: NMHandle,
                                               engine: docker.DockerClient) -> None:
    a = make_sliver(vnm, "a", vsys=["slice_reboot"])
    b = make_sliver(vnm, "b", vsys=["slice_reboot"])
    before_a, before_b = a["pid"], b["pid"]
    status, out = as_slice(engine, a, "vsys slice_reboot")
    assert status == 0 and out.strip() == f"slice_reboot: restarting the sliver of {a['name']}"

    def restarted() -> bool:
        v = vnm.call("get_sliver", a["name"])
        return bool(v["state"] == "running" and v["pid"] and v["pid"] != before_a)

    def actions() -> list[tuple[str, str]]:
        return [(e["action"], e["detail"]) for e in vnm.call("events", a["name"])]

    wait_for(restarted, 60, "the caller's sliver to be back with a new init")
    wait_for(lambda: ("start", "") in actions(), 10, "the start event")
    assert ("stop", "vsys slice_reboot") in actions(), actions()
    assert actions().index(("stop", "vsys slice_reboot")) < actions().index(("start", ""))
    assert vnm.call("get_sliver", b["name"])["pid"] == before_b
    assert not any(e["action"] in ("stop", "start") for e in vnm.call("events", b["name"]))
    assert SHIPPED_SCRIPTS.joinpath("slice_reboot").exists()


#: Holds N connections open without a word, then makes one more call and prints its
#: answer; then closes them and calls again.
CROWD = r"""
import json, socket, sys, time, vsys
path, n = sys.argv[1], int(sys.argv[2])
held = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    held.append(s)
r = vsys.call("marker")
print(json.dumps([r.status, r.error]))
for s in held:
    s.close()
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    r = vsys.call("marker")
    if r.status == 0:
        break
    time.sleep(0.2)
print(json.dumps([r.status, r.error]))
"""


def test_a_slice_has_a_bounded_number_of_calls_open(vnm: NMHandle,
                                                    engine: docker.DockerClient) -> None:
    a = make_sliver(vnm, "a", vsys=["marker"])
    status, out = sliver_exec(engine, a["container"],
                              ["python3", "-c", textwrap.dedent(CROWD), SOCK, "4"],
                              user=str(a["uid"]))
    assert status == 0, out
    crowded, after = (json.loads(line) for line in out.strip().splitlines()[-2:])
    assert crowded[0] == 126 and "expected at most 4 vsys calls open (node policy)" in crowded[1]
    assert after == [0, ""]  # the places come back as the connections close


#: Sends hostile first messages, one connection each, and counts the answers.
FUZZ = r"""
import json, os, random, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
random.seed(7)
shapes = [
    lambda: os.urandom(random.randint(0, 300)),
    lambda: b"[" * 5000 + b"]" * 5000,
    lambda: b'{"op": "' + b"m" * 70000,
    lambda: json.dumps({"op": "marker", "args": [1, 2]}).encode(),
    lambda: json.dumps({"op": "marker", "env": {"LD_PRELOAD": "/x"}}).encode(),
    lambda: json.dumps({"op": "../marker"}).encode(),
    lambda: json.dumps(["op", "marker"]).encode(),
    lambda: b"\xff\xfe" + b"marker",
]
answers = {}
for i in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    try:
        s.send(shapes[i % len(shapes)]())
    except OSError:
        pass
    s.settimeout(15)
    try:
        data = s.recv(65536)
        key = json.loads(data[1:])["status"] if data[:1] == b"X" else data[:20].decode("latin1")
    except (OSError, ValueError) as e:
        key = type(e).__name__
    answers[str(key)] = answers.get(str(key), 0) + 1
    s.close()
print(json.dumps(answers))
"""


def test_hostile_requests_are_refused_and_the_daemon_lives(vnm: NMHandle,
                                                           engine: docker.DockerClient) -> None:
    marker = vnm.cfg.vsys_scripts_dir / "marker.ran"
    a = make_sliver(vnm, "a", vsys=["marker"])
    pid = daemon_pid(vnm.cfg, VSYS)
    status, out = sliver_exec(engine, a["container"],
                              ["python3", "-c", textwrap.dedent(FUZZ), SOCK, "400"],
                              user=str(a["uid"]))
    assert status == 0, out
    assert json.loads(out.strip().splitlines()[-1]) == {"126": 400}
    assert not marker.exists()
    assert daemon_pid(vnm.cfg, VSYS) == pid
    status, out = as_slice(engine, a, "vsys marker")
    assert (status, out.strip()) == (0, "ran")
    vsys_log = log_path(vnm.cfg, "vsys")  # its log lines stay bounded
    assert max((len(ln) for ln in vsys_log.read_text().splitlines()), default=0) < 4096
