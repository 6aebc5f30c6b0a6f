"""Zip applications of slicectl's own modules, and the start of the initscripts that
write them into slivers (see :mod:`slicectl.sliverapp.bundle` for sliver programs and
:mod:`slicectl.admintools.bundle` for the admin sliver's commands). The same code gives
the same bytes (and an initscript the same digest).

Pure: files in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path

#: The checkout (or installed tree) the modules are read from.
ROOT = Path(__file__).resolve().parents[2]


def bundle(modules: Sequence[str], entry: str, root: Path = ROOT) -> bytes:
    """The zip application of ``modules`` (globs under ``root``) whose ``__main__`` runs
    ``entry``'s ``main()``; fixed times and sorted names."""
    files = sorted({p for pattern in modules for p in root.glob(pattern)})
    main = f"from {entry} import main\nraise SystemExit(main())\n".encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path, data in [("__main__.py", main),
                           *((str(p.relative_to(root)), p.read_bytes()) for p in files)]:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


def prologue(title: str, code: bytes, umask: str, state: str, app: str) -> str:
    """The start of an initscript: run at start only, make ``state`` and write ``code``
    to ``app``."""
    digest = hashlib.sha256(code).hexdigest()[:12]
    b64 = base64.encodebytes(code).decode()
    return ("#!/bin/sh\n"
            f"# {title} (bundle {digest})\n"
            "set -eu\n"
            '[ "${1:-start}" = start ] || exit 0\n'
            f"umask {umask}\n"
            f"mkdir -p {state}\n"
            f"base64 -d > {app} <<'SLICECTL_BUNDLE'\n{b64}SLICECTL_BUNDLE\n")


def commands_initscript(title: str, state: str, app: str, code: bytes, bindir: str,
                        commands: Sequence[tuple[str, str]]) -> str:
    """An initscript that installs a zip application of commands, runs nothing: write
    ``code`` to ``app`` and, for each (name, subcommand), an executable ``bindir/name``
    that runs ``python3 -I app subcommand ARGS...`` as root in the sliver (the slice's
    user, as whom ssh logs in, through sudo, which the reference image grants it)."""
    wrappers = "".join(
        f"cat > {bindir}/{name} <<'SLICECTL_WRAPPER'\n#!/bin/sh\n"
        '[ "$(id -u)" = 0 ] || exec sudo -n "$0" "$@"\n'
        f'exec python3 -I {app} {sub} "$@"\nSLICECTL_WRAPPER\n'
        f"chmod 755 {bindir}/{name}\n" for name, sub in commands)
    return prologue(title, code, "022", state, app) + f"mkdir -p {bindir}\n" + wrappers
