"""A PLCAPI client for people and tests: the URL and credentials from flags, the
environment (``PLC_URL``, ``PLC_USER``, ``PLC_PASSWORD``) or the root file, and calls that
put the auth struct first."""

from __future__ import annotations

import ssl
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bootstrap import RootCredentials
from .errors import InvalidArgument

ROOT_FILE = Path("/etc/slicectl/plc-root.json")


@dataclass(frozen=True)
class Login:
    url: str
    auth: dict[str, Any]
    cafile: str | None = None

    @classmethod
    def resolve(cls, url: str | None, user: str | None, password: str | None,
                env: Mapping[str, str], root_file: Path = ROOT_FILE) -> Login:
        """Flags first, then ``PLC_URL``/``PLC_USER``/``PLC_PASSWORD``, then the root file."""
        url = url or env.get("PLC_URL")
        user = user or env.get("PLC_USER")
        password = password or env.get("PLC_PASSWORD")
        cafile = env.get("PLC_CAFILE")
        if not (url and user and password) and root_file.exists():
            root = RootCredentials.read(root_file)
            url = url or root.url
            cafile = cafile or root.cafile
            if not user:
                user, password = root.username, password or root.password
        if not url:
            raise InvalidArgument(f"Invalid url value: expected --url, PLC_URL or {root_file}, "
                                  f"got none")
        auth: dict[str, Any] = ({"AuthMethod": "password", "Username": user, "AuthString": password}
                                if user and password else {"AuthMethod": "anonymous"})
        return cls(url, auth, cafile)


class PLC:
    """``plc.GetSlices(filter)`` calls ``GetSlices(auth, filter)`` on the server."""

    def __init__(self, login: Login) -> None:
        ctx = None
        if login.url.startswith("https"):
            ctx = ssl.create_default_context(cafile=login.cafile)
        self.login = login
        self.proxy = xmlrpc.client.ServerProxy(login.url, allow_none=True, context=ctx)

    def call(self, method: str, *args: Any) -> Any:
        if method.startswith("system."):
            return getattr(self.proxy, method)(*args)
        return getattr(self.proxy, method)(self.login.auth, *args)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args: self.call(name, *args)
