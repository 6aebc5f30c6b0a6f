"""``python -m auditd``: run the traffic auditor (pages on :80, ingest from the sniffer).

Configuration comes from the environment (see :meth:`auditd.config.AuditConfig.from_env`);
``--port`` overrides the port.
"""

from __future__ import annotations

import argparse
import os
import sys

from aiohttp import web

from slicectl.core.errors import SlicectlError

from .config import AuditConfig
from .directory import nm_directory
from .web import make_app


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m auditd", description=__doc__)
    ap.add_argument("--port", type=int, help="serve on this port (default 80)")
    args = ap.parse_args(argv)
    try:
        cfg = AuditConfig.from_env(os.environ)
    except SlicectlError as e:
        print(f"auditd: {e}", file=sys.stderr)
        return e.exit_code
    if args.port is not None:
        cfg = AuditConfig(**{**cfg.__dict__, "port": args.port})
    web.run_app(make_app(cfg, nm_directory(cfg.nm_sock)), host=cfg.host, port=cfg.port,
                print=lambda msg: print(f"auditd: {msg}", flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
