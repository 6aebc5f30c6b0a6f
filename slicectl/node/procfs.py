"""What /proc tells of a host process: the container it runs in."""

from __future__ import annotations

import re
from pathlib import Path

_CID = re.compile(r"([0-9a-f]{64})")


def container_of_pid(pid: int) -> str | None:
    """The Docker container id in ``pid``'s cgroup path, or None for a host process."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return None
    m = _CID.search(text)
    return m.group(1) if m else None
