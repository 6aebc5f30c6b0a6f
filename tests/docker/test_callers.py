"""Callers are pinned at connect time (issue 11, hole 1): a connection made by a child that
exits is never served as anyone (least of all host root), in the node manager, the
raw-socket shim and the admin sniffer; pid reuse cannot hand one sliver's identity to
another. The attack runs as root inside a real sliver."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import docker

from slicectl.core.labels import SLIVER_NM_DIR, SLIVER_SHIM_DIR, SLIVER_SNIFFER_DIR

from .conftest import NMHandle, sliver_exec

#: Runs in the attacker's sliver: N sockets each connected by a child that then exits,
#: held by the parent, then used: `status` at the NM, `stats` at the shim, and reading
#: the hello the sniffer sends a consumer it accepts. Prints one answer per socket.
ATTACK = r"""
import json, os, socket, sys, time, xmlrpc.client
kind, path, n, wait_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX,
                      socket.SOCK_SEQPACKET if kind == "shim" else socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        try:
            s.connect(path)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    socks.append(s)
time.sleep(wait_s)  # the victim forks meanwhile: its processes may take the dead pids
out = []
for s in socks:
    s.settimeout(10)
    data = b""
    try:
        if kind == "nm":
            body = xmlrpc.client.dumps((), "status").encode()
            try:  # a refused peer may be answered and closed before it writes
                s.sendall(b"POST /RPC2 HTTP/1.0\r\nContent-Type: text/xml\r\n"
                          b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            except BrokenPipeError:
                pass
            while chunk := s.recv(65536):
                data += chunk
        elif kind == "shim":
            try:
                s.send(b'{"op": "stats"}')
            except BrokenPipeError:
                pass
            data = s.recv(65536)
        else:
            data = s.recv(65536)
    except OSError as e:
        data = f"oserror {e}".encode()
    out.append(data.decode(errors="replace")[-600:])
    s.close()
print(json.dumps(out))
"""

FORKER = "while :; do /bin/true; done"


def attack(engine: docker.DockerClient, sliver: dict[str, Any], kind: str, path: str,
           n: int, wait_s: float = 0.0) -> list[str]:
    status, out = sliver_exec(engine, sliver["container"],
                              ["python3", "-c", textwrap.dedent(ATTACK), kind, path, str(n),
                               str(wait_s)])
    assert status == 0, out
    answers: list[str] = json.loads(out.strip().splitlines()[-1])
    assert len(answers) == n
    return answers


def test_connections_of_exited_children_are_refused_everywhere(
        dnm: NMHandle, engine: docker.DockerClient) -> None:
    rights = {"nm_privileged": True, "raw_sockets": True, "admin_sniffer": True}
    attacker = dict(dnm.call("bind", dnm.slice("att"), dnm.call("acquire", rights)))
    # Called directly, the sliver is itself; the same call through a dead child's socket
    # is nobody: not root (the hole), not the slice.
    for a in attack(engine, attacker, "nm", f"{SLIVER_NM_DIR}/nm.sock", 20):
        assert "caller" not in a and "<params>" not in a, a
        assert "exited" in a, a
    for a in attack(engine, attacker, "shim", f"{SLIVER_SHIM_DIR}/raw.sock", 20):
        assert a, "the shim closed without saying why"
        reply = json.loads(a)
        assert reply["ok"] is False and reply["errno"] == "EPERM", reply
        assert "sessions" not in reply
    for a in attack(engine, attacker, "sniffer", f"{SLIVER_SNIFFER_DIR}/records.sock", 20):
        assert "version" not in a and "record_size" not in a, a  # no hello: refused
    # The daemons serve the living: the NM answers the sliver as itself.
    status, out = sliver_exec(engine, attacker["container"], [
        "python3", "-c", "import sys; sys.path.insert(0, '/usr/lib/slicectl');"
        "import http.client, socket, xmlrpc.client\n"
        "class U(http.client.HTTPConnection):\n"
        "    def connect(self):\n"
        "        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect("
        f"'{SLIVER_NM_DIR}/nm.sock')\n"
        "c = U('x'); c.request('POST', '/RPC2', xmlrpc.client.dumps((), 'status'))\n"
        "print(xmlrpc.client.loads(c.getresponse().read())[0][0]['caller'])"])
    assert status == 0 and out.strip() == f"slice:{attacker['name']}", out
    assert dnm.call("status")["caller"] == "root"


def test_pid_reuse_never_hands_over_a_victims_identity(
        nm: NMHandle, engine: docker.DockerClient) -> None:
    privileged = {"nm_privileged": True}
    attacker = dict(nm.call("bind", nm.slice("att"), nm.call("acquire", privileged)))
    victim = dict(nm.call("bind", nm.slice("vic"), nm.call("acquire", privileged)))
    engine.containers.get(victim["container"]).exec_run(["sh", "-c", FORKER], detach=True)
    answers = attack(engine, attacker, "nm", f"{SLIVER_NM_DIR}/nm.sock", 300, wait_s=5.0)
    for a in answers:
        assert victim["name"] not in a and attacker["name"] not in a, a
        assert "<params>" not in a, a  # never served, as anyone
        assert "exited" in a or a.startswith("HTTP/1.0 503"), a
    # The victim's sliver is untouched and still its creator's.
    assert nm.call("get_sliver", victim["name"])["state"] == "running"
