"""A sliver program as its initscript carries it: the zip application (the same bytes for
the same code) and the ``/etc/rc.vinit`` that writes it and its files into the sliver and
keeps it running. The sliver thus holds everything the program needs, survives being
recreated (the node manager keeps the initscript), and nothing of the host is mounted into
it but the node manager's socket (``nm_privileged``).

Pure: files in, text out.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence
from pathlib import Path

from slicectl.core import zipapp
from slicectl.core.errors import UsageError

ROOT = zipapp.ROOT
#: What every sliver program needs: the package face, errors, and the node manager's
#: socket client.
COMMON = ("slicectl/__init__.py", "slicectl/core/__init__.py", "slicectl/core/errors.py",
          "slicectl/ipc/*.py", "slicectl/sliverapp/__init__.py",
          "slicectl/sliverapp/reporting.py")


def bundle(modules: Sequence[str], entry: str, root: Path = ROOT) -> bytes:
    """The zip application of :data:`COMMON` and ``modules`` (globs under the checkout)
    whose ``__main__`` runs ``entry``'s ``main()`` (see :func:`slicectl.core.zipapp.bundle`)."""
    return zipapp.bundle((*COMMON, *modules), entry, root)


def _heredoc(path: str, text: str) -> str:
    mark = "SLICECTL_" + hashlib.sha256(path.encode()).hexdigest()[:8].upper()
    if mark in text.splitlines():
        raise UsageError(f"{path}: expected text without a line {mark!r}, found one")
    return f"cat > {path} <<'{mark}'\n{text.rstrip(chr(10))}\n{mark}\n"


def initscript(title: str, state: str, app: str, code: bytes,
               files: Sequence[tuple[str, str]], argv: Sequence[str], log: str) -> str:
    """The sliver's /etc/rc.vinit: make ``state``, write the zip application ``code`` to
    ``app`` and each (path, text) of ``files`` (mode 0600), then keep ``python3 -I app
    argv...`` running (restarted 2 s after it exits, its output appended to ``log``)."""
    args = " ".join(shlex.quote(a) for a in argv)
    return (
        zipapp.prologue(title, code, "077", state, app)
        + "".join(_heredoc(path, text) for path, text in files)
        + f"( while :; do python3 -I {app} {args} >> {log} 2>&1 < /dev/null; "
        "sleep 2; done ) &\n"
    )
