"""Authentication: passwords (scrypt), sessions (256 random bits), node HMAC, anonymous;
and a limiter of failed logins per account and per source address."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1


def hash_password(password: str, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return "$".join(["scrypt", str(n), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str | None) -> bool:
    """Constant-time check of ``password`` against ``hash_password``'s output."""
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                             p=int(p), dklen=32)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


class VerifiedCache:
    """Remembers, for a while, that a password matched a stored hash, so a script making
    many calls pays scrypt once. Holds only a keyed digest; a changed hash misses."""

    def __init__(self, ttl_s: float = 300, clock: Callable[[], float] = time.monotonic) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl_s
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def _tag(self, password: str, stored: str) -> str:
        return hmac.new(self._key, f"{stored}\0{password}".encode(), "sha256").hexdigest()

    def verify(self, password: str, stored: str | None) -> bool:
        if not stored:
            return False
        tag = self._tag(password, stored)
        now = self._clock()
        with self._lock:
            seen = self._seen.get(tag)
        if seen is not None and now - seen < self._ttl:
            return True
        if not verify_password(password, stored):
            return False
        with self._lock:
            if len(self._seen) > 10000:
                self._seen.clear()
            self._seen[tag] = now
        return True


def new_session() -> tuple[str, str]:
    """A fresh session key (256 random bits) and the hash the database keeps of it."""
    key = secrets.token_urlsafe(32)
    return key, session_hash(key)


def session_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_node_key() -> str:
    """32 random bytes, base64, no padding."""
    return base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def flatten(args: object) -> list[str]:
    """Every value in ``args``, lists and dict values recursively (dict keys ignored)."""
    out: list[str] = []
    stack: list[object] = [args]
    while stack:
        v = stack.pop()
        if isinstance(v, list | tuple):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        else:
            out.append(str(v))
    return out


def hmac_message(args: list[object]) -> str:
    """What a node signs: ``"[" + "".join(sorted(str(v) for v in flattened args)) + "]"``."""
    return "[" + "".join(sorted(flatten(args))) + "]"


def hmac_value(node_key: str, args: list[object]) -> str:
    """Hex HMAC-SHA1 of :func:`hmac_message`, keyed with the node key's text."""
    return hmac.new(node_key.encode(), hmac_message(args).encode(), hashlib.sha1).hexdigest()


class LoginLimiter:
    """At most ``per_account`` failed logins per account and ``per_source`` per source
    address within ``window_s``; past that, logins are refused without checking."""

    def __init__(self, per_account: int = 10, per_source: int = 50, window_s: float = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_account = per_account
        self.per_source = per_source
        self.window_s = window_s
        self._clock = clock
        self._fails: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, account: str, source: str) -> bool:
        now = self._clock()
        with self._lock:
            return (len(self._recent("a:" + account, now)) >= self.per_account
                    or len(self._recent("s:" + source, now)) >= self.per_source)

    def failed(self, account: str, source: str) -> None:
        now = self._clock()
        with self._lock:
            if len(self._fails) > 100000:
                self._fails.clear()
            self._recent("a:" + account, now).append(now)
            self._recent("s:" + source, now).append(now)

    def succeeded(self, account: str) -> None:
        with self._lock:
            self._fails.pop("a:" + account, None)
