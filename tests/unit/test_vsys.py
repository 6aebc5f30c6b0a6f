"""vsys (privileged operations by ACL): the rspec fields and slice tags, requests, ACL
decisions, overlay addresses, and the daemon's plumbing (streams, fds, the timeout)
against real processes."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slicectl.agent.tags import resources
from slicectl.core.containerplan import SLIVER_VSYS_DIR, NodeFacts, SliverIdentity, container_plan
from slicectl.core.errors import ValidationError
from slicectl.core.requests import loads_bounded
from slicectl.core.rspec import RSpec, combine, parse_rspec, part_defaults, split
from slicectl.core.vsys import (
    RULE_COMMENT,
    STATUS_REFUSED,
    STATUS_TIMEOUT,
    VNET_POOL,
    default_vnet,
    exit_status,
    refusal,
    slice_vnet,
    tail,
    tun_address,
    tunnel_rules,
    vsys_request,
)
from slicectl.node.vsys import Call, Outcome, pump, scripts_in

pytestmark = pytest.mark.unit

NOW = 1_800_000_000.0


# the rspec fields --------------------------------------------------------------------

@pytest.mark.parametrize(("given", "vsys", "vnet"), [
    ({}, (), ""),
    ({"vsys": ["fd_tuntap", "slice_reboot", "fd_tuntap"]}, ("fd_tuntap", "slice_reboot"), ""),
    ({"vsys_vnet": "10.9.0.7/24"}, (), "10.9.0.0/24"),
    ({"vsys": [], "vsys_vnet": ""}, (), ""),
])
def test_rspec_vsys_fields(given: dict[str, Any], vsys: tuple[str, ...], vnet: str) -> None:
    spec = parse_rspec(given, NOW)
    assert (spec.vsys, spec.vsys_vnet) == (vsys, vnet)
    assert parse_rspec(spec.to_wire(), NOW).vsys == vsys  # the wire round-trips


@pytest.mark.parametrize(("given", "field"), [
    ({"vsys": "fd_tuntap"}, "vsys"),
    ({"vsys": ["Fd_tuntap"]}, "vsys"),
    ({"vsys": ["../bin/sh"]}, "vsys"),
    ({"vsys": [3]}, "vsys"),
    ({"vsys_vnet": "10.9.0.0/8"}, "vsys_vnet"),
    ({"vsys_vnet": "10.9.0.0/31"}, "vsys_vnet"),
    ({"vsys_vnet": "fe80::/64"}, "vsys_vnet"),
    ({"vsys_vnet": 10}, "vsys_vnet"),
])
def test_rspec_refuses_bad_vsys_fields(given: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_rspec(given, NOW)
    assert str(e.value).startswith(f"{field}: expected ") and "\n" not in str(e.value)


def test_combine_unites_operations_and_split_keeps_only_the_parents() -> None:
    a = parse_rspec({"vsys": ["fd_tuntap"], "cpu_share": 10}, NOW)
    b = parse_rspec({"vsys": ["slice_reboot"], "vsys_vnet": "10.9.0.0/24"}, NOW)
    both = combine([a, b])
    assert (both.vsys, both.vsys_vnet) == (("fd_tuntap", "slice_reboot"), "10.9.0.0/24")

    def part(parent: RSpec, **given: Any) -> RSpec:
        return parse_rspec({**part_defaults(parent), **given}, NOW)

    assert part(a).vsys == ("fd_tuntap",)  # a part keeps the parent's operations by default
    assert split(a, part(a, vsys=[])).vsys == ("fd_tuntap",)
    with pytest.raises(ValidationError, match=r"^vsys: expected operations the rcap grants"):
        split(a, part(a, vsys=["fd_tuntap", "slice_reboot"]))
    split(both, part(both, vsys_vnet="10.9.0.128/25"))
    with pytest.raises(ValidationError, match=r"^vsys_vnet: expected a range inside"):
        split(both, part(both, vsys_vnet="10.8.0.0/24"))


def test_default_vnet_is_a_stable_24_of_the_pool_per_slice() -> None:
    nets = {default_vnet(f"pl_s{i}") for i in range(50)}
    assert len(nets) > 40  # names spread over the pool
    for n in nets:
        net = ipaddress.IPv4Network(n)
        assert net.prefixlen == 24 and net.subnet_of(VNET_POOL)
    assert default_vnet("pl_a") == default_vnet("pl_a")
    assert default_vnet("pl_a") == "100.117.77.0/24"  # the same on every node, every run
    assert slice_vnet("pl_a", parse_rspec({"vsys_vnet": "10.1.0.0/16"}, NOW)) == "10.1.0.0/16"
    assert slice_vnet("pl_a", parse_rspec({}, NOW)) == default_vnet("pl_a")


def test_the_vsys_mount_only_with_an_acl() -> None:
    facts = NodeFacts(node_id="n1", ncpus=2, image="sha256:abc", image_bytes=0,
                      network="net", cgroup_parent="/slicectl", hostname="n1",
                      nm_sock_dir=Path("/run/nm"), vsys_dir=Path("/run/x/vsys"))
    ident = SliverIdentity("pl_a", 7, 20007, Path("/var/lib/x/pl_a/etc"))

    def vsys_mounts(spec: dict[str, Any]) -> list[dict[str, Any]]:
        kw = container_plan(ident, parse_rspec(spec, NOW), facts).kwargs
        return [m for m in kw["mounts"] if m["Target"] == SLIVER_VSYS_DIR]

    assert vsys_mounts({}) == []
    assert vsys_mounts({"vsys": ["fd_tuntap"]}) == [
        {"Type": "bind", "Source": "/run/x/vsys", "Target": SLIVER_VSYS_DIR, "ReadOnly": True}]


# slice tags --------------------------------------------------------------------------

def tag_list(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"tagname": k, "value": v} for k, v in pairs]


@pytest.mark.parametrize(("pairs", "fields", "problems"), [
    ((("vsys", "fd_tuntap"), ("vsys", "slice_reboot")),
     {"vsys": ["fd_tuntap", "slice_reboot"]}, 0),
    ((("vsys", "fd_tuntap, slice_reboot"),), {"vsys": ["fd_tuntap", "slice_reboot"]}, 0),
    ((("vsys", "fd_tuntap slice_reboot fd_tuntap"),),
     {"vsys": ["fd_tuntap", "slice_reboot"]}, 0),
    ((("vsys", "fd_tuntap"), ("vsys", "rm -rf /")), {"vsys": ["fd_tuntap"]}, 1),
    ((("vsys", ""),), {}, 1),
    ((("vsys_vnet", "10.7.0.0/24"),), {"vsys_vnet": "10.7.0.0/24"}, 0),
    ((("vsys_vnet", "10.7.0.0/40"),), {}, 1),
    ((("vsys_vnet", "10.7.0.0/24"), ("vsys_vnet", "10.8.0.0/24")),
     {"vsys_vnet": "10.7.0.0/24"}, 0),
])
def test_vsys_tags(pairs: tuple[tuple[str, str], ...], fields: dict[str, Any],
                   problems: int) -> None:
    res = resources(tag_list(*pairs))
    assert {k: v for k, v in res.rspec.items() if k.startswith("vsys")} == fields
    assert len(res.problems) == problems
    for line in res.problems:
        assert line.startswith("vsys") and "expected" in line and "\n" not in line
    parse_rspec(res.rspec, NOW)  # what the agent asks for, the node manager accepts


# requests and the ACL ----------------------------------------------------------------

@pytest.mark.parametrize(("data", "field"), [
    (b'{"op": "fd_tuntap", "args": ["10.0.0.1"]}', None),
    (b'{"op": "slice_reboot"}', None),
    (b'{"op": "../../bin/sh"}', "op"),
    (b'{"op": "FD"}', "op"),
    (b'{"op": 7}', "op"),
    (b'{"args": []}', "op"),
    (b'{"op": "x", "args": "a b"}', "args"),
    (b'{"op": "x", "args": [1]}', "args"),
    (b'{"op": "x", "args": ["a\\u0000b"]}', "args"),
    (b'{"op": "x", "args": ["' + b"a" * 1025 + b'"]}', "args"),
    (b'{"op": "x", "args": [' + b",".join([b'"a"'] * 33) + b"]}", "args"),
    (b'{"op": "x", "env": {}}', "env"),
])
def test_requests(data: bytes, field: str | None) -> None:
    if field is None:
        req = vsys_request(loads_bounded(data))
        assert req.op == json.loads(data)["op"]
        return
    with pytest.raises(ValidationError) as e:
        vsys_request(loads_bounded(data))
    assert str(e.value).startswith(f"{field}: expected ") and "\n" not in str(e.value)


@pytest.mark.parametrize(("op", "allowed", "available", "why"), [
    ("fd_tuntap", ["fd_tuntap"], {"fd_tuntap"}, None),
    ("fd_tuntap", [], {"fd_tuntap"}, "slice pl_a: expected fd_tuntap in its vsys ACL, found none"),
    ("fd_tuntap", ["slice_reboot"], {"fd_tuntap"},
     "slice pl_a: expected fd_tuntap in its vsys ACL, found slice_reboot"),
    # no script: refused too, but only after the ACL (no probing what a node has)
    ("nothing", ["nothing"], {"fd_tuntap"}, "operation nothing: expected a script on this "
                                            "node, found none"),
    ("nothing", [], {"fd_tuntap"}, "slice pl_a: expected nothing in its vsys ACL, found none"),
])
def test_acl(op: str, allowed: list[str], available: set[str], why: str | None) -> None:
    assert refusal("pl_a", op, allowed, available) == why


@pytest.mark.parametrize(("text", "vnet", "want"), [
    ("10.9.0.1", "10.9.0.0/24", "10.9.0.1/24"),
    ("10.9.0.1/28", "10.9.0.0/24", "10.9.0.1/28"),
    ("10.9.3.1", "10.9.0.0/16", "10.9.3.1/16"),
    ("10.9.1.1", "10.9.0.0/24", None),      # outside the range
    ("10.9.0.1/16", "10.9.0.0/24", None),   # a prefix wider than the range
    ("10.9.0.0", "10.9.0.0/24", None),      # the network address
    ("10.9.0.255", "10.9.0.0/24", None),    # the broadcast address
    ("172.30.0.1", "10.9.0.0/24", None),
    ("banana", "10.9.0.0/24", None),
])
def test_tun_addresses(text: str, vnet: str, want: str | None) -> None:
    if want is not None:
        assert str(tun_address(text, vnet)) == want
        return
    with pytest.raises(ValidationError, match=r"^address: expected "):
        tun_address(text, vnet)


def test_tunnel_rules_mark_and_bound_what_leaves() -> None:
    rules = tunnel_rules("10.9.0.0/24")
    assert all(RULE_COMMENT in rule for _, rule in rules)
    assert ("nat", ["POSTROUTING", "-s", "10.9.0.0/24", "-o", "eth0", "-m", "comment",
                    "--comment", RULE_COMMENT, "-j", "MASQUERADE"]) in rules
    drops = [r for t, r in rules if t == "filter" and r[-1] == "DROP"]
    assert any("!" in r and "10.9.0.0/24" in r for r in drops)  # a spoofed overlay source


def test_statuses_and_tails() -> None:
    assert (exit_status(0), exit_status(3), exit_status(-9)) == (0, 3, 137)
    assert tail(b"short") == "short"
    cut = tail(b"x" * 5000 + b"END", 100)
    assert cut.startswith("[4903 bytes cut] ") and cut.endswith("END")


def test_scripts_are_executables_named_like_operations(tmp_path: Path) -> None:
    shipped, local = tmp_path / "shipped", tmp_path / "local"
    for d in (shipped, local):
        d.mkdir()
    for d, name, mode in [(shipped, "fd_tuntap", 0o755), (local, "fd_tuntap", 0o755),
                          (local, "mine", 0o755), (local, "Bad-Name", 0o755),
                          (local, "notexec", 0o644), (local, "loose", 0o757)]:
        (d / name).write_text("#!/bin/sh\n")
        os.chmod(d / name, mode)
    found = scripts_in(shipped, local, tmp_path / "missing")
    if os.geteuid() == 0:  # root-owned files: the ownership rule lets them in
        assert found == {"fd_tuntap": shipped / "fd_tuntap", "mine": local / "mine"}
    else:
        assert found == {}


# the daemon's plumbing, against real processes ---------------------------------------

def start(tmp_path: Path, script: str
          ) -> tuple[socket.socket, socket.socket, socket.socket, subprocess.Popen[bytes]]:
    """``script`` (Python) started as the daemon starts one: (the caller's end, the
    daemon's end of the call, the daemon's end of the fd socket, the process)."""
    path = tmp_path / "op"
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(0o755)
    caller, client = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, pass_fds=(theirs.fileno(),),
                            env={"FD": str(theirs.fileno()), "PATH": "/usr/bin:/bin"},
                            start_new_session=True)
    theirs.close()
    return caller, client, mine, proc


def run_pump(tmp_path: Path, script: str, timeout_s: int, stdin: list[bytes]
             ) -> tuple[Outcome, list[bytes], list[int]]:
    """Run ``script`` under :func:`pump`, a socketpair as the caller."""
    caller, client, mine, proc = start(tmp_path, script)
    for chunk in stdin:
        caller.send(b"I" + chunk)
    try:
        out = pump(Call(client, proc, mine, time.monotonic() + timeout_s, timeout_s))
        frames: list[bytes] = []
        fds: list[int] = []
        caller.setblocking(False)
        while True:
            try:
                data, anc, _, _ = caller.recvmsg(1 << 16, socket.CMSG_SPACE(64))
            except BlockingIOError:
                break
            frames.append(data)
            for _, _, cdata in anc:
                fds += [int.from_bytes(cdata[i:i + 4], sys.byteorder)
                        for i in range(0, len(cdata), 4)]
        return out, frames, fds
    finally:
        for s in (caller, client, mine):
            s.close()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()


def test_stdin_stdout_and_status_pass_through(tmp_path: Path) -> None:
    out, frames, _ = run_pump(tmp_path, (
        "import sys\n"
        "data = sys.stdin.read()\n"
        "sys.stdout.write(data.upper())\n"
        "sys.stderr.write('a note\\n')\n"
        "sys.exit(3)\n"), 30, [b"hello ", b"world", b""])
    assert b"".join(f[1:] for f in frames if f[:1] == b"O") == b"HELLO WORLD"
    assert (out.status, out.error, out.stderr) == (3, "exited with status 3", "a note\n")


def test_descriptors_pass_back(tmp_path: Path) -> None:
    out, frames, fds = run_pump(tmp_path, (
        "import os, socket\n"
        "r, w = os.pipe()\n"
        "os.write(w, b'through the pipe')\n"
        "back = socket.socket(fileno=int(os.environ['FD']))\n"
        "socket.send_fds(back, [b'{\"what\": \"pipe\"}'], [r])\n"), 30, [b""])
    assert out.status == 0 and out.fds == 1
    assert [f for f in frames if f[:1] == b"F"] == [b'F{"what": "pipe"}']
    assert len(fds) == 1
    try:
        assert os.read(fds[0], 100) == b"through the pipe"
    finally:
        os.close(fds[0])


def test_a_hanging_script_is_killed_with_its_group_after_the_timeout(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    out, _, _ = run_pump(tmp_path, (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "sys.stderr.write('waiting forever\\n'); sys.stderr.flush()\n"
        "time.sleep(600)\n"), 1, [b""])
    assert (out.status, out.error) == (STATUS_TIMEOUT, "timed out after 1 s")
    assert "waiting forever" in out.stderr
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        state = Path(f"/proc/{child}/stat").read_text().split(") ")[-1][:1]
        if state == "Z":  # killed; its parent (killed too) no longer reaps it
            break
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or \
        Path(f"/proc/{child}/stat").read_text().split(") ")[-1][:1] == "Z"


def test_a_caller_that_goes_away_takes_its_script(tmp_path: Path) -> None:
    caller, client, mine, proc = start(tmp_path, "import time\ntime.sleep(600)\n")
    caller.close()
    out = pump(Call(client, proc, mine, time.monotonic() + 60, 60))
    assert out.error == "the caller went away" and proc.poll() is not None
    for s in (client, mine):
        s.close()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        if f is not None:
            f.close()
    assert out.status != 0 and out.status != STATUS_REFUSED
