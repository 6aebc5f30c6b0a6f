"""PLCAPI on the wire: a real server, a real client, on SQLite (HTTPS) and PostgreSQL
(plain HTTP on loopback)."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
import threading
import xmlrpc.client
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from slicectl.plc.auth import hmac_value
from slicectl.testbed.plc import CHECKOUT as ROOT
from slicectl.testbed.plc import Server


def raw_post(server: Server, body: bytes, path: str = "/PLCAPI/", method: str = "POST"
             ) -> tuple[int, bytes]:
    u = urlsplit(server.url)
    conn: http.client.HTTPConnection
    if u.scheme == "https":
        conn = http.client.HTTPSConnection(u.hostname or "", u.port,
                                           context=ssl.create_default_context(cafile=server.cafile))
    else:
        conn = http.client.HTTPConnection(u.hostname or "", u.port)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "text/xml"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_introspection_and_auth(server: Server) -> None:
    p = server.proxy()
    assert "GetSlivers" in p.system.listMethods()
    assert p.system.methodSignature("GetSites")[0] == ["array", "struct"]
    assert "Returns: int" in p.system.methodHelp("AddSite")
    assert p.AuthCheck(server.root) == 1
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.AuthCheck({**server.root, "AuthString": "wrong"})
    assert e.value.faultCode == 103
    session = p.GetSession(server.root)
    assert p.AuthCheck({"AuthMethod": "session", "session": session}) == 1
    assert isinstance(p.GetSites({"AuthMethod": "anonymous"}), list)


def test_node_hmac_over_the_wire(server: Server) -> None:
    p = server.proxy()
    site = p.AddSite(server.root, {"name": "Wire", "abbreviated_name": "W", "login_base": "wire"})
    nid = p.AddNode(server.root, site, {"hostname": "n1.wire.example"})
    key = p.GetNodeKey(server.root, nid)
    auth = {"AuthMethod": "hmac", "node_id": nid, "value": hmac_value(key, [])}
    view = p.GetSlivers(auth)
    assert view["node_id"] == nid and view["slivers"] == []
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.GetSlivers({**auth, "value": "0" * 40})
    assert e.value.faultCode == 103


def test_bad_bodies(server: Server) -> None:
    assert raw_post(server, b"this is not xml")[0] == 400
    assert raw_post(server, b"")[0] == 400
    assert raw_post(server, b"<?xml version='1.0'?><!DOCTYPE a [<!ENTITY b 'c'>]><a/>")[0] == 400
    assert raw_post(server, b"", method="GET")[0] == 405
    assert raw_post(server, b"x" * (5 << 20))[0] == 413
    status, body = raw_post(server, xmlrpc.client.dumps((), "system.listMethods").encode(),
                            path="/PLCAPI")
    assert status == 200 and b"GetSlivers" in body
    def int_call(digits: int) -> bytes:
        return (b"<?xml version='1.0'?><methodCall><methodName>GetSites</methodName><params>"
                b"<param><value><struct><member><name>AuthMethod</name><value><string>anonymous"
                b"</string></value></member></struct></value></param><param><value><int>"
                + b"9" * digits + b"</int></value></param></params></methodCall>")
    status, body = raw_post(server, int_call(50))
    assert status == 200 and b"<name>faultCode</name>" in body and b"32-bit" in body
    assert raw_post(server, int_call(5000))[0] == 400  # past Python's int digit limit


@pytest.mark.parametrize("args", [
    ("GetSites", ["not a struct"]),
    ("GetSites", [{"AuthMethod": "anonymous"}, {"login_base": {"deep": [1]}}]),
    ("AddSite", [{"AuthMethod": "anonymous"}, {}]),
    ("GetSites", [{"AuthMethod": "anonymous"}, None, ["no_such_field"]]),
    ("GetSites", [{"AuthMethod": "anonymous"}, None, None, None]),
    ("NoSuchMethod", []),
    ("GetSites", [{"AuthMethod": "anonymous"}, "x" * 1_000_000]),
])
def test_bad_calls_are_faults(server: Server, args: tuple[str, list[Any]]) -> None:
    method, params = args
    with pytest.raises(xmlrpc.client.Fault) as e:
        getattr(server.proxy(), method)(*params)
    assert e.value.faultCode in (100, 101, 102, 103, 108)
    assert "Traceback" not in e.value.faultString


def test_concurrent_clients(server: Server) -> None:
    p = server.proxy()
    p.AddSite(server.root, {"name": "Conc", "abbreviated_name": "C", "login_base": "conc",
                            "max_slices": 100})
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            q = server.proxy()
            for j in range(5):
                q.AddSlice(server.root, {"name": f"conc_s{i}_{j}"})
                assert q.GetSlices(server.root, f"conc_s{i}_{j}", ["name"]) == [
                    {"name": f"conc_s{i}_{j}"}]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(p.GetSlices(server.root, {"name": "conc_*"}, ["slice_id"])) == 40


def test_events_record_the_delete(server: Server) -> None:
    p = server.proxy()
    p.AddSite(server.root, {"name": "Ev", "abbreviated_name": "E", "login_base": "ev"})
    sid = p.AddSlice(server.root, {"name": "ev_gone"})
    p.DeleteSlice(server.root, "ev_gone")
    ev = p.GetEvents(server.root, {"method": "DeleteSlice", "-SORT": "-event_id", "-LIMIT": 1})
    assert ev[0]["object_ids"] == [sid] and ev[0]["caller"] == server.root["Username"]


def test_plain_http_only_on_loopback(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "slicectl.cli", "plc", "--root-file",
                          str(tmp_path / "r.json"), "serve", "--state-dir", str(tmp_path),
                          "--host", "0.0.0.0", "--plain"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "loopback" in run.stderr
