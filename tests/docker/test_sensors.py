"""The sensor server sidecar against the real engine, kernel and node manager.

One private node with its services (on a free port, never the node's 33080) serves every
test in this module: starting it costs a sidecar create and a readiness wait.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import docker
import pytest

from slicectl.core.netplan import chain_names, node_gateway
from slicectl.node.config import NodeConfig
from slicectl.node.services import IN_CGROUP, service_container_name
from slicectl.testbed.privnode import free_port, log_path, private_node, service_ports

from .conftest import NMHandle, Outside, make_sliver, sliver_exec, wait_for
from .test_network import iperf


@pytest.fixture(scope="module")
def snm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[tuple[NMHandle, int]]:
    ports = service_ports()
    with private_node(node_cfg, engine, daemons=True, services=ports) as cfg:
        yield NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg)), ports["sensors"]


def get(port: int, path: str, host: str = "127.0.0.1",
        headers: dict[str, str] | None = None) -> list[dict[str, str]]:
    req = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
        return list(csv.DictReader(io.StringIO(r.read().decode())))


def test_sidecar_runs_its_plan(snm: tuple[NMHandle, int], engine: docker.DockerClient) -> None:
    nm, _ = snm
    c = engine.containers.get(service_container_name(nm.cfg, "sensors"))
    hc = c.attrs["HostConfig"]
    assert c.status == "running"
    assert hc["NetworkMode"] == "host" and hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert hc["ReadonlyRootfs"] is True
    assert {m["Destination"]: m["RW"] for m in c.attrs["Mounts"]} == {
        "/run/slicectl/nm": False, "/run/slicectl/sniffer": False,
        f"{IN_CGROUP}/cpu": False, f"{IN_CGROUP}/cpuacct": False, f"{IN_CGROUP}/memory": False}
    code, out = sliver_exec(engine, c.name, ["sh", "-c", f"echo 1 > {IN_CGROUP}/cpu/x; "
                                                     "python3 -c 'import docker'"])
    assert code != 0 and "Read-only file system" in out


def nm_call_from_sidecar(engine: docker.DockerClient, container: str, method: str) -> str:
    code, out = sliver_exec(engine, container, [
        "/opt/venv/bin/python", "-c",
        "import sys; from slicectl.ipc.rpc import Client; from slicectl.core.errors import SlicectlError\n"
        "try: print('ok', Client('/run/slicectl/nm/nm.sock').call(sys.argv[1], *sys.argv[2:]))\n"
        "except SlicectlError as e: print(type(e).__name__, e)", method])
    assert code == 0, out
    return out


@pytest.mark.parametrize(
    ("method", "allowed"),
    [("list", True), ("status", True), ("acquire", False), ("list_rcaps", False),
     ("destroy", False)],
)
def test_nm_lets_services_read_only(snm: tuple[NMHandle, int], engine: docker.DockerClient,
                                    method: str, allowed: bool) -> None:
    nm, _ = snm
    out = nm_call_from_sidecar(engine, service_container_name(nm.cfg, "sensors"), method)
    if allowed:
        assert out.startswith("ok"), out
    else:
        assert out.startswith("PermissionDenied") and "service:sensors" in out, out


def test_a_cpu_loop_and_an_iperf3_stream_show(snm: tuple[NMHandle, int],
                                              engine: docker.DockerClient,
                                              outside: Outside) -> None:
    nm, port = snm
    cpu = make_sliver(nm, "cpu", cpu_share=20)
    net = make_sliver(nm, "net", net_max_kbit=4000)
    sliver_exec(engine, cpu["container"], ["sh", "-c", "timeout 30 sh -c 'while :; do :; done' "
                                           ">/dev/null 2>&1 &"])
    # The server is beyond the node: slivers cannot reach listeners on the host.
    iperf_port = free_port()
    server = subprocess.Popen(["ip", "netns", "exec", outside.ns, "iperf3", "-s", "-1", "-B",
                               outside.address, "-p", str(iperf_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: outside.run("ss", "-ltnH", f"sport = :{iperf_port}").stdout.strip()
                 != "", what="iperf3 server listening")
        kbit = iperf(engine, net, outside.address, iperf_port, seconds=4)
    finally:
        server.kill()
        server.wait()
    assert kbit > 1000

    def row(name: str) -> dict[str, str]:
        rows = get(port, f"/slices/{name}", headers={"Cache-Control": "max-age=0"})
        assert len(rows) == 1
        return rows[0]

    wait_for(lambda: float(row(cpu["name"])["cpu_s"] or 0) > 1.0, timeout=20,
             what="the CPU loop's seconds in /slices")
    wait_for(lambda: int(row(net["name"])["bytes_sent"]) > 1_000_000, timeout=20,
             what="the iperf3 bytes in /slices")
    r = row(net["name"])
    assert int(r["packets_received"]) > 10 and int(r["bytes_received"]) > 1000  # its ACKs
    assert r["cpu_share"] == "1"
    assert row(cpu["name"])["mem_cap_bytes"] == str(512 << 20)

    def bandwidth() -> dict[str, str]:
        return get(port, f"/bandwidth/{net['name']}", headers={"Cache-Control": "max-age=0"})[0]

    wait_for(lambda: int(bandwidth()["bytes_sent"]) > 1_000_000, timeout=10,
             what="the iperf3 bytes in /bandwidth")
    assert float(bandwidth()["rate_1m_kbit"]) > 100


def test_reachable_from_node_and_slivers_never_from_outside(
        snm: tuple[NMHandle, int], engine: docker.DockerClient, outside: Outside) -> None:
    nm, port = snm
    assert get(port, "/load")[0]["load1"]
    info = make_sliver(nm, "reach")
    code, out = sliver_exec(engine, info["container"],
                            ["curl", "-sS", "-m", "5", f"http://node:{port}/cpus"])
    assert code == 0 and out.splitlines()[0] == "cpus", out
    assert int(out.splitlines()[1]) == os.cpu_count()
    res = outside.run("curl", "-sS", "-m", "3", f"http://{outside.node_address}:{port}/cpus")
    assert res.returncode != 0 and "timed out" in res.stderr, (res.stdout, res.stderr)
    rules = subprocess.run(["iptables", "-w", "-S", chain_names(nm.cfg.node_id)["input"]],
                           capture_output=True, text=True, check=True).stdout
    assert f"--dport {port}" in rules and "-j DROP" in rules


def test_head_and_405_on_the_wire(snm: tuple[NMHandle, int]) -> None:
    _, port = snm
    req = urllib.request.Request(f"http://127.0.0.1:{port}/load", method="POST", data=b"x")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405 and e.value.headers["Allow"] == "GET, HEAD"


def test_a_connect_shows_in_connects_within_a_second(snm: tuple[NMHandle, int],
                                                     engine: docker.DockerClient) -> None:
    nm, port = snm
    info = make_sliver(nm, "conn")
    gw, target = node_gateway(nm.cfg.subnet), free_port()
    stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/connects?stream=1", timeout=10)
    assert stream.readline().decode().strip() == "time,slice,proto,dst,port"
    code, out = sliver_exec(engine, info["container"], [
        "python3", "-c", "import socket, time; s = socket.socket(); s.settimeout(2); "
        f"print(time.time()); s.connect_ex(('{gw}', {target}))"])
    assert code == 0, out
    sent_at = float(out.split()[0])
    line = stream.readline().decode().strip().split(",")
    got_at = time.time()
    stream.close()
    assert line[1:] == [info["name"], "tcp", gw, str(target)]
    assert got_at - sent_at < 1.0
    rows = get(port, "/connects")
    assert {"slice": info["name"], "proto": "tcp", "dst": gw, "port": str(target)}.items() \
        <= rows[-1].items()


def connect_from(engine: docker.DockerClient, info: dict[str, object], gw: str, port: int) -> None:
    code, out = sliver_exec(engine, str(info["container"]), [
        "python3", "-c", "import socket; s = socket.socket(); s.settimeout(2); "
        f"s.connect_ex(('{gw}', {port}))"])
    assert code == 0, out


def connects_seen_from(engine: docker.DockerClient, info: dict[str, object],
                       port: int) -> tuple[int, list[dict[str, str]]]:
    code, out = sliver_exec(engine, str(info["container"]), [
        "curl", "-sS", "-m", "5", "-w", "\\n%{http_code}", f"http://node:{port}/connects"])
    assert code == 0, out
    body, _, status = out.rpartition("\n")
    return int(status), list(csv.DictReader(io.StringIO(body)))


STREAM_UNTIL = """
import sys, urllib.request
s = urllib.request.urlopen(sys.argv[1], timeout=30)
for _ in range(50):
    line = s.readline().decode().strip()
    print(line, flush=True)
    if line.endswith("," + sys.argv[2]):
        break
