"""The traffic auditor end to end: real slivers send to outside addresses through a private
node with its real admin sniffer; the auditor, in its real sidecar container, records it; a
real headless Chromium loads ``/``, follows the destination, finds the slice and its
contact; markup in a slice's description is shown as text and never runs; CSV and JSON say
what the page says; a restart of the container keeps every record."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from slicectl.core.netplan import handle
from slicectl.node import tc
from slicectl.node.config import NodeConfig
from slicectl.node.services import service_container_name
from slicectl.testbed.privnode import log_path, private_node, service_ports

from .conftest import NMHandle, Outside, gateway, wait_for
from .test_sniffer import send_udp

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


class Auditor:
    """The auditor sidecar of a private node (a container on a free port, host network)."""

    def __init__(self, nm: NMHandle, engine: docker.DockerClient, port: int) -> None:
        self.nm, self.engine, self.port = nm, engine, port
        self.base = f"http://127.0.0.1:{port}"
        self.container = service_container_name(nm.cfg, "auditd")

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return str(resp.read().decode())

    def answers(self) -> bool:
        try:
            return bool(self.get("/index.json"))
        except OSError:
            return False

    def restart(self) -> None:
        self.engine.containers.get(self.container).restart(timeout=10)
        wait_for(self.answers, 30, f"the auditor on {self.base} after a restart")


@pytest.fixture
def anm(node_cfg: NodeConfig, engine: docker.DockerClient) -> Iterator[tuple[NMHandle, Auditor]]:
    """A private node with its sniffer and its service sidecars on free ports."""
    ports = service_ports()
    with private_node(node_cfg, engine, daemons=True, services=ports) as cfg:
        nm = NMHandle(cfg=cfg, tag=cfg.state_dir.name, log_path=log_path(cfg))
        yield nm, Auditor(nm, engine, ports["auditd"])


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    driver_path = shutil.which("chromedriver")
    if driver_path is None or shutil.which("chromium") is None:
        pytest.fail("chromium and chromium-driver are missing: run scripts/install-host.sh")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SE_")}
    driver = webdriver.Chrome(options=opts, service=Service(driver_path, env=env))
    try:
        yield driver
    finally:
        driver.quit()


def table_rows(driver: webdriver.Chrome, table_id: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"table#{table_id} tr")
    return [[c.text for c in r.find_elements(By.CSS_SELECTOR, "th, td")] for r in rows]


def test_a_complaint_leads_to_the_slice_and_its_owner(
        anm: tuple[NMHandle, Auditor], engine: docker.DockerClient, outside: Outside,
        browser: webdriver.Chrome) -> None:
    dnm, auditor = anm
    culprit, other = dnm.slice("culprit"), dnm.slice("other")
    a = dnm.call("bind", culprit, dnm.call("acquire", {}), {
        "contacts": ["alice@example.org"], "description": "latency study " + EVIL})
    b = dnm.call("bind", other, dnm.call("acquire", {}), {"contacts": ["bob@example.net"]})
    send_udp(engine, a, outside.address, 5353, 40001, 7)
    send_udp(engine, b, gateway(dnm), 5354, 40002, 3)

    def recorded() -> bool:
        doc = json.loads(auditor.get(f"/dst/{outside.address}.json"))
        return sum(r["packets"] for r in doc["rows"]) >= 7

    wait_for(recorded, 30, "the culprit's packets in the auditor")

    browser.get(auditor.base + "/")
    assert dnm.cfg.node_id in browser.find_element(By.ID, "about").text
    browser.find_element(By.CSS_SELECTOR, f'table#by-dst a[href^="/dst/{outside.address}?"]'
                         ).click()
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Traffic to {outside.address}"
    rows = table_rows(browser, "to-dst")
    assert rows[0][:5] == ["slice", "proto", "dport", "packets", "bytes"]
    assert [r[:5] for r in rows[1:]] == [[culprit, "udp", "5353", "7", str(7 * 46)]]
    who = browser.find_element(By.CSS_SELECTOR, "div.slice")
    assert who.find_element(By.TAG_NAME, "h3").text == culprit
    contact = who.find_element(By.CSS_SELECTOR, "a.contact")
    assert (contact.text, contact.get_attribute("href")) == (
        "alice@example.org", "mailto:alice@example.org")
    # The description's markup is text on the page and never ran.
    assert who.find_element(By.CLASS_NAME, "description").text == "latency study " + EVIL
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert browser.find_elements(By.CSS_SELECTOR, "div.slice script, div.slice img") == []
    # The other slice sent elsewhere and is not named here.
    assert other not in browser.find_element(By.TAG_NAME, "body").text

    # CSV and JSON say what the page says.
    query = browser.current_url.split("?", 1)[1]
    csv_rows = list(csv.reader(io.StringIO(auditor.get(f"/dst/{outside.address}.csv?{query}"))))
    assert csv_rows == rows
    doc = json.loads(auditor.get(f"/dst/{outside.address}.json?{query}"))
    assert [[str(v) for v in r.values()] for r in doc["rows"]] == rows[1:]
    assert doc["slices"][culprit] == {"description": "latency study " + EVIL,
                                      "contacts": ["alice@example.org"], "stopped": ""}
    assert doc["drops"]["kernel"] == 0 and doc["drops"]["auditor"] == 0
    assert doc["records_total"] == 7
    assert {(r["src"], r["sport"], r["dport"]) for r in doc["records"]} == {
        (a["net"]["address"], 40001, 5353)}


def test_restart_loses_no_stored_records(anm: tuple[NMHandle, Auditor],
                                         engine: docker.DockerClient, outside: Outside) -> None:
    dnm, auditor = anm
    a = dnm.call("bind", dnm.slice("keep"), dnm.call("acquire", {}))
    send_udp(engine, a, outside.address, 6000, 40005, 20)
    wait_for(lambda: '"packets": 20' in auditor.get(f"/dst/{outside.address}.json"), 30,
             "20 packets recorded")
    auditor.restart()
    doc = json.loads(auditor.get(f"/dst/{outside.address}.json"))
    assert sum(r["packets"] for r in doc["rows"]) == 20
    assert doc["records_total"] == 20


def test_a_small_packet_flood_is_recorded_whole(anm: tuple[NMHandle, Auditor],
                                                engine: docker.DockerClient,
                                                outside: Outside) -> None:
    dnm, auditor = anm
    a = dnm.call("bind", dnm.slice("flood"), dnm.call("acquire", {"net_max_kbit": 100_000}))
    n = 30_000
    send_udp(engine, a, outside.address, 9999, 40009, n)

    def counted() -> int:
        doc = json.loads(auditor.get(f"/dst/{outside.address}.json"))
        return int(sum(r["packets"] for r in doc["rows"]))

    try:
        wait_for(lambda: counted() >= n, 60, f"{n} flood packets in the auditor")
    finally:
        doc = json.loads(auditor.get(f"/dst/{outside.address}.json"))
        klass = tc.read_classes(dnm.cfg.ifb).get(handle(0xC000 + a["xid"]))
        print("auditor:", counted(), "records_total", doc.get("records_total"), "drops",
              doc.get("drops"), "class packets", klass.packets if klass else None)
    assert counted() == n
    assert doc["records_total"] == n
    assert doc["drops"] == {"kernel": 0, "consumer": 0, "unknown": 0, "auditor": 0}


HOSTILE_WINDOWS = [("from=nan", "from"), ("from=inf", "from"), ("from=1e20", "from"),
                   ("from=-1", "from"), ("to=nan", "to"), ("from=0&to=1", "to"),
                   ("from=2000-01-01T00:00Z", "from")]


def test_hostile_windows_are_a_400_and_the_auditor_serves_on(
        anm: tuple[NMHandle, Auditor]) -> None:
    _, auditor = anm
    wait_for(auditor.answers, 30, "the auditor")
    for query, field in HOSTILE_WINDOWS:
        for path in ("/", "/dst/198.51.100.7.json", "/slice/some_slice", "/chart.svg"):
            with pytest.raises(urllib.error.HTTPError) as err:
                auditor.get(f"{path}?{query}")
            text = err.value.read().decode()
            assert err.value.code == 400 and text.count("\n") == 1, (path, text)
            assert text.startswith(f"bad request: {field}: expected"), (path, text)
    assert json.loads(auditor.get("/index.json"))["health"]["writer_error"] == ""
