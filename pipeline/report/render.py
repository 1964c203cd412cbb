"""The review page's HTML: the template, stylesheet and script are package data (page/), filled in here;
the script's CSP hash is computed from the file, so the page runs it and nothing else."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import time
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.cost import unpriced_note
from pipeline.report.data import ROW_FIELDS, _column
from pipeline.report.thumbs import NOT_EMBEDDED, NOT_FOUND

PAGE_SIZE = 100


@cache
def page_file(name: str) -> str:
    """A file of page/, exactly as shipped (no newline translation: the script's hash is over its bytes)."""
    return files("pipeline.report").joinpath("page", name).read_bytes().decode("utf-8")


def render_page(source: Path, table: pa.Table, summary: dict[str, Any], thumbs: list[str],
                refs: list[int | str], *, cap: int) -> str:
    columns = [_plain(_column(table, name).to_pylist()) for name in ROW_FIELDS]
    payload = {
        "fields": [*ROW_FIELDS, "thumb"],
        "rows": list(zip(*columns, refs)),
        "thumbs": thumbs,
        "error_types": summary["error_types"],
        "has_cost": summary["cost_usd"] is not None,
        "page_size": PAGE_SIZE,
    }
    script = page_file("report.js")
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    values = {
        "TITLE": html.escape(f"Captions: {source.name}"),
        "CSP": f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'",
        "HEADER": _header_html(source, summary, refs, _column(table, "error_type").to_pylist(), cap),
        "SUMMARY": _summary_html(summary),
        "COST_HEAD": '<th class="num">cost</th>' if summary["cost_usd"] is not None else "",
        "DATA": script_json(payload),
        "SCRIPT": script,
        "STYLE": page_file("report.css"),
    }
    # One pass over the template: a value is never scanned for placeholders, whatever it holds.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], page_file("template.html"))


def script_json(value: Any) -> str:
    """JSON that can sit inside <script type="application/json">: no '<' survives (so no '</script>'
    and no '<!--'), and '>' and '&' go too. Each appears only inside JSON strings, where \\u escapes mean the same."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _plain(values: list[Any]) -> list[Any]:
    # NaN and infinity are not JSON; timestamps never reach here (not a shown field).
    return [None if isinstance(v, float) and not math.isfinite(v) else v for v in values]


def _header_html(source: Path, summary: dict[str, Any], refs: list[int | str], error_types: list[str | None], cap: int) -> str:
    e = html.escape
    made = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    models = ", ".join(summary["models"]) or "none recorded"
    parts = [f'<p class="meta">{e(str(source))} · model {e(models)} · report made {made}</p>']
    not_embedded = refs.count(NOT_EMBEDDED)
    # An image the job itself did not find (image_missing) is no sign that the roots are wrong.
    not_found = sum(ref == NOT_FOUND and t != "image_missing" for ref, t in zip(refs, error_types))
    if not_embedded:
        parts.append(f'<p class="note">Thumbnails are embedded for the first {cap:,} rows and for error rows '
                     f"(up to {cap:,} more); the other {not_embedded:,} rows show a grey placeholder. "
                     "Raise <code>--max-thumbnails</code> to embed more (each adds up to 6 KB).</p>")
    if not_found:
        parts.append(f'<p class="note">{not_found:,} image{"s were" if not_found > 1 else " was"} not found on this machine. '
                     "Relative paths are relative to the manifest's folder: pass <code>--images-root DIR</code>.</p>")
    return "\n".join(parts)


def _summary_html(s: dict[str, Any]) -> str:
    rows, ok, error = s["rows"], s["ok"], s["error"]
    pct = (lambda n: f"{100 * n / rows:.1f}%") if rows else (lambda n: "–")
    t = s["tokens"]
    cards = [
        _card("rows", f"{rows:,}"),
        _card("ok", f"{ok:,}", pct(ok), "ok"),
        _card("error", f"{error:,}", pct(error), "error" if error else ""),
        _card("tokens", f"{t['total_tokens']:,}", f"{t['prompt_tokens']:,} prompt + {t['completion_tokens']:,} completion"),
    ]
    if s["cost_usd"] is not None:
        cost = s["cost_usd"]
        cards.append(_card("cost", f"${cost:,.2f}" if cost >= 1 else f"${cost:.4f}", f"${cost / rows:.5f} a row" if rows else ""))
    elif t["total_tokens"]:  # billed, but the model has no price: unknown, not free
        cards.append(_card("cost", "unknown", unpriced_note(s["models"][0] if s["models"] else "this model", None).removeprefix("unknown ")))
    lat = s["latency"]
    latency = "<p>no latencies recorded</p>" if lat is None else (
        f'<p class="pcts">p50 <b>{_ms(lat["p50"])}</b> · p90 <b>{_ms(lat["p90"])}</b> · p99 <b>{_ms(lat["p99"])}</b>'
        f' · max {_ms(lat["max"])}</p>' + _histogram_svg(lat))
    errors = _error_bars_svg(s["error_types"]) if s["error_types"] else "<p>no errors</p>"
    return (f'<div class="cards">{"".join(cards)}</div>\n<div class="charts">'
            f'<figure><figcaption>latency of the last attempt ({lat["n"] if lat else 0:,} rows)</figcaption>{latency}</figure>'
            f'<figure><figcaption>error types (click one to list its rows)</figcaption>{errors}</figure></div>')


def _card(label: str, value: str, detail: str = "", cls: str = "") -> str:
    e = html.escape
    return (f'<div class="card {cls}"><div class="label">{e(label)}</div><div class="value">{e(value)}</div>'
            f'<div class="detail">{e(detail)}</div></div>')


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _histogram_svg(lat: dict[str, Any]) -> str:
    width, height, pad = 360, 90, 14
    bins, high = lat["bins"], lat["high"]
    tallest, bar = max(bins) or 1, width / len(bins)
    step = high / len(bins)
    rects = []
    for i, n in enumerate(bins):
        h = (height - pad) * n / tallest
        label = f"{_ms(i * step)}–{_ms((i + 1) * step)}: {n:,} rows"
        if i == len(bins) - 1 and lat["beyond"]:
            label += f" (incl. {lat['beyond']:,} slower, up to {_ms(lat['max'])})"
        rects.append(f'<rect x="{i * bar + 1:.1f}" y="{height - pad - h:.1f}" width="{bar - 2:.1f}" height="{h:.1f}">'
                     f"<title>{html.escape(label)}</title></rect>")
    marks, last_x, y = [], -100.0, 9
    for name in ("p50", "p90", "p99"):
        x = min(lat[name] / high, 1.0) * width if high else 0
        y = y + 11 if x - last_x < 26 else 9  # close percentiles: stack their labels instead of overprinting
        last_x = x
        marks.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height - pad}"/>'
                     f'<text class="mark" x="{min(x + 2, width - 22):.1f}" y="{y}">{name}</text>')
    last = f"{'≥ ' if lat['beyond'] else ''}{_ms(high)}"
    axis = (f'<text x="0" y="{height - 2}">0</text>'
            f'<text x="{width}" y="{height - 2}" text-anchor="end">{html.escape(last)}</text>')
    return (f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="latency histogram">{"".join(rects)}{"".join(marks)}{axis}</svg>')


def _error_bars_svg(error_types: list[tuple[str, int]]) -> str:
    shown = error_types[:12]
    row, label_w, bar_w = 20, 150, 170
    most = max(n for _, n in shown)
    parts = []
    for i, (name, n) in enumerate(shown):
        y, w = i * row, max(2.0, bar_w * n / most)
        e = html.escape(name)
        parts.append(f'<g class="etype" data-error-type="{e}" tabindex="0"><title>show {e} rows</title>'
                     f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{e}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row - 6}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 14}">{n:,}</text></g>')
    more = f'<p class="note">and {len(error_types) - len(shown)} more types (see the filter)</p>' if len(error_types) > len(shown) else ""
    height = row * len(shown)
    return (f'<svg class="errors" viewBox="0 0 {label_w + bar_w + 60} {height}" width="{label_w + bar_w + 60}" '
            f'height="{height}" role="img" aria-label="error types">{"".join(parts)}</svg>{more}')
