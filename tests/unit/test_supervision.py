"""The supervision plan and its renderings (supervisord sections, systemd units), the
restart counter, the states the supervisors report, and bounded log records, as tables."""

from __future__ import annotations

import configparser
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from slicectl.core.errors import ValidationError
from slicectl.core.supervision import (
    DaemonState,
    Program,
    RestartPolicy,
    SupervisordPaths,
    count_start,
    owner_of,
    parse_systemctl_show,
    pick_backend,
    supervisord_file,
    supervisord_main,
    supervisord_state,
    systemd_state,
    systemd_unit,
)
from slicectl.node.config import NodeConfig
from slicectl.node.daemons import (
    HOST_DAEMONS,
    NM,
    SHIM,
    SNIFFER,
    BoundedFormatter,
    bound_record,
    program,
    source_root,
)
from slicectl.node.restarts import forget, listen

pytestmark = pytest.mark.unit

CFG = NodeConfig(node_id="test-ab12", state_dir=Path("/var/lib/slicectl/test/ab12"),
                 run_dir=Path("/run/slicectl/test/ab12"),
                 engine_sock=Path("/run/slicectl/docker.sock"), hostname="node1")
POLICY = RestartPolicy()
ODD = Program(name="slicectl-odd-n1", argv=("/usr/bin/env", "a b", "100%", "$HOME", 'q"t'),
              cwd="/srv/50%", log="/var/log/x%.log",
              env=(("A", "x y"), ("B", 'say "hi", 5%'), ("C", "$PATH")), keep_children=True)


# the plan -----------------------------------------------------------------------------

@pytest.mark.parametrize(("daemon", "name", "module", "after"), [
    (NM, "slicectl-nm-test-ab12", "slicectl.node.nm.daemon", ()),
    (SNIFFER, "slicectl-sniffer-test-ab12", "slicectl.node.sniffer", ("slicectl-nm-test-ab12",)),
    (SHIM, "slicectl-shim-test-ab12", "slicectl.node.shim", ("slicectl-nm-test-ab12",)),
])
def test_each_daemon_is_a_program_named_with_its_node(daemon: object, name: str, module: str,
                                                      after: tuple[str, ...]) -> None:
    d = next(x for x, _ in HOST_DAEMONS if x is daemon)
    p = program(CFG, d, Path(f"/var/log/{d.name}.log"))
    env = dict(p.env)
    assert (p.name, p.argv, p.after, p.log) == (
        name, (sys.executable, "-m", module), after, f"/var/log/{d.name}.log")
    assert p.cwd == env["PYTHONPATH"] == str(source_root())
    assert (env["SLICECTL_NODE_ID"], env["SLICECTL_RUN_DIR"], env["SLICECTL_STATE_DIR"]) == (
        "test-ab12", "/run/slicectl/test/ab12", "/var/lib/slicectl/test/ab12")
    assert len(env["SLICECTL_CODE"]) == 12  # new code: a changed program, restarted
    assert not p.keep_children


@pytest.mark.parametrize(("name", "argv"), [
    ("", ("x",)), ("Nm", ("x",)), ("nm:1", ("x",)), ("nm 1", ("x",)), ("nm", ()),
])
def test_a_program_needs_a_plain_name_and_a_command(name: str, argv: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError, match="expected"):
        Program(name=name, argv=argv, cwd="/", log="/x.log")


@pytest.mark.parametrize(("comm", "backend"), [
    ("systemd\n", "systemd"), ("systemd", "systemd"), ("init\n", "supervisord"),
    ("process_api\n", "supervisord"), ("bash\n", "supervisord"), ("", "supervisord"),
    ("systemd-journal\n", "supervisord"),
])
def test_systemd_only_when_it_is_pid_1(comm: str, backend: str) -> None:
    assert pick_backend(comm) == backend


# supervisord --------------------------------------------------------------------------

def sections(text: str) -> configparser.RawConfigParser:
    cp = configparser.RawConfigParser(interpolation=None)
    cp.read_string(text)
    return cp


