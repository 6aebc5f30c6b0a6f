"""The auditor's pages, in-process: a fake sniffer socket and a fake NM (real RPC server)
feed a real app; the HTML, CSV and JSON are checked against each other and for escaping."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auditd.config import AuditConfig
from auditd.directory import nm_directory
from auditd.store import Limits
from auditd.web import LINK, WRITER, make_app
from slicectl.core import sniffrecord as sr

from .auditd_helpers import FakeSniffer, fake_nm, hello, rec, records

NOW = float(int(time.time()) // 60 * 60)
EVIL = '<script>alert("x")</script><b onmouseover=alert(1)>'
SLIVERS = {
    "site_one": {"description": "measures latency " + EVIL,
                 "contacts": ["alice@example.org", "bob+pl@example.net"]},
    "site_two": {"description": "a CDN", "contacts": ["carol@example.com"],
                 "stopped": {"by": "slice:slicectl_agent", "at": "2027-01-15T08:00:00Z",
                             "reason": "stopped by PLC: the slice's enabled tag is 0 or less"}},
}
STOPPED_LINE = ("This slice is stopped 2027-01-15T08:00:00Z by slice:slicectl_agent: stopped by "
                "PLC: the slice's enabled tag is 0 or less.")

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Any]


class Tables(HTMLParser):
    """Every <table id=...> as a list of rows of cell texts; every a href; all text."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.links: list[tuple[str, str]] = []
        self.text: list[str] = []
        self.tags: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._href: str | None = None
        self._link_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "a":
            self._href, self._link_text = a.get("href") or "", []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "a" and self._href is not None:
            self.links.append((self._href, "".join(self._link_text)))
            self._href = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._href is not None:
            self._link_text.append(data)


def parse(body: str) -> Tables:
    t = Tables()
    t.feed(body)
    return t


