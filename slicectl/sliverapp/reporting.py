"""A sliver program tells the node manager how it is doing (``report_service``; see
:mod:`slicectl.node.nm.reports` for the fields). Standard library only: it runs in the
program's bundle."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from slicectl.core.errors import SlicectlError

log = logging.getLogger("slicectl.sliverapp")


def printable(text: str, limit: int = 300) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def tell_node(nm: Callable[..., Any], report: dict[str, Any]) -> None:
    """Send ``report``; an older node manager, or one away, is not the program's error
    (it reports again after its next round)."""
    try:
        nm("report_service", report)
    except SlicectlError as e:
        log.debug("report to the node manager: %s", e)
