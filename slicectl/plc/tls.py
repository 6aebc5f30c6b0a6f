"""PLC's certificate: self-signed, made once with Debian's ``openssl`` and kept."""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import subprocess
from pathlib import Path

from .errors import InternalError


def certificate_names(cert: Path) -> set[str]:
    """The DNS names and IP addresses ``cert`` is for (its subjectAltName); empty if it
    cannot be read."""
    run = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-ext",
                          "subjectAltName"], capture_output=True, text=True, check=False)
    if run.returncode != 0:
        return set()
    out = set()
    for part in run.stdout.replace("\n", ",").split(","):
        kind, _, value = part.strip().partition(":")
        if kind in ("DNS", "IP Address") and value:
            out.add(str(ipaddress.ip_address(value)) if kind == "IP Address" else value)
    return out


def ensure_certificate(cert: Path, key: Path, names: list[str]) -> None:
    """Make ``cert`` and ``key`` (EC P-256, ten years, the names as subjectAltName) unless
    both exist and the certificate is for every one of ``names`` (a name added later, such
    as the address slivers reach PLC at, makes a new one). The key is mode 0600."""
    if cert.exists() and key.exists():
        have = certificate_names(cert)
        if {str(ipaddress.ip_address(n)) if _is_ip(n) else n for n in names} <= have:
            return
    cert.parent.mkdir(parents=True, exist_ok=True)
    alt = []
    for n in dict.fromkeys(names):
        try:
            ipaddress.ip_address(n)
            alt.append(f"IP:{n}")
        except ValueError:
            alt.append(f"DNS:{n}")
    old = os.umask(0o077)
    try:
        run = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "3650", "-subj", f"/CN={names[0]}", "-addext",
             "subjectAltName=" + ",".join(alt), "-keyout", str(key), "-out", str(cert)],
            capture_output=True, text=True, check=False)
    finally:
        os.umask(old)
    if run.returncode != 0:
        raise InternalError(f"openssl could not make the certificate {cert}: "
                            f"{run.stderr.strip()[-200:]}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def default_names(host: str) -> list[str]:
    """The names a certificate for ``host`` should carry."""
    names = [socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    if host not in ("", "0.0.0.0", "::"):
        names.insert(0, host)
    return names


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
