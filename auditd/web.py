"""The auditor's aiohttp application: ingest in the background, pages in the foreground.

``make_app`` builds the app; its cleanup context opens the store, starts the writer thread
and the sniffer follower, and closes them in reverse. Every query runs in a worker thread.
Bad input answers 400 with one line naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from slicectl.core.errors import ValidationError

from . import query as q
from . import render as r
from .config import AuditConfig
from .directory import Directory
from .ingest import LinkState, Writer, follow
from .store import Reader, Store

CONFIG = web.AppKey("config", AuditConfig)
DIRECTORY = web.AppKey("directory", Directory)
LINK = web.AppKey("link", LinkState)
READER = web.AppKey("reader", Reader)
WRITER = web.AppKey("writer", Writer)
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def bad_input(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as err:
        return web.Response(status=400, text=f"bad request: {err}\n")


def make_app(cfg: AuditConfig, directory: Directory, clock: Callable[[], float] = time.time,
             writer_opts: dict[str, Any] | None = None) -> web.Application:
    """The auditor: ingest from ``cfg.sniffer_sock`` into ``cfg.db_path``, pages on top.

    Args:
        cfg: where to read, store and listen.
        directory: slice descriptions, contacts and node facts.
        clock: wall-clock time (retention, the default window).
        writer_opts: extra :class:`~auditd.ingest.Writer` arguments (batching, queue bound).
    """
    app = web.Application(middlewares=[bad_input])
    app[CONFIG] = cfg
    app[DIRECTORY] = directory
    app[LINK] = LinkState()
    app[CLOCK] = clock

    async def ingest(app: web.Application) -> AsyncIterator[None]:
        store = Store(cfg.db_path, cfg.limits)
        writer = Writer(store, clock=clock, **(writer_opts or {}))
        writer.start()
        app[WRITER] = writer
        app[READER] = Reader(cfg.db_path)
        task = asyncio.create_task(follow(cfg.sniffer_sock, writer, app[LINK]))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.get_running_loop().run_in_executor(None, writer.stop)
            store.close()

    app.cleanup_ctx.append(ingest)
    app.router.add_get("/", index)
    app.router.add_get("/index.{fmt}", index)
    app.router.add_get("/search", search)
    app.router.add_get("/chart.svg", chart)
    app.router.add_get("/dst/{tail}", destination)
    app.router.add_get("/slice/{tail}", slice_page)
    return app


async def off_loop(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


def respond(fmt: str, html: Callable[[], str], rows: list[dict[str, Any]],
            doc: dict[str, Any]) -> web.Response:
    if fmt == "csv":
        return web.Response(text=r.to_csv(rows), content_type="text/csv")
    if fmt == "json":
        return web.Response(text=r.to_json(doc), content_type="application/json")
    return web.Response(text=html(), content_type="text/html")


def window(request: web.Request) -> q.Window:
    return q.parse_window(request.query, request.app[CLOCK](),
                          request.app[CONFIG].limits.rollup_s)


def health(app: web.Application) -> dict[str, Any]:
    link, writer = app[LINK], app[WRITER]
    return {"sniffer_connected": link.connected, "sniffer_error": link.error,
            "writer_error": repr(writer.error) if writer.error else "",
            "nm_error": app[DIRECTORY].error}


def status_html(app: web.Application) -> str:
    h = health(app)
    parts = [f'<p id="sniffer">Sniffer: {"connected" if h["sniffer_connected"] else "NOT connected"}'
             + (f' <span class="warn">({r.e(h["sniffer_error"])})</span>' if h["sniffer_error"]
                else "") + "</p>"]
    for key in ("writer_error", "nm_error"):
        if h[key]:
            parts.append(f'<p class="warn">{r.e(h[key])}</p>')
    return "".join(parts)


async def index(request: web.Request) -> web.Response:
    app = request.app
    w = window(request)
    fmt = q.parse_format(request.query, request.match_info.get("fmt", ""))
    reader = app[READER]
    dsts, slices, folded, drops, totals, (step, series) = await off_loop(lambda: (
        q.by_destination(reader, w), q.by_slice(reader, w), q.folded(reader, w),
        reader.drops(), q.totals(reader), q.series(reader, w)))
    node = await app[DIRECTORY].node()
    cfg = app[CONFIG]
    hostname = str(node.get("hostname") or app[LINK].node or "this node")
    doc = {"node": {"node_id": node.get("node_id", ""), "hostname": hostname,
                    "operator": cfg.operator, "slivers": node.get("slivers")},
           "from": q.iso(w.start), "to": q.iso(w.end), "by_destination": dsts,
           "by_slice": slices, "folded": folded, "drops": drops, "storage": totals,
           "health": health(app)}

    def html() -> str:
        wq = r.window_query(w)
        return r.page(f"Traffic auditor: {hostname}", "".join([
            f"<h1>Traffic auditor: {r.e(hostname)}</h1>",
            f'<p id="about">This is node {r.e(node.get("node_id", "?"))} ({r.e(hostname)}), '
            "a PlanetLab-style node: researchers run experiments here in <em>slices</em>, "
            "each an isolated container sharing this machine's address. Every packet a "
            "slice sends from this node is recorded with the slice that sent it, so anyone "
            "who sees unwanted traffic from this address can find who is responsible. Enter "
            "your address below, or follow a destination.</p>",
            f'<p id="operator">Run by: {r.e(cfg.operator or "(operator not configured)")}. '
            f"Slivers on this node: {r.e(node.get('slivers', '?'))}.</p>",
            status_html(app), r.drops_html(drops), r.search_form(w),
            f"<h2>Traffic from {r.e(doc['from'])} to {r.e(doc['to'])}</h2>",
            r.chart_svg(step, series, w),
            "<h2>By destination address</h2>", r.table(dsts, w, "by-dst"),
            f"<p>{r.link('/index.csv?' + wq, 'CSV')} | {r.link('/index.json?' + wq, 'JSON')}</p>",
            "<h2>By slice</h2>", r.table(slices, w, "by-slice"),
            r.folded_html(folded, w, cfg.limits.rollup_rows),
            f'<p class="small">Stored: {r.e(totals["records"])} full packet records '
            f'({r.e(totals["records_from"])} to {r.e(totals["records_to"])}), '
            f'{r.e(totals["rollup_rows"])} per-minute roll-up rows since '
            f'{r.e(totals["rollup_from"])}. Windows are whole minutes.</p>']))

    return respond(fmt, html, dsts, doc)


async def search(request: web.Request) -> web.Response:
    ip = request.query.get("ip", "")
    q.parse_ip(ip)
    w = window(request)
    raise web.HTTPFound(r.dst_href(ip.strip(), w))


async def chart(request: web.Request) -> web.Response:
    w = window(request)
    name = request.query.get("slice")
    if name is not None:
        q.parse_slice(name)
    reader = request.app[READER]
    step, series = await off_loop(lambda: q.series(reader, w, slice_name=name))
    return web.Response(text=r.chart_svg(step, series, w), content_type="image/svg+xml")


async def destination(request: web.Request) -> web.Response:
    app = request.app
    tail, suffix = q.split_suffix(request.match_info["tail"])
    dst = q.parse_ip(tail)
    ip = socket.inet_ntoa(dst)
    fmt = q.parse_format(request.query, suffix)
    w = window(request)
    reader = app[READER]
    rows, (records, total), folded, drops = await off_loop(lambda: (
        q.to_destination(reader, dst, w), q.records_to(reader, dst, w), q.folded(reader, w),
        reader.drops()))
    infos = [await app[DIRECTORY].slice(n) for n in dict.fromkeys(row["slice"] for row in rows)]
    doc = {"dst": ip, "from": q.iso(w.start), "to": q.iso(w.end), "rows": rows,
           "slices": {i.name: {"description": i.description, "contacts": list(i.contacts),
                               "stopped": i.stopped} for i in infos},
           "records": records, "records_total": total, "folded": folded, "drops": drops,
           "health": health(app)}

    def html() -> str:
        who = "".join(
            f'<div class="slice"><h3>{r.link(r.slice_href(i.name, w), i.name)}</h3>'
            f'<p class="description">{r.e(i.description or "(no description)")}</p>'
            f"{r.stopped_html(i.stopped)}"
            f"<p>Contacts: {r.contacts_html(i.contacts)}</p></div>" for i in infos)
        return r.page(f"Traffic to {ip}", "".join([
            f"<h1>Traffic to {r.e(ip)}</h1>",
            f"<p>From {r.e(doc['from'])} to {r.e(doc['to'])}: "
            f"{r.e(len(infos))} slice(s) sent packets to this address.</p>",
            status_html(app), r.drops_html(drops), r.search_form(w, ip),
            r.table(rows, w, "to-dst"),
            f"<p>{r.link(r.dst_href(ip, w, 'csv'), 'CSV')} | "
            f"{r.link(r.dst_href(ip, w, 'json'), 'JSON')}</p>",
            "<h2>Who sent it</h2>", who or "<p>nobody on this node</p>",
            r.folded_html(folded, w, app[CONFIG].limits.rollup_rows,
                          "They may have sent to this address too; if so within the full "
                          "records' window, the packets below show it."),
            f"<h2>Packets (newest {r.e(len(records))} of {r.e(total)} full records kept)</h2>",
            r.table(records, w, "records")]))

    return respond(fmt, html, rows, doc)


async def slice_page(request: web.Request) -> web.Response:
    app = request.app
    tail, suffix = q.split_suffix(request.match_info["tail"])
    name = q.parse_slice(tail)
    fmt = q.parse_format(request.query, suffix)
    w = window(request)
    reader = app[READER]
    rows, folded, (step, series) = await off_loop(lambda: (
        q.from_slice(reader, name, w), q.folded(reader, w, name),
        q.series(reader, w, slice_name=name)))
    info = await app[DIRECTORY].slice(name)
    doc = {"slice": name, "description": info.description, "contacts": list(info.contacts),
           "stopped": info.stopped, "from": q.iso(w.start), "to": q.iso(w.end), "rows": rows,
           "folded": folded}

    def html() -> str:
        return r.page(f"Traffic from {name}", "".join([
            f"<h1>Traffic from slice {r.e(name)}</h1>",
            f'<p class="description">{r.e(info.description or "(no description)")}</p>',
            r.stopped_html(info.stopped),
            f"<p>Contacts: {r.contacts_html(info.contacts)}</p>",
            f"<p>From {r.e(doc['from'])} to {r.e(doc['to'])}.</p>",
            r.chart_svg(step, series, w), r.table(rows, w, "from-slice"),
            r.folded_html(folded, w, app[CONFIG].limits.rollup_rows),
            f"<p>{r.link(r.slice_href(name, w, 'csv'), 'CSV')} | "
            f"{r.link(r.slice_href(name, w, 'json'), 'JSON')}</p>"]))

    return respond(fmt, html, rows, doc)
