"""Joining an existing PLC: the node's key (as the admin hands it over), checked by
logging in with it, becomes the node's credentials file. ``slicectl node join URL
--node-key FILE`` and ``make up PLC=URL NODE_KEY=FILE`` do this, then give the agent's
sliver those credentials."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from slicectl.core.errors import UsageError
from slicectl.plc.credentials import NodeCredentials

from .plcview import PLCView


def read_node_key(path: Path, node_id: int | None) -> tuple[int, str]:
    """(node id, key) from a key file: either PlanetLab's ``plnode.txt`` form
    (``NODE_ID=...`` and ``NODE_KEY=...`` lines) or the key alone (then ``node_id``
    must be given)."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise UsageError(f"--node-key {path}: expected a readable file, found {e.strerror}") from e
    pairs = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if "NODE_KEY" in pairs:
        key = pairs["NODE_KEY"].strip().strip('"')
        text_id = pairs.get("NODE_ID", "").strip().strip('"')
        if text_id:
            if not text_id.isdigit():
                raise UsageError(f"--node-key {path}: NODE_ID: expected a number, found "
                                 f"{text_id[:20]!r}")
            node_id = node_id or int(text_id)
    else:
        key = text
    if not key or len(key.split()) != 1:
        raise UsageError(f"--node-key {path}: expected the node's key (one word, or a "
                         "NODE_KEY= line), found none")
    if node_id is None:
        raise UsageError(f"--node-id: expected the node's id in PLC (or a NODE_ID= line in "
                         f"{path}), found none")
    return node_id, key


def join(url: str, key_file: Path, cafile: str | None, node_id: int | None,
         credentials: Path) -> NodeCredentials:
    """Check the key against PLC (GetSlivers as the node) and write the credentials."""
    nid, key = read_node_key(key_file, node_id)
    creds = NodeCredentials(url, cafile, nid, "", key)
    view = PLCView(creds).slivers()  # a ConnectionFailed names PLC and the fault
    creds = replace(creds, hostname=str(view.get("hostname", "")))
    creds.write(credentials)
    return creds