"""


def test_connects_shows_a_sliver_only_its_own_slice(snm: tuple[NMHandle, int],
                                                    engine: docker.DockerClient) -> None:
    nm, port = snm
    a, b = make_sliver(nm, "seea"), make_sliver(nm, "seeb")
    admin = make_sliver(nm, "seeadm", admin_sniffer=True)
    gw, target = node_gateway(nm.cfg.subnet), free_port()
    connect_from(engine, a, gw, target)
    connect_from(engine, b, gw, target)
    names = {str(a["name"]), str(b["name"])}
    wait_for(lambda: names <= {r["slice"] for r in get(port, "/connects")},
             what="both connects at the node")
    for info, expected in ((a, {a["name"]}), (b, {b["name"]}), (admin, names)):
        status, rows = connects_seen_from(engine, info, port)
        assert status == 200
        assert {r["slice"] for r in rows} & (names | {admin["name"]}) == expected, info["name"]

    # the stream: a's reader gets its own connect, not b's that came first
    engine.containers.get(str(a["container"])).exec_run(
        ["sh", "-c", f"python3 -c '{STREAM_UNTIL}' 'http://node:{port}/connects?stream=1' "
         f"{target} >/tmp/stream.out 2>&1"], detach=True)

    def stream_lines() -> list[str]:
        return sliver_exec(engine, str(a["container"]), ["cat", "/tmp/stream.out"])[1].split()

    def streams() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        return int(next(ln for ln in text.splitlines()
                        if ln.startswith('slicectl_stream_clients{sensor="connects"}')).split()[1])

    # (the stream's own connection to the sensor server is a connect of a's too)
    wait_for(lambda: stream_lines()[:1] == ["time,slice,proto,dst,port"],
             what="a's stream subscribed and its header line read")
    connect_from(engine, b, gw, target)
    connect_from(engine, a, gw, target)
    wait_for(lambda: stream_lines()[-1:] and stream_lines()[-1].endswith(f",{target}"),
             what="a's own connect on a's stream")
    rows = stream_lines()[1:]
    assert rows and all(r.split(",")[1] == a["name"] for r in rows), rows  # never b's


def test_an_address_on_the_bridge_that_is_no_sliver_gets_403(snm: tuple[NMHandle, int]) -> None:
    nm, port = snm
    net = ipaddress.ip_network(nm.cfg.subnet)
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"slicectl-unk-{tag}", f"slcu{tag}", f"slcv{tag}"
    stranger = str(net.network_address + 200)  # below the slivers' half: no sliver has it
    gw = node_gateway(nm.cfg.subnet)
    cmds = [f"ip netns add {ns}", f"ip link add {host_if} type veth peer name {ns_if}",
            f"ip link set {ns_if} netns {ns}", f"ip link set {host_if} master {nm.cfg.bridge}",
            f"ip link set {host_if} up", f"ip -n {ns} addr add {stranger}/{net.prefixlen} dev {ns_if}",
            f"ip -n {ns} link set {ns_if} up"]
    try:
        for c in cmds:
            subprocess.run(c.split(), check=True, capture_output=True)
        for uri in ("/connects", "/connects?stream=1", "/load"):
            res = subprocess.run(["ip", "netns", "exec", ns, "curl", "-sS", "-m", "5", "-w",
                                  "\n%{http_code}", f"http://{gw}:{port}{uri}"],
                                 capture_output=True, text=True, timeout=30, check=False)
            assert res.returncode == 0, res.stderr
            assert res.stdout == (f"source {stranger}: expected the node or a sliver of node "
                                  f"{nm.cfg.node_id}, found neither\n\n403"), res.stdout
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
