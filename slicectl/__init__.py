"""slicectl: PlanetLab's node OS and central control, rebuilt on Docker and Linux."""

__version__ = "0.1.0"


def code_hash() -> str:
    """A short hash of this package's code and assets: tells a stale daemon from a fresh one."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for p in sorted([*root.rglob("*.py"), *root.rglob("assets/*")]):
        h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]
