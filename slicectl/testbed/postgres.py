"""A throw-away PostgreSQL cluster for PLC's tests and benches: Debian's ``postgresql``
binaries, a cluster in a temporary directory on a free loopback port, removed after.

PostgreSQL refuses to run as root, so root runs it as the ``postgres`` user the package
creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from slicectl.core.errors import StateError


@dataclass(frozen=True)
class Cluster:
    """A running cluster; ``url`` names its server, ``database(name)`` a fresh database."""

    url: str
    port: int
    top: Path

    def database(self, name: str) -> str:
        """A new, empty database ``name`` (dropped first if it exists); its URL."""
        import psycopg

        with psycopg.connect(self.url + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.url}/{name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def bindir() -> Path:
    """The newest installed PostgreSQL's binaries.

    Raises:
        StateError: PostgreSQL is not installed (scripts/install-host.sh installs it).
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise StateError("PostgreSQL: expected Debian's postgresql under /usr/lib/postgresql, "
                         "found none (run scripts/install-host.sh)")
    return Path(found[-1]).parent


@contextmanager
def cluster(max_connections: int = 200) -> Iterator[Cluster]:
    """Start a cluster (trust auth, loopback only, fsync off: tests and benches only)."""
    bins = bindir()
    top = Path(tempfile.mkdtemp(prefix="slicectl-pg-"))
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(top, pw.pw_uid, pw.pw_gid)
    data, port = top / "data", _free_port()
    try:
        for cmd in ([str(bins / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                     "-E", "UTF8", "--no-sync"],
                    [str(bins / "pg_ctl"), "-D", str(data), "-w", "-l", str(top / "log"), "-o",
                     f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=off "
                     f"-c max_connections={max_connections}", "start"]):
            run = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, check=False)
            if run.returncode != 0:
                raise StateError(f"PostgreSQL: {cmd[0]} failed: {run.stderr.strip()[-300:]}")
        yield Cluster(f"postgresql://postgres@127.0.0.1:{port}", port, top)
    finally:
        subprocess.run(_as_postgres([str(bins / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True, check=False)
        shutil.rmtree(top, ignore_errors=True)
