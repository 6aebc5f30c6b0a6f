"""Host daemons under hostile input (issue 11, hole 2): thousands of random, truncated,
deep and oversized messages from a sliver's root to the node manager, the raw-socket
shim and the admin sniffer end that request or session, never the daemon; a well-behaved
client is served throughout. A sliver opening shim sessions without end is held at the
node policy's cap, and the shim's memory with it."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import docker

from slicectl.core.labels import SLIVER_NM_DIR, SLIVER_SHIM_DIR, SLIVER_SNIFFER_DIR
from slicectl.core.policy import NodePolicy
from slicectl.node import shim
from slicectl.node.daemons import SHIM, SNIFFER, daemon_pid

from .conftest import NMHandle, sliver_exec

FUZZ = r"""
import json, os, random, socket, sys
rng = random.Random(int(sys.argv[1]))
targets = [("nm", socket.SOCK_STREAM, sys.argv[2]), ("shim", socket.SOCK_SEQPACKET, sys.argv[3]),
           ("sniffer", socket.SOCK_STREAM, sys.argv[4])]
n = int(sys.argv[5])

def value(d=0):
    k = rng.randrange(8 if d < 3 else 5)
    return [lambda: rng.randint(-2**70, 2**70), lambda: rng.random() * 1e308,
            lambda: "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20))),
            lambda: None, lambda: rng.choice([True, False]),
            lambda: [value(d + 1) for _ in range(rng.randrange(4))],
            lambda: {rng.choice(["op", "proto", "port", "icmp_id", "x"]): value(d + 1)
                     for _ in range(rng.randrange(4))},
            lambda: rng.choice(["open", "sniff", "stats", "udp", "tcp", "icmp"])][k]()

def message(kind):
    shape = rng.randrange(6)
    if shape == 0:
        return os.urandom(rng.randrange(1, 3000))
    if shape == 1:
        return (b"[" * rng.randrange(100, 100000))
    if shape == 2:
        return b"x" * rng.randrange(5000, 200000)
    body = json.dumps(value()).encode()
    if kind == "nm":
        body = (b"POST /RPC2 HTTP/1.0\r\nContent-Length: " + str(len(body)).encode()
                + b"\r\n\r\n<?xml version='1.0'?><methodCall><methodName>status</methodName>"
                + body + b"</methodCall>")
    if shape == 3:
        body = body[: rng.randrange(len(body) + 1)]
    return body

counts = {"sent": 0, "oserror": 0}
for i in range(n):
    kind, typ, path = targets[i % 3]
    s = socket.socket(socket.AF_UNIX, typ)
    s.settimeout(2)
    try:
        s.connect(path)
        s.send(message(kind)) if typ == socket.SOCK_SEQPACKET else s.sendall(message(kind))
        counts["sent"] += 1
        s.settimeout(0.02)  # an answer, if the daemon gives one at once; never wait for it
        try:
            s.recv(4096)
        except OSError:
            pass
    except OSError:
        counts["oserror"] += 1
    finally:
        s.close()
print(json.dumps(counts))
"""

HOLD = r"""
import json, socket, sys, time
held, refusal = [], None
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sys.argv[1])
    s.setblocking(False)
    time.sleep(0.002)
    try:
        refusal = json.loads(s.recv(4096))
        break
    except BlockingIOError:
        held.append(s)
# A refusal the shim sent later than the 2 ms above (a loaded machine) is still a
# refusal: look at every socket once more and keep only those with nothing to read.
time.sleep(1)
still = []
for s in held:
    try:
        refusal = json.loads(s.recv(4096) or b"null") or refusal
    except BlockingIOError:
        still.append(s)
held = still
print(json.dumps({"held": len(held), "refusal": refusal}), flush=True)
open("/tmp/held", "w").write(str(len(held)))
time.sleep(120)
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"pid {pid}: no VmRSS")


def test_fuzzed_messages_never_kill_a_daemon(dnm: NMHandle, engine: docker.DockerClient) -> None:
    rights = {"nm_privileged": True, "raw_sockets": True, "admin_sniffer": True}
    fuzzer = dict(dnm.call("bind", dnm.slice("fuzz"), dnm.call("acquire", rights)))
    pids = {d.name: daemon_pid(dnm.cfg, d) for d in (SHIM, SNIFFER)} | {"nm": dnm.pid}
    served: list[float] = []
    failures: list[str] = []
    done = threading.Event()

    def well_behaved() -> None:  # host root's client, calling all along
        while not done.is_set():
            try:
                assert dnm.call("status")["caller"] == "root"
                assert shim.stats(dnm.cfg)["ok"] is True
                served.append(time.monotonic())
            except Exception as e:  # every failure is reported below
                failures.append(repr(e))
            time.sleep(0.05)

    t = threading.Thread(target=well_behaved, daemon=True)
    t.start()
    try:
        status, out = sliver_exec(engine, fuzzer["container"], [
            "python3", "-c", textwrap.dedent(FUZZ), "7", f"{SLIVER_NM_DIR}/nm.sock",
            f"{SLIVER_SHIM_DIR}/raw.sock", f"{SLIVER_SNIFFER_DIR}/records.sock", "3000"])
    finally:
        done.set()
        t.join(10)
    assert status == 0, out
    counts = json.loads(out.strip().splitlines()[-1])
    assert counts["sent"] >= 2500, counts
    assert not failures, failures[:5]
    assert len(served) > 10
    after = {d.name: daemon_pid(dnm.cfg, d) for d in (SHIM, SNIFFER)} | {"nm": dnm.pid}
    assert after == pids, "a daemon died (or was restarted) under the fuzz"
    refused = shim.stats(dnm.cfg)["refused"]
    assert any(r["reason"] == "request" and r["count"] > 100 for r in refused), refused
    log = dnm.log()
    assert max((len(line) for line in log.splitlines()), default=0) < 4096


def test_endless_sessions_are_held_at_the_cap(dnm: NMHandle, engine: docker.DockerClient) -> None:
    cap = NodePolicy().shim_sessions_per_sliver
    hog = dict(dnm.call("bind", dnm.slice("hog"), dnm.call("acquire", {"nofile": 4096})))
    shim_pid = daemon_pid(dnm.cfg, SHIM)
    assert shim_pid is not None
    before = rss_kib(shim_pid)
    engine.containers.get(hog["container"]).exec_run(
        ["python3", "-c", textwrap.dedent(HOLD), f"{SLIVER_SHIM_DIR}/raw.sock", "2000"],
        detach=True)
    deadline = time.monotonic() + 60
    while sliver_exec(engine, hog["container"], ["cat", "/tmp/held"])[0] != 0:
        assert time.monotonic() < deadline, "the session hog did not finish"
        time.sleep(0.2)
    held = int(sliver_exec(engine, hog["container"], ["cat", "/tmp/held"])[1])
    assert held == cap, f"a sliver holds {held} sessions; the policy says {cap}"
    stats: dict[str, Any] = shim.stats(dnm.cfg)
    assert stats["sessions"] >= cap
    assert any(r["reason"] == "session-cap" for r in stats["refused"]), stats["refused"]
    grown = rss_kib(shim_pid) - before
    assert grown < 16 << 10, f"the shim grew by {grown} KiB for {held} idle sessions"
    # Another sliver is not held by the hog's cap.
    other = dict(dnm.call("bind", dnm.slice("other"), dnm.call("acquire", {})))
    code = ("import saferaw; s = saferaw.socket('udp'); s.bind(40123); print(s.address)")
    status, out = sliver_exec(engine, other["container"], ["python3", "-c", code])
    assert status == 0 and out.strip() == other["address"], out
