"""supervisord's event listener that counts restarts (supervisord keeps no such count).

Run by our supervisord as ``python -m slicectl.node.restarts COUNTS.json``; it speaks the
event listener protocol on stdin/stdout and keeps, per program, how often supervisord
brought it back after it died (:func:`slicectl.core.supervision.count_start`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from slicectl.core.supervision import count_start, parse_event_header


def save(path: Path, counts: dict[str, int]) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(counts, sort_keys=True))
    os.replace(tmp, path)


def load(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def listen(path: Path, stdin: TextIO, stdout: TextIO) -> None:
    counts = load(path)
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return
        fields = parse_event_header(header)
        payload = stdin.read(int(fields.get("len", "0")))
        if fields.get("eventname") == "PROCESS_STATE_STARTING":
            counts = count_start(counts, parse_event_header(payload))
            save(path, counts)
        stdout.write("RESULT 2\nOK")
        stdout.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m slicectl.node.restarts COUNTS.json", file=sys.stderr)
        return 2
    listen(Path(args[0]), sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
