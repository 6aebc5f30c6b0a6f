"""WaitForChange on the wire: a node learns of a write at once, waiting holds no thread."""

from __future__ import annotations

import threading
import time
import xmlrpc.client
from typing import Any

import pytest

from slicectl.plc.auth import hmac_value
from slicectl.testbed.plc import Server


def _node(server: Server, name: str) -> dict[str, Any]:
    p = server.proxy()
    site = p.AddSite(server.root, {"name": name, "abbreviated_name": name, "login_base": name})
    nid = p.AddNode(server.root, site, {"hostname": f"n1.{name}.example"})
    key = p.GetNodeKey(server.root, nid)
    return {"AuthMethod": "session",
            "session": p.GetSession({"AuthMethod": "hmac", "node_id": nid,
                                     "value": hmac_value(key, [])})}


def test_a_waiting_node_learns_of_a_write_at_once(server: Server) -> None:
    auth = _node(server, "chg")
    p = server.proxy()
    now = p.WaitForChange(auth, -1)  # -1: the current number, at once
    t0 = time.monotonic()
    assert p.WaitForChange(auth, now, 1) == now  # nothing changed: after the timeout
    assert 0.9 < time.monotonic() - t0 < 5

    got: list[tuple[int, float]] = []

    def wait() -> None:
        got.append((server.proxy().WaitForChange(auth, now, 30), time.monotonic()))

    waiters = [threading.Thread(target=wait) for _ in range(40)]  # more than its 8 threads
    for w in waiters:
        w.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    assert p.GetSites({"AuthMethod": "anonymous"}, {"login_base": "chg"}, ["login_base"])  \
        == [{"login_base": "chg"}]  # served while 40 wait
    assert time.monotonic() - t0 < 2
    p.UpdateSite(server.root, "chg", {"url": "https://chg.example"})
    written = time.monotonic()
    for w in waiters:
        w.join(10)
    assert len(got) == 40
    assert all(n > now for n, _ in got)
    assert max(at for _, at in got) - written < 2


def test_only_nodes_and_admins_wait_and_arguments_are_checked(server: Server) -> None:
    p = server.proxy()
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.WaitForChange({"AuthMethod": "anonymous"}, 0)
    assert e.value.faultCode == 108
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.WaitForChange(server.root, "soon")
    assert e.value.faultCode == 102
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.WaitForChange(server.root, 0, -5)
    assert e.value.faultCode == 102
    assert isinstance(p.WaitForChange(server.root, -1, 60), int)
