"""Network virtualization against the real kernel: HTB classes on the IFB, the port
manager's DNAT/SNAT, counters. Peers are real: network namespaces acting as the outside
world (iperf3 runs there: slivers cannot reach listeners on the host)."""

from __future__ import annotations

import json
import secrets
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from slicectl.core.errors import AdmissionError
from slicectl.core.netplan import handle, parent_classid, sliver_tc
from slicectl.core.rspec import parse_rspec
from slicectl.node import tc
from slicectl.node.network import host_veth

from .conftest import NMHandle, Outside, free_port, gateway, make_sliver, sliver_exec


def iperf(engine: docker.DockerClient, info: dict[str, Any], server: str, port: int,
          seconds: int, streams: int = 1, udp_kbit: int = 0) -> float:
    """Run iperf3 in the sliver against ``server`` (TCP, or UDP offered at ``udp_kbit``);
    return the goodput in kbit/s."""
    udp = ["-u", "-b", f"{udp_kbit}k"] if udp_kbit else []
    code, out = sliver_exec(engine, info["container"],
                            ["iperf3", "-c", server, "-p", str(port), "-t", str(seconds),
                             "-P", str(streams), *udp, "-J"], user=str(info["uid"]))
    assert code == 0, out
    return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1000


class IperfServers:
    """iperf3 servers in the outside namespace (slivers cannot reach host listeners)."""

    def __init__(self, outside: Outside) -> None:
        self.outside = outside
        self.address = outside.address
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, count: int = 1) -> list[int]:
        ports = []
        for _ in range(count):
            port = free_port()
            self.procs.append(subprocess.Popen(
                ["ip", "netns", "exec", self.outside.ns, "iperf3", "-s", "-B", self.address,
                 "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            ports.append(port)
        time.sleep(0.5)
        return ports


@pytest.fixture
def iperf_servers(outside: Outside) -> Iterator[IperfServers]:
    servers = IperfServers(outside)
    yield servers
    for p in servers.procs:
        p.terminate()
        p.wait(10)


def test_classes_follow_the_rspec_and_go_with_the_sliver(nm: NMHandle,
                                                         engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "cls", net_min_kbit=300, net_max_kbit=2000, tcp_ports=[41001])
    held = tc.read_classes(nm.cfg.ifb)
    plan = sliver_tc(info["xid"], info["address"],
                     parse_rspec({"net_min_kbit": 300, "net_max_kbit": 2000}, time.time()), 100_000)
    for c in plan.classes:
        assert held[c.classid].ceil_bps == c.ceil_kbit * 125
        assert held[c.classid].rate_bps == c.rate_kbit * 125
    assert held[handle(0xC000)].ceil_bps == 100_000 * 125  # the node cap
    veth = host_veth(info["pid"])
    assert tc.has_redirect(veth)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert f"slicectl {info['name']}" in rules

    nm.call("destroy", info["name"])
    held = tc.read_classes(nm.cfg.ifb)
    assert not any(c.classid in held for c in plan.classes)
    filters = subprocess.run(["tc", "filter", "show", "dev", nm.cfg.ifb], capture_output=True,
                             text=True, check=True).stdout
    assert f"pref {plan.prio} " not in filters
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {veth}@" not in links
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    assert f"slicectl {info['name']}" not in rules


def test_cap_is_held(nm: NMHandle, engine: docker.DockerClient, iperf_servers: IperfServers) -> None:
    info = make_sliver(nm, "cap", net_max_kbit=4000)
    (port,) = iperf_servers(1)
    before = tc.read_classes(nm.cfg.ifb)[handle(0xC000 + info["xid"])].bytes
    t0 = time.monotonic()
    goodput = iperf(engine, info, iperf_servers.address, port, seconds=5)
    elapsed = time.monotonic() - t0
    sent = tc.read_classes(nm.cfg.ifb)[handle(0xC000 + info["xid"])].bytes - before
    wire_kbit = sent * 8 / 1000 / elapsed
    assert goodput <= 4000 * 1.05, (goodput, wire_kbit)
    assert goodput >= 4000 * 0.85, (goodput, wire_kbit)
    assert wire_kbit <= 4000 * 1.05, (goodput, wire_kbit)


def class_rates(nm: NMHandle, infos: list[dict[str, Any]], window_s: float) -> list[float]:
    """kbit/s each sliver's class sent over ``window_s``, from the kernel's counters."""
    ids = [handle(0xC000 + i["xid"]) for i in infos]
    before = tc.read_classes(nm.cfg.ifb)
    t0 = time.monotonic()
    time.sleep(window_s)
    after = tc.read_classes(nm.cfg.ifb)
    elapsed = time.monotonic() - t0
    return [(after[c].bytes - before[c].bytes) * 8 / 1000 / elapsed for c in ids]


def test_excess_shared_in_proportion_to_rates(nm: NMHandle, engine: docker.DockerClient,
                                              iperf_servers: IperfServers) -> None:
    nm.call("set_node", "net_cap_kbit", 8000)
    a = make_sliver(nm, "slow", net_min_kbit=1000, net_max_kbit=8000)
    b = make_sliver(nm, "fast", net_min_kbit=3000, net_max_kbit=8000)
    pa, pb = iperf_servers(2)
    # UDP offered above the cap keeps both classes backlogged, so the split is HTB's own
    # (TCP flows behind a long queue are window-limited and split it their own way).
    threads = [threading.Thread(target=iperf, args=(engine, i, iperf_servers.address, p, 8),
                                kwargs={"udp_kbit": 12_000}) for i, p in ((a, pa), (b, pb))]
    for t in threads:
        t.start()
    time.sleep(2.5)
    ra, rb = class_rates(nm, [a, b], 4)
    for t in threads:
        t.join(60)
    # Rates 1000 and 3000 plus the 4000 left shared 1:3 make 2000 and 6000 kbit/s.
    assert 2.2 <= rb / ra <= 4.0, (ra, rb)
    assert ra + rb <= 8000 * 1.05, (ra, rb)
    assert ra + rb >= 8000 * 0.85, (ra, rb)


def test_guarantee_holds_against_a_flood(nm: NMHandle, engine: docker.DockerClient,
                                         iperf_servers: IperfServers) -> None:
    nm.call("set_node", "net_cap_kbit", 10_000)
    calm = make_sliver(nm, "calm", net_min_kbit=6000, net_max_kbit=6000)
    flood = make_sliver(nm, "flood", net_max_kbit=10_000)
    pc, pf = iperf_servers(2)
    got: dict[str, float] = {}
    hog = threading.Thread(target=lambda: got.__setitem__(
        "flood", iperf(engine, flood, iperf_servers.address, pf, seconds=8, streams=4)))
    hog.start()
    time.sleep(1.5)
    got["calm"] = iperf(engine, calm, iperf_servers.address, pc, seconds=4)
    hog.join(60)
    assert got["calm"] >= 6000 * 0.85, got


def test_icmp_is_rate_limited(nm: NMHandle, engine: docker.DockerClient) -> None:
    info = make_sliver(nm, "ping", net_max_kbit=10_000)
    _code, out = sliver_exec(engine, info["container"],
                            ["ping", "-n", "-q", "-i", "0.01", "-s", "200", "-w", "3", gateway(nm)])
    received = int(out.split(" received")[0].rsplit(",", 1)[-1].strip().split()[0])
    # 300 echo requests of ~228 bytes in 3 s; the ICMP class passes ~16 kbit/s (~9 per second).
    assert received < 80, out
    assert received > 0, out


def test_reserved_port_reaches_its_sliver_from_outside(nm: NMHandle, engine: docker.DockerClient,
                                                       outside: Outside) -> None:
    port = 41000 + secrets.randbelow(1000)
    info = make_sliver(nm, "web", tcp_ports=[port], udp_ports=[port])
    c = engine.containers.get(info["container"])
    c.exec_run(["python3", "-m", "http.server", str(port)], user=str(info["uid"]), detach=True,
               workdir="/etc/slicectl")
    c.exec_run(["python3", "-m", "http.server", str(port + 1)], user=str(info["uid"]),
               detach=True, workdir="/etc/slicectl")
    url = f"http://{outside.node_address}:{port}/slice.json"
    deadline = time.monotonic() + 15
    while True:
        out = outside.run("curl", "-sS", "-m", "3", url)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["slice"] == info["name"]
    # Nothing else gets in: not an unreserved port of the node, not the sliver directly.
    assert outside.run("curl", "-sS", "-m", "3",
                       f"http://{outside.node_address}:{port + 1}/").returncode != 0
    assert outside.run("curl", "-sS", "-m", "3",
                       f"http://{info['address']}:{port + 1}/").returncode != 0
    # Packets the sliver sends from its port leave the node with that source port.
    listener = subprocess.Popen(
        ["ip", "netns", "exec", outside.ns, "python3", "-c",
         "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
         "s.bind(('0.0.0.0', 9999)); s.settimeout(10); d, a = s.recvfrom(100); print(a[0], a[1])"],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    code, out = sliver_exec(engine, info["container"], [
        "python3", "-c",
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('0.0.0.0', {port})); s.sendto(b'hi', ('{outside.address}', 9999))"],
        user=str(info["uid"]))
    assert code == 0, out
    seen, _ = listener.communicate(timeout=15)
    assert seen.split() == [outside.node_address, str(port)]


def test_port_grab_is_refused_and_freed_with_the_sliver(nm: NMHandle) -> None:
    info = make_sliver(nm, "owner", tcp_ports=[42424])
    with pytest.raises(AdmissionError, match=f"port 42424 is already reserved by slice {info['name']}"):
        nm.call("acquire", {"tcp_ports": [42424]})
    nm.call("destroy", info["name"])
    nm.call("acquire", {"tcp_ports": [42424]})


def test_counters_survive_a_restart(nm: NMHandle, engine: docker.DockerClient,
                                    iperf_servers: IperfServers) -> None:
    info = make_sliver(nm, "count", net_max_kbit=8000)
    (port,) = iperf_servers(1)
    iperf(engine, info, iperf_servers.address, port, seconds=2)
    deadline = time.monotonic() + 10
    while nm.call("get_sliver", info["name"])["net"]["bytes_sent_today"] < 1_000_000:
        assert time.monotonic() < deadline, "counters never reached the database"
        time.sleep(0.5)
    before = nm.call("get_sliver", info["name"])["net"]
    classes_before = tc.read_classes(nm.cfg.ifb)[handle(0xC000 + info["xid"])]
    nm.kill()
    nm.start()
    after = nm.call("get_sliver", info["name"])["net"]
    assert after["bytes_sent_today"] >= before["bytes_sent_today"]
    classes_after = tc.read_classes(nm.cfg.ifb)[handle(0xC000 + info["xid"])]
    assert classes_after.bytes >= classes_before.bytes  # the class was kept, not re-made
    # Restarting the sliver makes a new veth (counters restart in the kernel) but the
    # day's total keeps growing.
    nm.call("stop", info["name"])
    nm.call("start", info["name"])
    iperf(engine, info, iperf_servers.address, port, seconds=1)
    time.sleep(3)
    assert nm.call("get_sliver", info["name"])["net"]["bytes_sent_today"] > after["bytes_sent_today"]


def test_node_cap_changes_live(nm: NMHandle) -> None:
    nm.call("set_node", "net_cap_kbit", 20_000)
    assert tc.read_classes(nm.cfg.ifb)[handle(0xC000)].ceil_bps == 20_000 * 125
    make_sliver(nm, "guar", net_min_kbit=15_000, net_max_kbit=20_000)
    from slicectl.core.errors import ValidationError

    with pytest.raises(ValidationError, match="net_cap_kbit: expected at least the 15000 kbit/s"):
        nm.call("set_node", "net_cap_kbit", 10_000)
    out = nm.cli("node", "set", "net_cap_kbit", "30000")
    assert out.returncode == 0, out.stderr
    assert tc.read_classes(nm.cfg.ifb)[handle(0xC000)].ceil_bps == 30_000 * 125


def _rules_of(name: str) -> list[str]:
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in saved.splitlines() if f'"slicectl {name}"' in ln]


def test_a_slices_port_rules_change_alone_and_survive_a_rule_removed_from_outside(
        nm: NMHandle) -> None:
    a = make_sliver(nm, "pa", tcp_ports=[41011])
    b = make_sliver(nm, "pb", udp_ports=[41012])
    plain = make_sliver(nm, "pn")
    before_b = _rules_of(b["name"])
    assert len(_rules_of(a["name"])) == 4 and len(before_b) == 4
    assert _rules_of(plain["name"]) == []
    # One kernel-side read of the sliver's own classes, not a dump, checks a bind:
    own = tc.read_classes_of(nm.cfg.ifb, [parent_classid(a["xid"]), handle(0xBFFF)])
    assert list(own) == [parent_classid(a["xid"])]  # and none for a class that is not there
    nm.call("destroy", a["name"])
    assert _rules_of(a["name"]) == [] and _rules_of(b["name"]) == before_b
    # Someone deletes one of b's rules by hand: b's next change cannot delete it again,
    # so the chains are rebuilt from every sliver, and b's rules are whole once more.
    dnat = next(ln for ln in before_b if "DNAT" in ln and "--to-destination" in ln)
    subprocess.run(["iptables", "-w", "-t", "nat", *shlex.split(dnat.replace("-A ", "-D ", 1))],
                   check=True)
    nm.call("destroy", b["name"])
    assert _rules_of(b["name"]) == []
    assert "its port rules did not apply" in nm.log()
    c = make_sliver(nm, "pc", tcp_ports=[41013])
    assert len(_rules_of(c["name"])) == 4
