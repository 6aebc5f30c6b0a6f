"""What every area of the command line shares: the handler type, output and file helpers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from slicectl.core.errors import UsageError
from slicectl.node.config import NodeConfig

Handler = Callable[[argparse.Namespace, NodeConfig], int]
#: Adds a top-level command: (name, handler, help) -> its parser.
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def read_text(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot read it ({e.strerror})") from e


def keys_from_files(paths: Sequence[str]) -> list[str]:
    keys: list[str] = []
    for p in paths:
        keys += [ln.strip() for ln in read_text(p, "key file").splitlines()
                 if ln.strip() and not ln.startswith("#")]
    return keys


def output_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-o", "--output", choices=("table", "json"), default="table")
