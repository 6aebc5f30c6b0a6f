"""Credentials files: the node's PLC login (node id and key), and how secrets are written.
Standard library only: the node agent carries this module into its sliver."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def write_secret(path: Path, data: dict[str, object]) -> None:
    """``data`` as JSON, written whole (a temporary file renamed), mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


@dataclass(frozen=True)
class NodeCredentials:
    """What a node needs to log into PLC (hmac auth): PLC's URL and certificate, the
    node's id and key."""

    url: str
    cafile: str | None
    node_id: int
    hostname: str
    key: str

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "cafile": self.cafile, "node_id": self.node_id,
                "hostname": self.hostname, "key": self.key}

    @classmethod
    def read(cls, path: Path) -> NodeCredentials:
        data = json.loads(path.read_text())
        return cls(str(data["url"]), data.get("cafile"), int(data["node_id"]),
                   str(data["hostname"]), str(data["key"]))

    def write(self, path: Path) -> None:
        """Mode 0600, written whole."""
        write_secret(path, self.to_json())
