"""The admin tools as the admin sliver runs them: the bundle on a bare python3, the pcap
they write (read back by the real tcpdump), the filter language, the tables."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from slicectl.admintools.bundle import bundle, initscript
from slicectl.admintools.main import main, rates, table
from slicectl.admintools.pcap import FILE_HEADER, Rec, parse_filter, pcap_record
from slicectl.core.errors import ValidationError
from slicectl.node.nm.slicestate import MAX_INITSCRIPT

pytestmark = pytest.mark.unit


def rec(proto: int = 6, sport: int = 40000, dport: int = 80, flags: int = 0x02,
        length: int = 60, src: str = "172.30.0.5", dst: str = "198.18.0.2") -> Rec:
    return Rec(1_800_000_000.25, 5, socket.inet_aton(src), socket.inet_aton(dst), sport,
               dport, proto, flags, length, 0)


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")
def test_tcpdump_reads_the_capture(tmp_path: Path) -> None:
    cap = tmp_path / "x.pcap"
    cap.write_bytes(FILE_HEADER + pcap_record(rec()) + pcap_record(rec(17, 5353, 53, 0, 80))
                    + pcap_record(rec(1, 8, 0, 0, 84)))
    out = subprocess.run(["tcpdump", "-nr", str(cap)], capture_output=True, text=True,
                         timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "172.30.0.5.40000 > 198.18.0.2.80: Flags [S]" in lines[0]
    assert "172.30.0.5.5353 > 198.18.0.2.53" in lines[1]
    assert "ICMP echo request" in lines[2]


@pytest.mark.parametrize(("expr", "hits"), [
    ([], 3), (["tcp"], 1), (["not", "tcp"], 2), (["port", "53"], 1),
    (["slice", "pl_a", "and", "udp"], 1), (["slice", "pl_b"], 0),
    (["dst", "198.18.0.2", "icmp"], 1), (["host", "10.0.0.1"], 0),
])
def test_filter(expr: list[str], hits: int) -> None:
    m = parse_filter(expr)
    recs = [rec(), rec(17, 5353, 53), rec(1, 8, 0)]
    assert sum(m(r, "pl_a") for r in recs) == hits


@pytest.mark.parametrize(("expr", "match"), [
    (["port", "x"], "^port: expected a port number"), (["host", "a.b"], "^host: expected an "
     "IPv4 address"), (["bogus"], "^expression: expected a term"), (["not"], "a term after not"),
    (["slice"], "^expression: expected a term"),
])
def test_filter_errors(expr: list[str], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        parse_filter(expr)


def test_table_and_rates() -> None:
    rows = [{"pid": 7, "slice": "pl_a", "cpu_s": 10.0, "cpu_pct": 50.0, "rss_kb": 1024,
             "command": "python3 loop.py"}]
    text = table(rows)
    assert text.splitlines()[0].split() == ["SLICE", "PID", "%CPU", "RSS", "COMMAND"]
    assert text.splitlines()[1].split() == ["pl_a", "7", "50.0", "1024", "python3", "loop.py"]
    assert rates(rows, [{**rows[0], "cpu_s": 11.0}], 2.0) == {7: 50.0}


def test_errors_are_one_line_and_usage_is_two(capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("SLICECTL_NM_SOCK", str(tmp_path / "none.sock"))
    assert main(["ps"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pl-ps: node manager at ") and err.count("\n") == 1
    assert main(["nope"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["kill"])
    assert e.value.code == 2


def test_the_bundle_runs_bare_and_the_initscript_fits(tmp_path: Path) -> None:
    app = tmp_path / "tools.pyz"
    app.write_bytes(bundle())
    for cmd in ("ps", "top", "kill", "stop", "start", "cap", "tcpdump", "audit"):
        run = subprocess.run([sys.executable, "-I", "-S", str(app), cmd, "--help"],
                             capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0 and f"usage: pl-{cmd}" in run.stdout, run.stderr
    text = initscript()
    assert len(text.encode()) <= MAX_INITSCRIPT
    script = text.replace("/usr/local/lib/slicectl-admin", str(tmp_path / "lib")).replace(
        "/usr/local/bin", str(tmp_path / "bin"))
    run = subprocess.run(["sh", "-c", script, "rc.vinit", "start"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    wrapper: Any = (tmp_path / "bin" / "pl-ps").read_text()
    assert f"{tmp_path}/lib/tools.pyz ps" in wrapper
    run = subprocess.run([str(tmp_path / "bin" / "pl-cap"), "--help"], capture_output=True,
                         text=True, timeout=30, check=False)
    assert run.returncode == 0 and "net_cap_max_kbit" in run.stdout, run.stderr


def test_the_node_is_the_slivers_default_gateway(tmp_path: Path) -> None:
    from slicectl.admintools.main import default_gateway
    from slicectl.core.errors import SlicectlError

    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway \tFlags\n"
                     "eth0\t00001EAC\t00000000\t0001\n"
                     "eth0\t00000000\t01001EAC\t0003\n")
    assert default_gateway(str(route)) == "172.30.0.1"
    route.write_text("Iface\tDestination\tGateway \tFlags\neth0\t00001EAC\t00000000\t0001\n")
    with pytest.raises(SlicectlError, match="^route: expected a default route, found none$"):
        default_gateway(str(route))


def test_the_audit_json_as_text() -> None:
    from slicectl.admintools.main import audit_text

    text = audit_text({"dst": "198.18.0.2", "rows": [{"slice": "pl_a", "packets": 3}],
                       "slices": {"pl_a": {"contacts": ["pi@x.org"]}}})
    assert text.splitlines() == ["dst: 198.18.0.2", "rows: 1", "  slice=pl_a  packets=3",
                                 "slices:", '  pl_a: {"contacts": ["pi@x.org"]}']
