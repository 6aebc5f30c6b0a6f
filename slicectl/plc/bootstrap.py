"""What a new PLC database needs before its first call: the tag types PLC knows, and a
root admin whose credentials go into a file only root can read."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import insert, select

from . import schema as s
from .auth import hash_password
from .credentials import write_secret
from .db import Database
from .handlers.slices import seed_tag_types
from .objects import ROLE_IDS

ROOT_EMAIL = "root@localhost"


@dataclass(frozen=True)
class RootCredentials:
    """The root admin's login, as ``/etc/slicectl/plc-root.json`` holds it."""

    url: str
    cafile: str | None
    username: str
    password: str

    def to_json(self) -> dict[str, object]:
        return {"url": self.url, "cafile": self.cafile, "AuthMethod": "password",
                "Username": self.username, "AuthString": self.password}

    @classmethod
    def read(cls, path: Path) -> RootCredentials:
        data = json.loads(path.read_text())
        return cls(data["url"], data.get("cafile"), data["Username"], data["AuthString"])

    def write(self, path: Path) -> None:
        write_secret(path, self.to_json())


def seed(db: Database) -> None:
    """Idempotent: the tag types PLC knows from the start."""
    with db.transaction(write=True) as conn:
        seed_tag_types(conn)


def ensure_root(db: Database, email: str = ROOT_EMAIL, password: str | None = None,
                scrypt_n: int = 2**14) -> str | None:
    """Make an enabled admin ``email`` unless that person exists; returns the new password
    (random unless given), or None if the person was already there."""
    with db.transaction(write=True) as conn:
        found = conn.execute(select(s.persons.c.person_id).where(
            s.persons.c.email_lc == email.lower())).scalar()
        if found is not None:
            return None
        password = password or secrets.token_urlsafe(24)
        now = int(time.time())
        pk = conn.execute(insert(s.persons).values(
            email=email, email_lc=email.lower(), first_name="Root", last_name="Admin",
            enabled=True, password_hash=hash_password(password, scrypt_n), date_created=now,
            last_updated=now)).inserted_primary_key
        assert pk is not None
        conn.execute(insert(s.person_role).values(person_id=pk[0], role_id=ROLE_IDS["admin"]))
        return password