@pytest.fixture
def nm_sock(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "nm" / "nm.sock"
    with fake_nm(path, SLIVERS):
        yield path


@pytest.fixture
async def sniffer(tmp_path: Path) -> AsyncIterator[FakeSniffer]:
    async with FakeSniffer(tmp_path / "sniffer" / "records.sock").running() as s:
        yield s


def config(tmp_path: Path, nm_sock: Path) -> AuditConfig:
    return AuditConfig(state_dir=tmp_path / "state", sniffer_sock=tmp_path / "sniffer" /
                       "records.sock", nm_sock=nm_sock, operator="Example Site <ops@example.org>")


async def start(aiohttp_client: MakeClient, cfg: AuditConfig,
                sniffer: FakeSniffer) -> Client:
    app = make_app(cfg, nm_directory(cfg.nm_sock), clock=lambda: NOW + 30)
    client: Client = await aiohttp_client(app)
    await sniffer.wait_client()
    return client


async def settle(client: Client, sniffer: FakeSniffer) -> None:
    """Wait until the app has read every frame the sniffer sent and committed them."""
    app = client.server.app
    assert app is not None
    while app[LINK].frames < len(sniffer.backlog):
        await asyncio.sleep(0.01)
    await asyncio.get_running_loop().run_in_executor(None, app[WRITER].sync)


TRAFFIC = [
    rec(NOW + 1, 1, "198.18.0.2", 80, length=100, flags=0x02),
    rec(NOW + 2, 1, "198.18.0.2", 80, length=60, flags=0x10),
    rec(NOW + 3, 1, "198.18.0.2", 443, length=40),
    rec(NOW + 4, 2, "198.18.0.2", 53, proto=17, length=70),
    rec(NOW + 5, 2, "203.0.113.9", 8080, length=50),
    rec(NOW + 6, 1, "198.18.0.2", 80, way=sr.IN),
]


async def fed(aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path,
              sniffer: FakeSniffer, *extra: bytes) -> Client:
    await sniffer.send(hello(), sr.json_frame(sr.SLICES, {"1": "site_one", "2": "site_two"}),
                       records(*TRAFFIC), *extra)
    client = await start(aiohttp_client, config(tmp_path, nm_sock), sniffer)
    await settle(client, sniffer)
    return client


async def test_index_summarises_by_destination_and_slice(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    resp = await client.get("/")
    assert resp.status == 200
    page = parse(await resp.text())
    by_dst = page.tables["by-dst"]
    assert by_dst[0] == ["dst", "packets", "bytes", "slices", "ports", "first", "last"]
    assert by_dst[1][:5] == ["198.18.0.2", "4", "270", "site_one site_two",
                             "tcp/80 tcp/443 udp/53"]
    assert by_dst[2][:4] == ["203.0.113.9", "1", "50", "site_two"]
    assert [row[:3] for row in page.tables["by-slice"][1:]] == [
        ["site_one", "3", "200"], ["site_two", "2", "120"]]
    text = " ".join(page.text)
    assert "node-x.example.org" in text and "Example Site <ops@example.org>" in text
    assert "<svg" in await resp.text() and "polyline" in await resp.text()
    assert any(href.startswith("/dst/198.18.0.2?") for href, _ in page.links)


async def test_destination_page_names_slices_descriptions_and_contacts(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    resp = await client.get("/dst/198.18.0.2")
    body = await resp.text()
    page = parse(body)
    assert [row[:5] for row in page.tables["to-dst"][1:]] == [
        ["site_one", "tcp", "80", "2", "160"], ["site_two", "udp", "53", "1", "70"],
        ["site_one", "tcp", "443", "1", "40"]]
    mailtos = {href for href, _ in page.links if href.startswith("mailto:")}
    assert mailtos == {"mailto:alice@example.org", "mailto:bob+pl@example.net",
                       "mailto:carol@example.com"}
    records_table = page.tables["records"]
    assert records_table[0] == ["time", "slice", "src", "sport", "dport", "proto", "flags",
                                "length"]
    assert [row[1] for row in records_table[1:]] == ["site_two", "site_one", "site_one",
                                                     "site_one"]
    assert records_table[-1][6] == "S"


async def test_a_slice_stopped_by_plc_says_so_and_when(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    for path in ("/dst/198.18.0.2", "/slice/site_two"):
        text = " ".join(parse(await (await client.get(path)).text()).text)
        assert STOPPED_LINE in text, path
    one = " ".join(parse(await (await client.get("/slice/site_one")).text()).text)
    assert "This slice is stopped" not in one
    doc = await (await client.get("/slice/site_two.json")).json()
    assert doc["stopped"] == STOPPED_LINE.removeprefix("This slice is ").removesuffix(".")


async def test_descriptions_with_markup_show_as_text(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    for path in ("/dst/198.18.0.2", "/slice/site_one"):
        body = await (await client.get(path)).text()
        page = parse(body)
        assert "script" not in page.tags and "b" not in page.tags
        assert EVIL in "".join(page.text)
        assert "&lt;script&gt;" in body


async def test_csv_and_json_match_the_html(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    for html_path, table_id, alt in [("/dst/198.18.0.2", "to-dst", "/dst/198.18.0.2"),
                                     ("/slice/site_two", "from-slice", "/slice/site_two"),
                                     ("/", "by-dst", "/index")]:
        html_rows = parse(await (await client.get(html_path)).text()).tables[table_id]
        csv_text = await (await client.get(alt + ".csv")).text()
        csv_rows = list(csv.reader(io.StringIO(csv_text)))
        as_format = await (await client.get(html_path + "?format=csv")).text()
        assert as_format == csv_text
        doc = json.loads(await (await client.get(alt + ".json")).text())
        json_rows = doc.get("rows", doc.get("by_destination"))
        drop = [i for i, k in enumerate(csv_rows[0]) if k == "ports_more"]
        trimmed = [[c for i, c in enumerate(row) if i not in drop] for row in csv_rows]
        assert trimmed == html_rows
        assert [[str(v) for k, v in row.items() if k != "ports_more"] for row in json_rows] \
            == html_rows[1:]


async def test_archive_window_finds_older_traffic(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    old = records(rec(NOW - 5 * 3600, 2, "192.0.2.77", 25, length=500))
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer, old)
    recent = parse(await (await client.get("/dst/192.0.2.77")).text())
    assert "to-dst" not in recent.tables
    resp = await client.get(f"/dst/192.0.2.77.json?from={NOW - 6 * 3600:.0f}"
                            f"&to={NOW - 4 * 3600:.0f}")
    doc = await resp.json()
    assert [(r["slice"], r["dport"], r["bytes"]) for r in doc["rows"]] == [("site_two", 25, 500)]
    assert doc["slices"]["site_two"]["contacts"] == ["carol@example.com"]
    assert doc["records_total"] == 1


async def test_drops_are_shown(aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path,
                               sniffer: FakeSniffer) -> None:
    drops = sr.json_frame(sr.DROPS, {"kernel": 12, "consumer": 3, "unknown": 0})
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer, drops)
    body = await (await client.get("/")).text()
    assert "not recorded" in body and "15" in body and "kernel 12" in body
    doc = await (await client.get("/dst/198.18.0.2.json")).json()
    assert doc["drops"] == {"kernel": 12, "consumer": 3, "unknown": 0, "auditor": 0}


async def test_search_redirects_to_the_destination(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    since = datetime.fromtimestamp(NOW - 7200, UTC)
    resp = await client.get(f"/search?ip=198.18.0.2&from={since:%Y-%m-%dT%H:%MZ}&to=",
                            allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"].startswith(f"/dst/198.18.0.2?from={since:%Y-%m-%dT%H:%M:%SZ}")


@pytest.mark.parametrize(("path", "field"), [
    ("/dst/198.18.0", "ip"),
    ("/dst/<b>.csv", "ip"),
    ("/dst/198.18.0.2?from=yesterday", "from"),
    ("/dst/198.18.0.2?to=soon", "to"),
    ("/dst/198.18.0.2?from=nan", "from"),
    ("/dst/198.18.0.2?from=inf", "from"),
    ("/dst/198.18.0.2?from=1e20", "from"),
    ("/dst/198.18.0.2?from=-1", "from"),
    ("/dst/198.18.0.2?to=nan", "to"),
    ("/index.json?from=1e20", "from"),
    ("/slice/site_one?from=nan", "from"),
    ("/chart.svg?to=inf", "to"),
    ("/search?ip=198.18.0.2&from=nan", "from"),
    (f"/dst/198.18.0.2?from={NOW - 31 * 86400:.0f}", "from"),  # past the 30-day roll-ups
    (f"/dst/198.18.0.2?from={NOW - 600:.0f}&to={NOW - 1200:.0f}", "from"),  # reversed
    ("/dst/198.18.0.2?format=xml", "format"),
    ("/slice/Bad!Name", "slice"),
    ("/search?ip=nowhere", "ip"),
    ("/chart.svg?slice=%3Cx%3E", "slice"),
])
async def test_bad_input_is_a_400_naming_the_field(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer,
        path: str, field: str) -> None:
    client = await start(aiohttp_client, config(tmp_path, nm_sock), sniffer)
    resp = await client.get(path)
    assert resp.status == 400
    text = await resp.text()
    assert text.count("\n") == 1 and text.startswith(f"bad request: {field}: expected")
    assert resp.content_type == "text/plain"  # what the caller typed is never rendered as HTML


async def test_restart_keeps_the_pages(aiohttp_client: MakeClient, tmp_path: Path,
                                       nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    await client.close()
    sniffer.backlog.clear()
    sniffer.clients.clear()
    again = await start(aiohttp_client, config(tmp_path, nm_sock), sniffer)
    doc = await (await again.get("/dst/198.18.0.2.json")).json()
    assert sum(r["packets"] for r in doc["rows"]) == 4


async def test_no_nm_is_said_not_hidden(aiohttp_client: MakeClient, tmp_path: Path,
                                        sniffer: FakeSniffer) -> None:
    cfg = config(tmp_path, tmp_path / "nowhere" / "nm.sock")
    await sniffer.send(hello(), sr.json_frame(sr.SLICES, {"1": "site_one"}), records(*TRAFFIC))
    client = await start(aiohttp_client, cfg, sniffer)
    await settle(client, sniffer)
    body = await (await client.get("/dst/198.18.0.2")).text()
    assert "node manager" in body and "site_one" in body


async def test_a_slice_the_nm_does_not_know_is_no_error(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    gone = records(rec(NOW + 7, 9, "198.18.0.2", 80))  # xid 9: no name, no sliver
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer, gone)
    body = await (await client.get("/dst/198.18.0.2")).text()
    assert "xid-9" in body and "node manager" not in body
    assert "no contact on record" in body


async def test_chart_draws_one_line_per_slice(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    resp = await client.get("/chart.svg")
    assert resp.content_type == "image/svg+xml"
    svg = parse(await resp.text())
    assert svg.tags.count("polyline") == 2
    assert {"site_one", "site_two"} <= set(svg.text)
    one = parse(await (await client.get("/chart.svg?slice=site_one")).text())
    assert one.tags.count("polyline") == 1 and "site_two" not in one.text


async def test_a_hostname_with_markup_shows_as_text(
        aiohttp_client: MakeClient, tmp_path: Path, sniffer: FakeSniffer) -> None:
    host = '<img src=x onerror=alert(1)>.example.org'
    with fake_nm(tmp_path / "nm2" / "nm.sock", SLIVERS, {"node_id": "n", "hostname": host}):
        client = await start(aiohttp_client, config(tmp_path, tmp_path / "nm2" / "nm.sock"),
                             sniffer)
        page = parse(await (await client.get("/")).text())
    assert "img" not in page.tags
    assert f"Traffic auditor: {host}" in page.text


async def test_records_and_counts_cover_the_same_whole_minutes(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    client = await fed(aiohttp_client, tmp_path, nm_sock, sniffer)
    # A window ending mid-minute (as a link made a second after the packets does).
    doc = await (await client.get(f"/dst/198.18.0.2.json?to={NOW + 2:.0f}")).json()
    assert sum(r["packets"] for r in doc["rows"]) == doc["records_total"] == 4


async def test_folded_destinations_are_shown_not_hidden(
        aiohttp_client: MakeClient, tmp_path: Path, nm_sock: Path, sniffer: FakeSniffer) -> None:
    scan = records(*(rec(NOW + 10 + i, 1, f"203.0.113.{10 + i}", 80, length=50)
                     for i in range(5)))
    await sniffer.send(hello(), sr.json_frame(sr.SLICES, {"1": "site_one", "2": "site_two"}),
                       records(*TRAFFIC), scan)
    cfg = replace(config(tmp_path, nm_sock), limits=Limits(rollup_rows=2))
    client = await start(aiohttp_client, cfg, sniffer)
    await settle(client, sniffer)

    page = parse(await (await client.get("/")).text())
    assert [row[:4] for row in page.tables["folded"]] == [
        ["slice", "other_destinations", "packets", "bytes"], ["site_one", "5", "5", "250"]]
    assert "at most 2 destinations" in "".join(page.text)
    by_slice = {row[0]: row for row in page.tables["by-slice"][1:]}
    assert by_slice["site_one"][1:5] == ["8", "450", "1", "5"]  # 3 rolled up + 5 folded
    assert by_slice["site_two"][4] == "0"

    doc = await (await client.get("/dst/203.0.113.10.json")).json()
    assert doc["rows"] == [] and doc["records_total"] == 1  # its full record is kept
    assert [(f["slice"], f["other_destinations"]) for f in doc["folded"]] == [("site_one", "5")]
    html = await (await client.get("/dst/203.0.113.10")).text()
    assert "may have sent to this address too" in html and 'id="folded"' in html
    one = await (await client.get("/slice/site_one.json")).json()
    assert [f["packets"] for f in one["folded"]] == [5]
    two = await (await client.get("/slice/site_two.json")).json()
    assert two["folded"] == []
