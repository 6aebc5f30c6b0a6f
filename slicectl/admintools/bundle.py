"""The admin tools as the admin sliver carries them: a zip application in the sliver's
initscript, which the node manager builds from its own code (``admin_tools``) and the
node agent sets on the ``site_admin`` sliver (the agent's own bundle stays small).

Pure: files in, text out.
"""

from __future__ import annotations

from pathlib import Path

from slicectl.core import zipapp

from .main import COMMANDS

#: What the tools import (a test runs them with ``python3 -I -S``: a missing one fails).
MODULES = ("slicectl/__init__.py", "slicectl/core/__init__.py", "slicectl/core/errors.py",
           "slicectl/ipc/*.py", "slicectl/admintools/*.py", "slicectl/core/labels.py",
           "slicectl/core/sniffrecord.py")
SLIVER_TOOLS_DIR = "/usr/local/lib/slicectl-admin"
SLIVER_TOOLS = f"{SLIVER_TOOLS_DIR}/tools.pyz"
#: Where the pl-* commands go (on a login shell's PATH).
SLIVER_BIN = "/usr/local/bin"


def bundle(root: Path = zipapp.ROOT) -> bytes:
    return zipapp.bundle(MODULES, "slicectl.admintools.main", root)


def initscript(code: bytes | None = None) -> str:
    """The admin sliver's /etc/rc.vinit: install the tools and the pl-* commands."""
    return zipapp.commands_initscript(
        "the site's admin tools (pl-ps, pl-top, pl-kill, pl-stop, pl-start, pl-cap, "
        "pl-tcpdump, pl-audit)", SLIVER_TOOLS_DIR, SLIVER_TOOLS,
        bundle() if code is None else code, SLIVER_BIN,
        [(f"pl-{name}", name) for name in COMMANDS])