@pytest.mark.parametrize(("key", "value"), [
    ("autostart", "false"),             # node up starts them in order, waiting for each
    ("autorestart", "true"),            # any death: back at once
    ("startsecs", "1"),                 # a daemon up 1 s is respawned without back-off
    ("startretries", "30"),
    ("stopsignal", "TERM"),
    ("stopwaitsecs", "15"),
    ("stopasgroup", "true"),
    ("killasgroup", "true"),
    ("redirect_stderr", "true"),
    ("stdout_logfile", "/var/log/nm.log"),
    ("stdout_logfile_maxbytes", str(10 << 20)),  # rotates by size ...
    ("stdout_logfile_backups", "3"),             # ... keeping three
])
def test_supervisord_program_section(key: str, value: str) -> None:
    p = program(CFG, NM, Path("/var/log/nm.log"))
    sec = sections(supervisord_file([p], POLICY))["program:slicectl-nm-test-ab12"]
    assert sec[key] == value


@pytest.mark.parametrize(("key", "value"), [
    ("command", "/usr/bin/env 'a b' 100%% '$HOME' 'q\"t'"),
    ("directory", "/srv/50%%"),
    ("stdout_logfile", "/var/log/x%%%%.log"),
    ("environment", 'A="x y",B=\'say "hi", 5%%\',C="$PATH"'),
    ("stopasgroup", "false"),  # keep_children: the engine's shims outlive a restart
    ("killasgroup", "false"),
])
def test_supervisord_escapes_and_keeps_children(key: str, value: str) -> None:
    assert sections(supervisord_file([ODD], POLICY))["program:slicectl-odd-n1"][key] == value


def test_supervisord_itself_reads_our_sections_back(tmp_path: Path) -> None:
    """Debian's supervisor parses the file (its own options code) to what we meant."""
    conf = tmp_path / "s.conf"
    paths = SupervisordPaths(str(tmp_path / "s.sock"), str(tmp_path / "s.pid"),
                             str(tmp_path / "s.log"), str(tmp_path / "conf.d"),
                             str(tmp_path / "counts.json"))
    (tmp_path / "conf.d").mkdir()
    conf.write_text(supervisord_main(paths, POLICY, ("/bin/true",), "/"))
    (tmp_path / "conf.d" / "n1.conf").write_text(supervisord_file([ODD], POLICY, 4242))
    probe = (
        "import json,sys\n"
        "from supervisor.options import ServerOptions\n"
        "o = ServerOptions(); o.realize(args=['-c', sys.argv[1]])\n"
        "out = {}\n"
        "for g in o.process_group_configs:\n"
        "    for p in g.process_configs:\n"
        "        out[p.name] = [p.command, p.environment, p.directory, p.stdout_logfile,\n"
        "                       p.autorestart is not False, p.startsecs, p.stopasgroup]\n"
        "print(json.dumps({'programs': out, 'socket': o.server_configs[0]['file']}))\n")
    cp = subprocess.run(["/usr/bin/python3", "-c", probe, str(conf)], capture_output=True,
                        text=True, check=False)
    assert cp.returncode == 0, cp.stderr
    got = json.loads(cp.stdout)
    assert got["socket"] == paths.socket
    assert got["programs"]["slicectl-odd-n1"] == [
        "/usr/bin/env 'a b' 100% '$HOME' 'q\"t'",
        {"A": "x y", "B": 'say "hi", 5%', "C": "$PATH"},
        "/srv/50%", "/var/log/x%.log", True, 1, False]
    assert set(got["programs"]) == {"slicectl-odd-n1", "slicectl-restarts"}


