"""The node manager's interface against the real engine: acquire, bind, show, delete."""

from __future__ import annotations

import json
import pwd
from pathlib import Path

import docker
import pytest

from slicectl.core.errors import AdmissionError, StateError, ValidationError

from .conftest import NMHandle


def account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_create_show_delete_leaves_nothing(nm: NMHandle, engine: docker.DockerClient,
                                           tmp_path: Path) -> None:
    name = nm.slice("life")
    rspec = tmp_path / "r.yaml"
    rspec.write_text("cpu_share: 20\nmem_mb: 256\nend: 1h\n")
    out = nm.cli("create", name, "--rspec", str(rspec), "--contact", "alice@example.org")
    assert out.returncode == 0, out.stderr
    shown = nm.cli("show", name, "-o", "json")
    info = json.loads(shown.stdout)
    for key in ("name", "state", "container", "pid", "address", "rspec", "expires", "contacts"):
        assert key in info, key
    assert info["state"] == "running"
    assert info["container"] == f"sliver-{name}"
    assert info["contacts"] == ["alice@example.org"]
    assert info["rspec"]["cpu_share"] == 20
    assert info["address"] == info["net"]["address"]
    assert info["address"].startswith(nm.cfg.subnet.split(".0/")[0].rsplit(".", 1)[0])
    # The pid is the sliver's init as the host sees it.
    assert Path(f"/proc/{info['pid']}/cgroup").read_text().count(info["container_id"]) > 0
    assert account_exists(name)
    listed = json.loads(nm.cli("list", "-o", "json").stdout)
    assert [s["name"] for s in listed] == [name]

    assert nm.cli("delete", name).returncode == 0
    assert engine.containers.list(all=True, filters={"name": f"sliver-{name}"}) == []
    assert not account_exists(name)
    assert not (nm.cfg.slivers_dir / name).exists()
    assert nm.call("list") == []
    assert nm.call("list_rcaps") == []


def test_bad_rspec_is_one_line_exit_2_and_creates_nothing(nm: NMHandle, engine: docker.DockerClient,
                                                          tmp_path: Path) -> None:
    name = nm.slice("bad")
    rspec = tmp_path / "r.yaml"
    for text, field in [("cpu_share: lots\n", "cpu_share"), ("colour: blue\n", "colour"),
                        ("mem_mb: 1.5\n", "mem_mb"), ("tcp_ports: [22]\n", None)]:
        rspec.write_text(text)
        out = nm.cli("create", name, "--rspec", str(rspec))
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1, out.stderr
        if field is not None:
            assert out.returncode == 2
            assert lines[0].startswith(f"slicectl: {field}: expected "), lines
    assert engine.containers.list(all=True, filters={"label": f"org.slicectl.node={nm.cfg.node_id}"}) == []
    assert not account_exists(name)
    assert nm.call("list_rcaps") == []


def test_acquire_prints_only_the_rcap(nm: NMHandle, tmp_path: Path) -> None:
    rspec = tmp_path / "r.yaml"
    rspec.write_text("cpu_share: 5\n")
    out = nm.cli("acquire", str(rspec))
    assert out.returncode == 0, out.stderr
    rcap = out.stdout.strip()
    assert len(rcap) == 32 and int(rcap, 16) >= 0 and rcap == rcap.lower()
    assert out.stdout == rcap + "\n"
    info = json.loads(nm.cli("rcap", "show", rcap).stdout)
    assert info["state"] == "usable" and info["rspec"]["cpu_share"] == 5


def test_admission_refuses_more_than_1000_shares(nm: NMHandle) -> None:
    a = nm.call("acquire", {"cpu_share": 990})
    with pytest.raises(AdmissionError, match="cpu_share: asked for 20, but only 10 of 1000"):
        nm.call("acquire", {"cpu_share": 20})
    nm.call("release", a)
    nm.call("release", nm.call("acquire", {"cpu_share": 20}))


def test_rcap_unusable_before_start(nm: NMHandle) -> None:
    rcap = nm.call("acquire", {"start": "1h", "end": "2h"})
    with pytest.raises(StateError, match="usable from"):
        nm.call("bind", nm.slice("early"), rcap)
    assert nm.call("rcap_info", rcap)["state"] == "pending"
    assert nm.call("list") == []


def test_bind_twice_and_bind_adds_resources(nm: NMHandle, engine: docker.DockerClient) -> None:
    name = nm.slice("grow")
    first = nm.call("acquire", {"cpu_share": 10, "mem_mb": 128})
    info = nm.call("bind", name, first)
    with pytest.raises(StateError, match="bound to slice"):
        nm.call("bind", name, first)
    second = nm.call("acquire", {"cpu_share": 30, "mem_mb": 128, "create_vm": False})
    grown = nm.call("bind", name, second)
    assert grown["rspec"]["cpu_share"] == 40
    assert grown["rspec"]["mem_mb"] == 256
    assert grown["container_id"] == info["container_id"]  # same sliver, changed live
    c = engine.containers.get(f"sliver-{name}")
    cg = Path("/sys/fs/cgroup/cpu/slicectl") / c.id / "cpu.shares"
    assert int(cg.read_text()) == 40 * 256
    mem = Path("/sys/fs/cgroup/memory/slicectl") / c.id / "memory.limit_in_bytes"
    assert int(mem.read_text()) == 256 << 20
    # Releasing one of two rcaps shrinks the sliver; the last one cannot be released.
    nm.call("release", second)
    assert int(cg.read_text()) == 10 * 256
    with pytest.raises(StateError, match="last rcap"):
        nm.call("release", first)


def test_create_vm_false_needs_an_existing_sliver(nm: NMHandle) -> None:
    rcap = nm.call("acquire", {"create_vm": False})
    with pytest.raises(StateError, match="create_vm false"):
        nm.call("bind", nm.slice("novm"), rcap)
    assert nm.call("rcap_info", rcap)["state"] == "usable"


def test_split_passes_part_on(nm: NMHandle) -> None:
    big = nm.call("acquire", {"cpu_share": 100, "mem_mb": 2048, "disk_mb": 4096, "nofile": 4096,
                              "nproc": 2048, "net_min_kbit": 50, "tcp_ports": [40001, 40002]})
    part = nm.call("split", big, {"cpu_share": 40, "tcp_ports": [40002]})
    assert nm.call("get_rspec", big)["cpu_share"] == 60
    assert nm.call("get_rspec", big)["tcp_ports"] == [40001]
    assert nm.call("get_rspec", part)["tcp_ports"] == [40002]
    assert nm.call("rcap_info", part)["parent"] == big
    with pytest.raises(ValidationError, match="cpu_share: expected at most 59"):
        nm.call("split", big, {"cpu_share": 60})
    # Shares are conserved: 900 more fit beside the 100 held, not 901.
    with pytest.raises(AdmissionError):
        nm.call("acquire", {"cpu_share": 901})


def test_bad_calls_name_the_field(nm: NMHandle) -> None:
    with pytest.raises(ValidationError, match="^rcap: expected 32 lowercase hex digits"):
        nm.call("bind", nm.slice("x"), "nothex")
    rcap = nm.call("acquire", {})
    with pytest.raises(ValidationError, match="^slice: expected a name like site_name"):
        nm.call("bind", "Bad-Name", rcap)
    with pytest.raises(ValidationError, match=r"^keys\[0\]: expected an OpenSSH public key"):
        nm.call("bind", nm.slice("x"), rcap, {"keys": ["command=\"sh\" ssh-ed25519 AAAA"]})
    assert nm.call("list") == []
    assert nm.call("rcap_info", rcap)["state"] == "usable"
