"""What the PLC tests share: an in-process PLCAPI on a temporary SQLite database with a
settable clock, and clients that call it as a given person or node."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from slicectl.plc.api import PLCAPI
from slicectl.plc.auth import hmac_value
from slicectl.plc.bootstrap import ensure_root, seed
from slicectl.plc.call import Settings
from slicectl.plc.db import Database

ROOT = "root@localhost"
ROOT_PW = "root-password"
FAST = Settings(scrypt_n=2**10)

ED25519 = ('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAedTThpXyowOnVlyTamP51PoT4OP2uPOGgEKsAZjr81 alice@e'
    'xample.org')
ECDSA = ('ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBCxB7tSM8q3P7yIm'
    '9LVF4CzznVkZrBGZzJoVUhVuNbR+l95yivxwxGr/2zdbR2YRYNe+Tk0xQJhVJOd8+vgfNJc= bob')
RSA = ('ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDBFadPsTElj+HBgGqyhS9Cc0TyIVVis69VY1rruqqkratV2Hx+'
    'SKHC8PdQ/byDAl8xGGxBZkfRLFx4ucLdFSq1OFEyS3CGYKCi8Z9uA0QFBo9bcXZlwMMK8x4Mcb6ZdKSDkbuYpMyp'
    'mRFwVvanSfGS0qwFCFXT4U/iJMCXxZkbYMixIBjazEO6MGpT14Oy3hHQr1g17gj2iqeo7iTNsTkJ5U+cvOeXRKmq'
    'hjc+vKo75F4YXJyY7YPevvo5N0NP8xRsOUbPdHElsH3txIXgq9nAcwGApMwLbvIjhfMgqCLWDArM9kTRUIpp8pbt'
    'BqTZWPl3TBVY6IRHRYYgt7uH8RaF carol')


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Client:
    """``c.GetSlices(filter)`` runs ``GetSlices(auth, filter)`` in process."""

    def __init__(self, api: PLCAPI, auth: dict[str, Any] | Callable[[list[Any]], dict[str, Any]],
                 source: str = "127.0.0.1") -> None:
        self.api = api
        self.auth = auth
        self.source = source

    def call(self, method: str, *args: Any) -> Any:
        if method.startswith("system."):
            return self.api.call(method, list(args), self.source)
        auth = self.auth(list(args)) if callable(self.auth) else self.auth
        return self.api.call(method, [auth, *args], self.source)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)


def password(email: str, pw: str) -> dict[str, Any]:
    return {"AuthMethod": "password", "Username": email, "AuthString": pw}


def node_auth(node_id: int, key: str) -> Callable[[list[Any]], dict[str, Any]]:
    return lambda args: {"AuthMethod": "hmac", "node_id": node_id,
                         "value": hmac_value(key, args)}


def make_api(path: Path, clock: Clock | None = None) -> PLCAPI:
    db = Database(str(path / "plc.sqlite"))
    seed(db)
    ensure_root(db, ROOT, ROOT_PW, scrypt_n=FAST.scrypt_n)
    return PLCAPI(db, FAST, clock=clock or Clock())


class World:
    """A site with a PI, a user, a tech and a node, ready for the tests to act on."""

    def __init__(self, api: PLCAPI) -> None:
        self.api = api
        self.root = Client(api, password(ROOT, ROOT_PW))
        r = self.root
        self.site_id = r.AddSite({"name": "Princeton", "abbreviated_name": "PU",
                                  "login_base": "pu", "max_slices": 5})
        self.other_site_id = r.AddSite({"name": "Other", "abbreviated_name": "O",
                                        "login_base": "other"})
        self.pi = self.person("pi@pu.edu", "pi", self.site_id)
        self.user = self.person("user@pu.edu", "user", self.site_id)
        self.tech = self.person("tech@pu.edu", "tech", self.site_id)
        self.outsider = self.person("pi@other.edu", "pi", self.other_site_id)
        self.node_id = r.AddNode(self.site_id, {"hostname": "node1.pu.edu"})
        self.node_key = r.GetNodeKey(self.node_id)
        self.node = Client(api, node_auth(self.node_id, self.node_key))

    def person(self, email: str, role: str, site_id: int) -> Client:
        r = self.root
        pid = r.AddPerson({"email": email, "first_name": role, "last_name": "Person",
                           "password": f"{role}-pw"})
        r.AddPersonToSite(pid, site_id)
        r.AddRoleToPerson(role, pid)
        r.UpdatePerson(pid, {"enabled": True})
        c = Client(self.api, password(email, f"{role}-pw"))
        c.person_id = pid  # type: ignore[attr-defined]
        return c