@pytest.mark.parametrize(("section", "key", "value"), [
    ("unix_http_server", "file", "/run/slicectl/supervisor/supervisor.sock"),
    ("unix_http_server", "chmod", "0700"),
    ("supervisord", "pidfile", "/run/slicectl/supervisor/supervisord.pid"),
    ("supervisord", "logfile_maxbytes", str(10 << 20)),
    ("supervisorctl", "serverurl", "unix:///run/slicectl/supervisor/supervisor.sock"),
    ("eventlistener:slicectl-restarts", "events", "PROCESS_STATE_STARTING"),
    ("eventlistener:slicectl-restarts", "command",
     "/py -m slicectl.node.restarts /run/slicectl/supervisor/restarts.json"),
    ("eventlistener:slicectl-restarts", "environment", 'SLICECTL_CODE="abc"'),
    ("include", "files", "/run/slicectl/supervisor/conf.d/*.conf"),
])
def test_our_supervisord_has_its_own_socket_and_config(section: str, key: str,
                                                       value: str) -> None:
    base = "/run/slicectl/supervisor"
    paths = SupervisordPaths(f"{base}/supervisor.sock", f"{base}/supervisord.pid",
                             "/var/log/slicectl/supervisord.log", f"{base}/conf.d",
                             f"{base}/restarts.json")
    text = supervisord_main(paths, POLICY, ("/py", "-m", "slicectl.node.restarts"), "/src",
                            (("SLICECTL_CODE", "abc"),))
    assert sections(text)[section][key] == value


@pytest.mark.parametrize("value", ['a"b\'c', '"x', "x'", "'"])
def test_a_value_supervisord_cannot_quote_is_refused(value: str) -> None:
    p = Program(name="p", argv=("x",), cwd="/", log="/x.log", env=(("K", value),))
    with pytest.raises(ValidationError, match="environment K: expected a value supervisord"):
        supervisord_file([p], POLICY)


@pytest.mark.parametrize(("owner", "found"), [(4242, 4242), (None, None)])
def test_a_private_nodes_file_names_its_owner(owner: int | None, found: int | None) -> None:
    assert owner_of(supervisord_file([ODD], POLICY, owner)) == found


@pytest.mark.parametrize(("counts", "event", "after"), [
    ({}, {"processname": "nm", "from_state": "STOPPED"}, {"nm": 0}),   # node up
    ({"nm": 0}, {"processname": "nm", "from_state": "EXITED"}, {"nm": 1}),   # died, back
    ({"nm": 1}, {"processname": "nm", "from_state": "BACKOFF"}, {"nm": 2}),  # died young
    ({"nm": 2}, {"processname": "nm", "from_state": "FATAL"}, {"nm": 0}),    # operator
    ({"nm": 2}, {"processname": "nm", "from_state": "STOPPED"}, {"nm": 0}),
    ({"nm": 2}, {"processname": "shim", "from_state": "EXITED"}, {"nm": 2, "shim": 1}),
    ({"nm": 2}, {"from_state": "EXITED"}, {"nm": 2}),
])
def test_restarts_count_what_the_supervisor_brought_back(
        counts: dict[str, int], event: dict[str, str], after: dict[str, int]) -> None:
    assert count_start(counts, event) == after


def test_the_listener_speaks_supervisords_protocol(tmp_path: Path) -> None:
    events = [("PROCESS_STATE_STARTING", "processname:nm groupname:nm from_state:STOPPED tries:0"),
              ("PROCESS_STATE_STARTING", "processname:nm groupname:nm from_state:EXITED tries:0"),
              ("PROCESS_STATE_RUNNING", "processname:nm groupname:nm from_state:STARTING pid:9"),
              ("PROCESS_STATE_STARTING", "processname:nm groupname:nm from_state:BACKOFF tries:1")]
    stdin = "".join(f"ver:3.0 server:supervisor serial:{i} pool:l poolserial:{i} "
                    f"eventname:{name} len:{len(body)}\n{body}"
                    for i, (name, body) in enumerate(events))
    out = io.StringIO()
    listen(tmp_path / "counts.json", io.StringIO(stdin), out)
    assert out.getvalue() == "READY\nRESULT 2\nOK" * 4 + "READY\n"
    assert json.loads((tmp_path / "counts.json").read_text()) == {"nm": 2}


@pytest.mark.parametrize(("info", "state"), [
    (None, DaemonState("p", "ABSENT", None, None, 0)),
    ({"statename": "RUNNING", "pid": 77, "start": 1000, "now": 1042},
     DaemonState("p", "RUNNING", 77, 42.0, 3)),
    ({"statename": "BACKOFF", "pid": 0, "start": 1000, "now": 1042},
     DaemonState("p", "BACKOFF", None, None, 3)),
    ({"statename": "STOPPED", "pid": 0, "start": 0, "now": 1042},
     DaemonState("p", "STOPPED", None, None, 3)),
])
def test_supervisord_state(info: dict[str, object] | None, state: DaemonState) -> None:
    assert supervisord_state("p", info, {"p": 3, "q": 9}) == state


