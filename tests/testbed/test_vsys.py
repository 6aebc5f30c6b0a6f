"""fd_tuntap across nodes (issue 15): a slice's slivers on two nodes build an overlay from
TUN devices vsys hands them, with a UDP encapsulator in each; the overlay works and its
packets show on the sending node's audit page as the slice's."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path

import pytest

from slicectl.core.vsys import default_vnet
from slicectl.testbed.drive import ENCAPSULATOR, Site, Testbed, ssh, ssh_ok, until

APPEAR_S = 30
PORT = 5555

@pytest.fixture(scope="module")
def site(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(testbed, "vsy", tmp_path_factory.mktemp("keys"))


def test_fd_tuntap_tunnels_between_nodes_and_the_audit_page_shows_it(site: Site) -> None:
    tb = site.tb
    a, b = tb.nodes[0], tb.nodes[1]
    name = site.slice("tun", [site.user], tags={"vsys": "fd_tuntap", "udp_ports": str(PORT)},
                      nodes=[a, b])
    key: Path = site.user.key
    vnet = default_vnet(name).rsplit(".", 1)[0]  # the same /24 on both nodes, unasked
    code = base64.b64encode(ENCAPSULATOR.encode()).decode()
    try:
        for node, mine, peer in ((a, f"{vnet}.1", b.address), (b, f"{vnet}.2", a.address)):
            until(lambda n=node: ssh_ok(key, name, n),  # type: ignore[misc]
                  APPEAR_S, f"{name} on {node.name}")
            ssh(key, name, node, f"echo {code} | base64 -d > /tmp/encap.py && nohup python3 "
                f"/tmp/encap.py {mine} {peer} {PORT} > /tmp/encap.log 2>&1 &")
            until(lambda n=node: "ready" in ssh(  # type: ignore[misc]
                key, name, n, "cat /tmp/encap.log").stdout, 30,
                f"the encapsulator on {node.name}", pause=0.5)
        out = ssh(key, name, a, f"ping -c 3 -W 3 {vnet}.2").stdout
        assert " 0% packet loss" in out, out + ssh(key, name, a, "cat /tmp/encap.log").stdout
        url = f"http://{a.address}/dst/{b.address}?format=json"

        def page() -> str:
            with urllib.request.urlopen(url, timeout=10) as r:
                return str(r.read().decode())

        until(lambda: name in page(), 90, f"{name} on {a.name}'s audit page for {b.address}",
              pause=2)
        text = json.dumps(json.loads(page()))
        assert site.user.email in text
        assert f"{vnet}." not in text  # the overlay's addresses never reach the wire
    finally:
        site.call(site.pi, "DeleteSlice", name)
