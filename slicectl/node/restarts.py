"""supervisord's event listener that counts restarts (supervisord keeps no such count).

Run by our supervisord as ``python -m slicectl.node.restarts COUNTS.json``; it speaks the
event listener protocol on stdin/stdout and keeps, per program, how often supervisord
brought it back after it died (:func:`slicectl.core.supervision.count_start`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from slicectl.core.supervision import count_start, parse_event_header


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """The listener and :func:`forget` change the counts one at a time."""
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def save(path: Path, counts: dict[str, int]) -> None:
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps(counts, sort_keys=True))
    os.replace(tmp, path)


def forget(path: Path, names: Iterable[str]) -> None:
    """Drop the counts of programs that are gone (a private node removed)."""
    gone = set(names)
    with locked(path):
        counts = load(path)
        if gone & set(counts):
            save(path, {k: v for k, v in counts.items() if k not in gone})


def load(path: Path) -> dict[str, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}


def listen(path: Path, stdin: TextIO, stdout: TextIO) -> None:
    while True:
        stdout.write("READY\n")
        stdout.flush()
        header = stdin.readline()
        if not header:
            return
        fields = parse_event_header(header)
        payload = stdin.read(int(fields.get("len", "0")))
        if fields.get("eventname") == "PROCESS_STATE_STARTING":
            with locked(path):
                save(path, count_start(load(path), parse_event_header(payload)))
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