# systemd --------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "Restart=always",
    "RestartSec=200ms",
    "StartLimitIntervalSec=0",      # never gives up on a crash loop
    "Type=simple",
    "TimeoutStopSec=15s",
    "KillMode=control-group",
    "StandardOutput=journal",       # journald bounds and rotates
    "SyslogIdentifier=slicectl-shim-test-ab12",
    "After=network.target slicectl-nm-test-ab12.service",
    f'ExecStart="{sys.executable}" "-m" "slicectl.node.shim"',
    'Environment="SLICECTL_NODE_ID=test-ab12"',
])
def test_systemd_unit(line: str) -> None:
    text = systemd_unit(program(CFG, SHIM, Path("/var/log/shim.log")), POLICY)
    assert line in text.splitlines()


@pytest.mark.parametrize("line", [
    "ExecStart=\"/usr/bin/env\" \"a b\" \"100%%\" \"$$HOME\" \"q\\\"t\"",
    "WorkingDirectory=/srv/50%%",
    'Environment="A=x y"',
    'Environment="B=say \\"hi\\", 5%%"',
    'Environment="C=$$PATH"',
    "KillMode=process",             # the engine's shims, sshd's sessions survive
])
def test_systemd_escapes_and_keeps_children(line: str) -> None:
    assert line in systemd_unit(ODD, POLICY).splitlines()


@pytest.mark.parametrize(("show", "state"), [
    ("LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=55\nNRestarts=2\n"
     "ExecMainStartTimestampMonotonic=1000000\n", DaemonState("u", "RUNNING", 55, 4.0, 2)),
    ("LoadState=loaded\nActiveState=activating\nSubState=auto-restart\nMainPID=0\n"
     "NRestarts=7\nExecMainStartTimestampMonotonic=1000000\n",
     DaemonState("u", "BACKOFF", None, None, 7)),
    ("LoadState=loaded\nActiveState=failed\nSubState=failed\nMainPID=0\nNRestarts=0\n",
     DaemonState("u", "FATAL", None, None, 0)),
    ("LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\nNRestarts=0\n",
     DaemonState("u", "ABSENT", None, None, 0)),
    ("LoadState=loaded\nActiveState=inactive\nSubState=dead\nMainPID=0\n",
     DaemonState("u", "STOPPED", None, None, 0)),
])
def test_systemd_state(show: str, state: DaemonState) -> None:
    assert systemd_state("u", parse_systemctl_show(show), 5_000_000) == state


# bounded log records ---------------------------------------------------------------------

@pytest.mark.parametrize(("text", "limit", "expect"), [
    ("short", 4096, "short"),
    ("x" * 4096, 4096, "x" * 4096),
    ("x" * 5000, 100, "x" * 79 + " ... [4900 bytes cut]"),
    ("é" * 100, 51, "é" * 15 + " ... [149 bytes cut]"),  # never half a character
])
def test_a_record_is_cut_to_its_bound(text: str, limit: int, expect: str) -> None:
    got = bound_record(text, limit)
    assert got == expect
    assert len(got.encode()) <= limit


def test_a_traceback_is_cut_with_its_message() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(BoundedFormatter("%(levelname)s %(message)s", limit=300))
    log = logging.getLogger("test.bounded")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("v" * 10_000)
        except ValueError:
            log.exception("bad request %s", "m" * 10_000)
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert len(out.encode()) <= 301  # the record and its newline
    assert out.startswith("ERROR bad request mmm") and "bytes cut]" in out


def test_a_removed_nodes_counts_are_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "counts.json"
    path.write_text(json.dumps({"slicectl-nm-a": 2, "slicectl-shim-a": 1, "slicectl-nm-b": 3}))
    forget(path, ["slicectl-nm-a", "slicectl-shim-a", "slicectl-sniffer-a"])
    assert json.loads(path.read_text()) == {"slicectl-nm-b": 3}
