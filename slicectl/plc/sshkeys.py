"""ssh public keys: RSA, ECDSA and ed25519 in OpenSSH's one-line form, nothing else.

Pure. Keys with options in front (``command=...``), several lines, bad base64 or a blob
that does not match its type are refused with fault 102.
"""

from __future__ import annotations

import base64
import binascii
import struct

from .errors import InvalidArgument

ECDSA_CURVES = {"ecdsa-sha2-nistp256": b"nistp256", "ecdsa-sha2-nistp384": b"nistp384",
                "ecdsa-sha2-nistp521": b"nistp521"}
KEY_TYPES = ("ssh-rsa", "ssh-ed25519", *ECDSA_CURVES)
MIN_RSA_BITS = 2048


def _bad(what: str) -> InvalidArgument:
    return InvalidArgument(f"Invalid key value: expected an ssh public key (ssh-rsa, "
                           f"ecdsa-sha2-*, ssh-ed25519) without options, got {what}")


def _strings(blob: bytes) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while i < len(blob):
        if i + 4 > len(blob):
            raise _bad("a truncated key blob")
        (n,) = struct.unpack(">I", blob[i:i + 4])
        i += 4
        if i + n > len(blob):
            raise _bad("a truncated key blob")
        out.append(blob[i:i + n])
        i += n
    return out


def check(key: str) -> str:
    """The key's type, or fault 102."""
    if "\n" in key.strip() or "\r" in key or "\0" in key:
        raise _bad("several lines")
    parts = key.strip().split(None, 2)
    if len(parts) < 2:
        raise _bad("fewer than two fields")
    kind, data = parts[0], parts[1]
    if kind not in KEY_TYPES:
        raise _bad(f"{kind[:30]!r} (options or an unsupported type)")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("invalid base64") from None
    fields = _strings(blob)
    if not fields or fields[0] != kind.encode():
        raise _bad("a blob of another type")
    if kind == "ssh-ed25519":
        if len(fields) != 2 or len(fields[1]) != 32:
            raise _bad("a malformed ed25519 key")
    elif kind == "ssh-rsa":
        if len(fields) != 3:
            raise _bad("a malformed RSA key")
        bits = int.from_bytes(fields[2], "big").bit_length()
        if bits < MIN_RSA_BITS:
            raise _bad(f"an RSA key of {bits} bits (at least {MIN_RSA_BITS} needed)")
    else:
        if len(fields) != 3 or fields[1] != ECDSA_CURVES[kind] or fields[2][:1] != b"\x04":
            raise _bad("a malformed ECDSA key")
    return kind


def canonical(key: str) -> str:
    """Type and blob only (the comment does not make another key)."""
    return " ".join(key.strip().split()[:2])
