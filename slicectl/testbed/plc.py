"""A real ``slicectl plc serve`` process for tests and benches: started on a free loopback
port with its own state directory, found again through the root file it writes, stopped by
its pid."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slicectl.core.errors import StateError

#: The checkout this module belongs to (``python -m slicectl.cli`` runs from here).
CHECKOUT = Path(__file__).resolve().parents[2]


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


def start_server(state: Path, db: str | None, plain: bool, threads: int = 8,
                 host: str = "127.0.0.1", port: int = 0, cert_names: tuple[str, ...] = ()
                 ) -> Server:
    """Serve ``db`` (SQLite under ``state`` if None) over HTTPS, or plain HTTP; on
    ``host``:``port`` (0: a free one), with ``cert_names`` also in its certificate."""
    root_file = state / "root.json"
    cmd = [sys.executable, "-m", "slicectl.cli", "plc", "--root-file", str(root_file), "serve",
           "--state-dir", str(state), "--host", host, "--port", str(port), "--scrypt-n", "1024",
           "--threads", str(threads)]
    for name in cert_names:
        cmd += ["--cert-name", name]
    if db:
        cmd += ["--db", db]
    if plain:
        cmd.append("--plain")
    with (state / "serve.log").open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=CHECKOUT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not root_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise StateError(f"plc serve did not start: {(state / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.05)
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


