"""The plc tier: a real ``slicectl plc serve`` process per test module and database kind,
talked to with ``xmlrpc.client`` over real HTTP(S). PostgreSQL runs as its own cluster in
a temporary directory (Debian's ``postgresql``, see scripts/install-host.sh), removed after.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/plc/" in str(item.fspath):
            item.add_marker(pytest.mark.plc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: root runs it as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass(frozen=True)
class Postgres:
    url: str
    port: int


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run scripts/install-host.sh (Debian's postgresql)")
    bindir = Path(found[-1]).parent
    top = Path(tempfile.mkdtemp(prefix="slicectl-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(top, pw.pw_uid, pw.pw_gid)
    data, port = top / "data", free_port()
    try:
        subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                     "-U", "postgres", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True)
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l",
                                     str(top / "log"), "-o",
                                     f"-c listen_addresses=127.0.0.1 -p {port} -k {top} "
                                     "-c fsync=off -c max_connections=200", "start"]),
                       check=True, capture_output=True)
        yield Postgres(f"postgresql://postgres@127.0.0.1:{port}", port)
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)


def create_database(pg: Postgres, name: str) -> str:
    import psycopg
    with psycopg.connect(pg.url + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{pg.url}/{name}"


@dataclass
class Server:
    """A running ``slicectl plc serve``."""

    url: str
    cafile: str | None
    root: dict[str, Any]
    proc: subprocess.Popen[bytes]
    state: Path

    def proxy(self) -> xmlrpc.client.ServerProxy:
        ctx = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        return xmlrpc.client.ServerProxy(self.url, allow_none=True, context=ctx)


def start_server(state: Path, db: str | None, plain: bool) -> Server:
    root_file = state / "root.json"
    cmd = [sys.executable, "-m", "slicectl.cli", "plc", "--root-file", str(root_file), "serve",
           "--state-dir", str(state), "--host", "127.0.0.1", "--port", "0", "--scrypt-n", "1024"]
    if db:
        cmd += ["--db", db]
    if plain:
        cmd.append("--plain")
    log = (state / "serve.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not root_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"plc serve did not start:\n{(state / 'serve.log').read_text()}")
        time.sleep(0.05)
    import json
    data = json.loads(root_file.read_text())
    root = {k: data[k] for k in ("AuthMethod", "Username", "AuthString")}
    return Server(data["url"], data["cafile"], root, proc, state)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    state = tmp_path_factory.mktemp(f"plc-{request.param}")
    if request.param == "sqlite":
        srv = start_server(state, None, plain=False)  # HTTPS with the certificate it made
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        name = f"plc_{request.module.__name__.rsplit('.', 1)[-1]}"
        srv = start_server(state, create_database(pg, name), plain=True)
    try:
        yield srv
    finally:
        stop_server(srv)
