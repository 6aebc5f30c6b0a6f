"""A sliver program as its initscript carries it: the zip application (the same bytes for
the same code) and the ``/etc/rc.vinit`` that writes it and its files into the sliver and
keeps it running. The sliver thus holds everything the program needs, survives being
recreated (the node manager keeps the initscript), and nothing of the host is mounted into
it but the node manager's socket (``nm_privileged``).

Pure: files in, text out.
"""

from __future__ import annotations

import base64
import hashlib
import io
import shlex
import zipfile
from collections.abc import Sequence
from pathlib import Path

from slicectl.core.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
#: What every sliver program needs: the package face, errors, and the node manager's
#: socket client.
COMMON = ("slicectl/__init__.py", "slicectl/core/__init__.py", "slicectl/core/errors.py",
          "slicectl/ipc/*.py", "slicectl/sliverapp/__init__.py",
          "slicectl/sliverapp/reporting.py")


def bundle(modules: Sequence[str], entry: str, root: Path = ROOT) -> bytes:
    """The zip application of ``modules`` (globs under the checkout) whose ``__main__``
    runs ``entry``'s ``main()``; fixed times and sorted names, so the same code gives the
    same bytes (and the initscript the same digest)."""
    files = sorted({p for pattern in (*COMMON, *modules) for p in root.glob(pattern)})
    main = f"from {entry} import main\nraise SystemExit(main())\n".encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path, data in [("__main__.py", main),
                           *((str(p.relative_to(root)), p.read_bytes()) for p in files)]:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


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
    digest = hashlib.sha256(code).hexdigest()[:12]
    b64 = base64.encodebytes(code).decode()
    args = " ".join(shlex.quote(a) for a in argv)
    return (
        "#!/bin/sh\n"
        f"# {title} (bundle {digest})\n"
        "set -eu\n"
        '[ "${1:-start}" = start ] || exit 0\n'
        "umask 077\n"
        f"mkdir -p {state}\n"
        f"base64 -d > {app} <<'SLICECTL_BUNDLE'\n{b64}SLICECTL_BUNDLE\n"
        + "".join(_heredoc(path, text) for path, text in files)
        + f"( while :; do python3 -I {app} {args} >> {log} 2>&1 < /dev/null; "
        "sleep 2; done ) &\n"
    )
