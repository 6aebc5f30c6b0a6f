"""``slicectl plc serve``: PLCAPI over HTTP(S) on aiohttp.

The event loop only moves bytes: each request body goes to a thread pool where
:meth:`PLCAPI.handle` parses it, runs the call in one transaction and writes the answer.
A body that is no XML-RPC call gets a 400; everything else a methodResponse (a fault at
worst), never a 500.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from .api import PLCAPI, BadRequest
from .changes import Pending
from .errors import InvalidArgument
from .wire import dumps_response

log = logging.getLogger("slicectl.plc.server")

API_KEY = web.AppKey("api", PLCAPI)
POOL_KEY = web.AppKey("pool", ThreadPoolExecutor)

PATHS = ("/PLCAPI/", "/PLCAPI")


async def _xmlrpc(request: web.Request) -> web.Response:
    api = request.app[API_KEY]
    if request.content_length is not None and request.content_length > api.settings.max_body_bytes:
        return web.Response(status=413, text="request body too large\n")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return web.Response(status=413, text="request body too large\n")
    loop = asyncio.get_running_loop()
    try:
        out = await loop.run_in_executor(request.app[POOL_KEY], api.handle, body,
                                         request.remote or "unknown")
    except BadRequest as e:
        return web.Response(status=400, text=f"{e}\n")
    if isinstance(out, Pending):  # WaitForChange: wait here, holding no thread
        out = dumps_response(await api.changes.wait(out.since, out.timeout_s))
    return web.Response(body=out, content_type="text/xml", charset="utf-8")


async def _not_post(request: web.Request) -> web.Response:
    return web.Response(status=405, headers={"Allow": "POST"},
                        text="PLCAPI speaks XML-RPC: POST a methodCall here\n")


def make_app(api: PLCAPI, threads: int = 8) -> web.Application:
    """The aiohttp app serving ``api`` at ``/PLCAPI/``; XML-RPC work runs on ``threads``."""
    app = web.Application(client_max_size=api.settings.max_body_bytes)
    app[API_KEY] = api

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = ThreadPoolExecutor(threads, thread_name_prefix="plcapi")
        app[POOL_KEY] = pool
        api.changes.attach(asyncio.get_running_loop())
        yield
        pool.shutdown(wait=True, cancel_futures=True)

    app.cleanup_ctx.append(pool_ctx)
    for p in PATHS:
        app.router.add_post(p, _xmlrpc)
        app.router.add_get(p, _not_post)
    return app


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls: ssl.SSLContext | None


async def serve(app: web.Application, listen: Listen,
                ready: Callable[[int], None] | None = None) -> None:
    """Serve until SIGTERM or SIGINT; ``ready(port)`` once bound (the real port if 0)."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, listen.host, listen.port, ssl_context=listen.tls,
                           backlog=1024, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if not sockets:
            raise InvalidArgument(f"Invalid listen value: expected a bindable address, got "
                                  f"{listen.host}:{listen.port}")
        port = int(sockets[0].getsockname()[1])
        log.info("PLCAPI on %s://%s:%d/PLCAPI/", "https" if listen.tls else "http",
                 listen.host, port)
        if ready is not None:
            ready(port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def url_of(host: str, port: int, tls: bool) -> str:
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"{'https' if tls else 'http'}://{shown}:{port}/PLCAPI/"


__all__ = ["Listen", "make_app", "serve", "url_of"]
