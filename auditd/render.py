"""Pages as text: HTML (every value escaped), CSV, JSON and an SVG chart. Pure.

The only way a value reaches HTML is through :func:`e` (or :func:`table`, which calls it),
so a slice description or a hostname with markup in it shows as text.
"""

from __future__ import annotations

import csv
import functools
import html
import io
import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote, urlencode

from .query import Window, iso

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f")

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:70em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:left;font-size:90%}th{background:#eee}.num{text-align:right}.warn{color:#a00}
.small{font-size:85%;color:#555}"""


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


def link(href: str, text: object) -> str:
    return f'<a href="{e(href)}">{e(text)}</a>'


@functools.lru_cache(maxsize=64)
def window_query(w: Window) -> str:
    """The window as a query string (once per window: every link in a table has it)."""
    return urlencode({"from": iso(w.start), "to": iso(w.end)})


def dst_href(ip: str, w: Window, fmt: str = "") -> str:
    return f"/dst/{quote(ip)}{'.' + fmt if fmt else ''}?{window_query(w)}"


def slice_href(name: str, w: Window, fmt: str = "") -> str:
    return f"/slice/{quote(name)}{'.' + fmt if fmt else ''}?{window_query(w)}"


def cell(key: str, value: object, w: Window) -> str:
    if key == "dst":
        return f"<td>{link(dst_href(str(value), w), value)}</td>"
    if key == "slice":
        return f"<td>{link(slice_href(str(value), w), value)}</td>"
    if key == "slices":
        return "<td>" + " ".join(link(slice_href(s, w), s) for s in str(value).split()) + "</td>"
    if isinstance(value, int):
        return f'<td class="num">{e(value)}</td>'
    return f"<td>{e(value)}</td>"


def table(rows: Sequence[dict[str, Any]], w: Window, table_id: str) -> str:
    if not rows:
        return f'<p id="{e(table_id)}" class="small">nothing in this window</p>'
    keys = [k for k in rows[0] if k != "ports_more"]
    head = "".join(f"<th>{e(k)}</th>" for k in keys)
    body = []
    for row in rows:
        cells = []
        for k in keys:
            if k == "ports" and row.get("ports_more"):
                cells.append(f"<td>{e(row[k])} … (+{e(row['ports_more'])})</td>")
            else:
                cells.append(cell(k, row[k], w))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table id="{e(table_id)}"><thead><tr>{head}</tr></thead><tbody>'
            + "".join(body) + "</tbody></table>")


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{e(title)}</title><style>{CSS}</style></head><body>"
            f'<p class="small"><a href="/">traffic auditor home</a></p>{body}</body></html>')


def search_form(w: Window, ip: str = "") -> str:
    return (f'<form id="search" method="get" action="/search">'
            f'<label>address <input name="ip" value="{e(ip)}" placeholder="198.51.100.7">'
            f'</label> <label>from <input name="from" value="{e(iso(w.start))}"></label> '
            f'<label>to <input name="to" value="{e(iso(w.end))}"></label> '
            f'<button type="submit">search</button></form>')


def drops_html(drops: dict[str, int]) -> str:
    total = sum(drops.values())
    cls = "warn" if total else "small"
    parts = ", ".join(f"{e(k)} {e(v)}" for k, v in drops.items())
    return (f'<p id="drops" class="{cls}">Packets not recorded since this auditor started '
            f"keeping records: {e(total)} ({parts}). kernel: lost by the capture ring; "
            "consumer: the sniffer could not hand them to this auditor; unknown: from no "
            "known sliver; auditor: this auditor's own queue was full.</p>")


def folded_html(rows: Sequence[dict[str, Any]], w: Window, rows_per_minute: int,
                note: str = "") -> str:
    """The slices whose destinations past ``rows_per_minute`` a minute were folded into one
    row each (nothing when there are none)."""
    if not rows:
        return ""
    return (f'<h2>Slices with more destinations than the roll-ups keep</h2><p id="folded-note">'
            f"The per-minute roll-ups keep at most {e(rows_per_minute)} destinations (address, "
            "protocol, port) per slice and minute; what these slices sent to their other "
            "destinations is counted here, one row per slice (other destinations counted per "
            f"minute; N+ means at least N).{' ' + e(note) if note else ''} Full packet "
            f"records are kept whole.</p>{table(rows, w, 'folded')}")


def stopped_html(stopped: str) -> str:
    """A sliver's stop (when, by whom, why: by PLC, say), or nothing for one that runs."""
    return f'<p class="stopped">This slice is {e(stopped)}.</p>' if stopped else ""


def contacts_html(contacts: Sequence[str]) -> str:
    if not contacts:
        return '<span class="small">no contact on record</span>'
    return ", ".join(f'<a class="contact" href="mailto:{e(quote(c, safe="@.+-_"))}">{e(c)}</a>'
                     for c in contacts)


def chart_svg(step_s: float, series: Sequence[tuple[str, Sequence[int]]], w: Window,
              width: int = 640, height: int = 180, top: int = 6) -> str:
    """Bytes per bucket per slice as polylines (the ``top`` biggest slices)."""
    shown = list(series[:top])
    peak = max([max(v) for _, v in shown if v] + [1])
    n = max([len(v) for _, v in shown] + [1])
    pad_l, pad_b = 60, 20
    pw, ph = width - pad_l - 130, height - pad_b - 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="bytes per {int(step_s)} s per slice">',
             f'<rect x="{pad_l}" y="10" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
             f'<text x="2" y="18" font-size="10">{e(_human(peak / step_s))}B/s</text>',
             f'<text x="2" y="{10 + ph}" font-size="10">0</text>',
             f'<text x="{pad_l}" y="{height - 4}" font-size="10">{e(iso(w.start))}</text>',
             f'<text x="{pad_l + pw}" y="{height - 4}" font-size="10" text-anchor="end">'
             f"{e(iso(w.end))}</text>"]
    for i, (name, values) in enumerate(shown):
        color = COLORS[i % len(COLORS)]
        pts = " ".join(
            f"{pad_l + (j + 0.5) * pw / n:.1f},{10 + ph - v * ph / peak:.1f}"
            for j, v in enumerate(values))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{pts}"><title>{e(name)}</title></polyline>')
        parts.append(f'<text x="{pad_l + pw + 8}" y="{22 + 14 * i}" font-size="11" '
                     f'fill="{color}">{e(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _human(n: float) -> str:
    for unit in ("", "k", "M", "G"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} T"


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def to_json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False)
