"""`python -m pipeline report OUTPUT.parquet`: one self-contained HTML page to review an output table.

The page opens from disk in any browser and loads nothing from anywhere: the rows travel as one JSON
blob that the page's own script renders 100 at a time (so 100,000 rows never become 100,000 DOM nodes),
the summary and its charts are plain HTML and inline SVG made here, and thumbnails are small JPEG
`data:` URLs embedded for a capped number of rows. Captions come from a model and ids from a manifest,
so every piece of data is escaped on the way in and set with `textContent` on the way out.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from .errors import EXIT_USAGE, ConfigError

DEFAULT_MAX_THUMBNAILS = 5000
PAGE_SIZE = 100
HISTOGRAM_BINS = 24
# The row fields the page shows, in the order each row's JSON array holds them.
ROW_FIELDS = ("id", "image", "status", "caption", "error_type", "error", "prompt_tokens", "completion_tokens",
              "total_tokens", "cost_usd", "latency_ms", "attempts")
# Why a row shows a placeholder instead of a thumbnail (the page prints these words).
NO_IMAGE, NOT_FOUND, UNREADABLE, REMOTE, NOT_EMBEDDED = "no image", "not found", "unreadable", "remote", "not embedded"


class ReportError(ConfigError):
    """The output table cannot be read or the page cannot be written; exit code 2."""


@dataclass(frozen=True)
class ReportStats:
    html_path: Path
    rows: int
    ok: int
    error: int
    thumbnails: int  # rows shown with an embedded thumbnail
    not_embedded: int  # rows left without one because of the thumbnail cap
    not_found: int  # rows whose image file was not found under any root
    bytes: int  # size of the page
    seconds: float

    def line(self) -> str:
        return (f"wrote {self.html_path} ({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s: {self.rows:,} rows, "
                f"{self.ok:,} ok, {self.error:,} error, {self.thumbnails:,} thumbnails")


def write_report(
    output_parquet: Path,
    html_path: Path,
    *,
    thumb_px: int = 96,
    max_thumb_bytes: int = 6000,
    max_thumbnails: int = DEFAULT_MAX_THUMBNAILS,
    images_root: Path | None = None,
) -> ReportStats:
    """Write one HTML page reviewing `output_parquet`. Thumbnails go to the first `max_thumbnails`
    rows and to error rows (at most `max_thumbnails` of those too); the page says when rows were left out."""
    started = time.monotonic()
    output_parquet, html_path = Path(output_parquet), Path(html_path)
    table = read_output(output_parquet)
    summary = summarize(table)
    roots = image_roots(output_parquet, images_root)
    thumbs, refs = make_thumbnails(table, roots, thumb_px=thumb_px, max_bytes=max_thumb_bytes, cap=max_thumbnails)
    page = render_page(output_parquet, table, summary, thumbs, refs, cap=max_thumbnails)
    _write_atomically(html_path, page.encode("utf-8"))
    return ReportStats(
        html_path=html_path,
        rows=summary["rows"],
        ok=summary["ok"],
        error=summary["error"],
        thumbnails=sum(isinstance(r, int) for r in refs),
        not_embedded=refs.count(NOT_EMBEDDED),
        not_found=refs.count(NOT_FOUND),
        bytes=len(page.encode("utf-8")),
        seconds=time.monotonic() - started,
    )


def read_output(path: Path) -> pa.Table:
    if not path.is_file():
        raise ReportError(f"{path}: no such file (pass the Parquet file a caption run wrote)")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ReportError(f"{path}: not a readable Parquet file ({e})") from e
    missing = {"id", "status"} - set(table.column_names)
    if missing:
        raise ReportError(f"{path}: not a caption output (no {', '.join(sorted(missing))} column)")
    return table


# --- summary -----------------------------------------------------------------


def summarize(table: pa.Table) -> dict[str, Any]:
    """Counts, sums, latency percentiles and histogram, error types: everything the page's top shows."""
    status = table["status"]
    is_error = pc.fill_null(pc.equal(status, "error"), False)
    summary: dict[str, Any] = {
        "rows": table.num_rows,
        "ok": _count(pc.equal(status, "ok")),
        "error": _count(is_error),
        "tokens": {name: _sum(table, name) for name in ("prompt_tokens", "completion_tokens", "total_tokens")},
        # No prices (an older output, or a model missing from the prices file): no cost column at all.
        "cost_usd": _sum(table, "cost_usd") if "cost_usd" in table.column_names and table.column("cost_usd").null_count < table.num_rows else None,
        "models": _top_values(table, "model", 3),
    }
    error_types = pc.fill_null(pc.filter(_column(table, "error_type"), is_error), "unknown")
    summary["error_types"] = sorted(((d["values"], d["counts"]) for d in pc.value_counts(error_types).to_pylist()),
                                    key=lambda tc: (-tc[1], tc[0]))
    summary["latency"] = _latency(_column(table, "latency_ms"))
    return summary


def _latency(latency: pa.ChunkedArray) -> dict[str, Any] | None:
    latency = pc.cast(pc.drop_null(latency), pa.float64())
    latency = pc.filter(latency, pc.is_finite(latency))
    if len(latency) == 0:
        return None
    p50, p90, p99 = pc.quantile(latency, q=[0.5, 0.9, 0.99]).to_pylist()
    top = pc.max(latency).as_py()
    # A few timeouts would squash every other bar into the first one: stop the axis at p99 then.
    high = top if top <= 1.5 * p99 or p99 == 0 else p99
    width = (high / HISTOGRAM_BINS) or 1.0
    bins = pc.min_element_wise(pc.cast(pc.floor(pc.divide(latency, width)), pa.int64()), HISTOGRAM_BINS - 1)
    counts = [0] * HISTOGRAM_BINS
    for d in pc.value_counts(bins).to_pylist():
        counts[d["values"]] = d["counts"]
    return {"p50": p50, "p90": p90, "p99": p99, "max": top, "high": high, "bins": counts,
            "beyond": _count(pc.greater(latency, high)), "n": len(latency)}


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name in table.column_names:
        return table[name]
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def _count(mask: pa.ChunkedArray) -> int:
    return int(pc.sum(pc.cast(pc.fill_null(mask, False), pa.int64())).as_py() or 0)


def _sum(table: pa.Table, name: str) -> int | float:
    if name not in table.column_names:
        return 0
    return pc.sum(table[name]).as_py() or 0


def _top_values(table: pa.Table, name: str, n: int) -> list[str]:
    if name not in table.column_names:
        return []
    counts = pc.value_counts(pc.drop_null(table[name])).to_pylist()
    return [d["values"] for d in sorted(counts, key=lambda d: -d["counts"])[:n]]


# --- thumbnails ----------------------------------------------------------------


def image_roots(output_parquet: Path, images_root: Path | None) -> list[Path]:
    """Folders a relative `image` value may be relative to, most likely first. It was relative to the
    manifest's folder; the last run record beside the output names the manifest, when it still exists."""
    roots = [Path(images_root)] if images_root is not None else []
    manifest = _recorded_manifest(output_parquet)
    if manifest is not None:
        roots.append(manifest if manifest.is_dir() else manifest.parent)
    roots += [output_parquet.parent, Path.cwd()]
    unique: dict[Path, None] = {}
    for root in roots:
        unique.setdefault(root.resolve(), None)
    return list(unique)


def _recorded_manifest(output_parquet: Path) -> Path | None:
    runs = output_parquet.with_name(output_parquet.name + ".runs.jsonl")
    try:
        lines = runs.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            manifest = json.loads(line).get("options", {}).get("manifest")
        except (ValueError, AttributeError):
            continue
        if isinstance(manifest, str) and Path(manifest).exists():
            return Path(manifest)
    return None


def resolve_image(value: str | None, roots: list[Path]) -> Path | str:
    """The image file a row names, or why there is none to show."""
    if not value:
        return NO_IMAGE
    if re.match(r"(?i)https?://", value):
        return REMOTE
    path = Path(value).expanduser()
    for candidate in [path] if path.is_absolute() else [root / path for root in roots]:
        if candidate.is_file():
            return candidate
    return NOT_FOUND


def thumbnail_jpeg(path: Path, thumb_px: int, max_bytes: int) -> bytes | None:
    """A JPEG at most thumb_px on its longer side and max_bytes long (quality, then size, give way)."""
    with Image.open(path) as im:
        im.draft("RGB", (thumb_px, thumb_px))  # a JPEG decodes at 1/2..1/8 scale: far faster for photos
        im = ImageOps.exif_transpose(im)
        im.thumbnail((thumb_px, thumb_px), reducing_gap=2.0)
        im = _flatten(im)
    side = thumb_px
    while side >= 8:
        for quality in (80, 65, 50, 35, 20):
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=quality, optimize=True)
            if buf.tell() <= max_bytes:
                return buf.getvalue()
        side = side * 3 // 4
        im.thumbnail((side, side))
    return None


def _flatten(im: Image.Image) -> Image.Image:
    """RGB for JPEG: transparent pixels become white, not black."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGB", im.size, "white")
        background.paste(im, mask=im.getchannel("A"))
        return background
    return im.convert("RGB")


def make_thumbnails(
    table: pa.Table, roots: list[Path], *, thumb_px: int, max_bytes: int, cap: int
) -> tuple[list[str], list[int | str]]:
    """Thumbnails as data: URLs (each image once), and per row either the index of its thumbnail
    or the reason it has none. Decoding and resizing run in threads: Pillow releases the GIL."""
    images = _column(table, "image").to_pylist()
    errors = pc.fill_null(pc.equal(table["status"], "error"), False).to_pylist()
    chosen = set(range(min(cap, len(images))))
    chosen.update([i for i, e in enumerate(errors) if e and i >= cap][:cap])

    def one(value: str) -> str:
        found = resolve_image(value, roots)
        if isinstance(found, str):
            return found
        try:
            jpeg = thumbnail_jpeg(found, thumb_px, max_bytes)
        except Exception:  # noqa: BLE001 - any file Pillow cannot turn into a thumbnail gets a placeholder
            return UNREADABLE
        return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode() if jpeg else UNREADABLE

    wanted = sorted({images[i] for i in chosen if images[i]})
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        made = dict(zip(wanted, pool.map(one, wanted)))
    thumbs: list[str] = []
    index: dict[str, int] = {}
    refs: list[int | str] = []
    for i, value in enumerate(images):
        if not value:
            refs.append(NO_IMAGE)
        elif i not in chosen:
            refs.append(REMOTE if re.match(r"(?i)https?://", value) else NOT_EMBEDDED)
        elif made[value].startswith("data:"):
            refs.append(index.setdefault(value, len(thumbs)))
            if refs[-1] == len(thumbs):
                thumbs.append(made[value])
        else:
            refs.append(made[value])
    return thumbs, refs


# --- the page --------------------------------------------------------------------


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
    script = _SCRIPT
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    values = {
        "TITLE": html.escape(f"Captions: {source.name}"),
        "CSP": f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; base-uri 'none'; form-action 'none'",
        "HEADER": _header_html(source, summary, refs, _column(table, "error_type").to_pylist(), cap),
        "SUMMARY": _summary_html(summary),
        "COST_HEAD": '<th class="num">cost</th>' if summary["cost_usd"] is not None else "",
        "DATA": script_json(payload),
        "SCRIPT": script,
    }
    # One pass over the template: a value is never scanned for placeholders, whatever it holds.
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _TEMPLATE)


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
        cards.append(_card("cost", f"${s['cost_usd']:,.2f}", f"${s['cost_usd'] / rows:.5f} a row" if rows else ""))
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


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from e


# --- command line ----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline report",
        description="Write one self-contained HTML page to review an output table: a summary (counts, tokens, "
        "cost, latency, error types), then every row with a thumbnail, filterable by status and error type, "
        "searchable. It opens from disk in any browser, offline.",
        epilog="exit codes: 0 page written; 2 the table cannot be read or the page cannot be written.",
    )
    p.add_argument("output", metavar="OUTPUT.parquet", type=Path, help="the Parquet file a caption run wrote")
    p.add_argument("-o", "--html", type=Path, metavar="PATH", help="page to write (default: OUTPUT.parquet.html beside it)")
    p.add_argument("--images-root", type=Path, metavar="DIR",
                   help="folder relative image paths are relative to: the manifest's folder (default: tried from the "
                   "last run record, then the output's folder, then the current one)")
    p.add_argument("--max-thumbnails", type=int, default=DEFAULT_MAX_THUMBNAILS, metavar="N",
                   help=f"embed thumbnails for the first N rows and up to N error rows (default {DEFAULT_MAX_THUMBNAILS})")
    p.add_argument("--thumb-px", type=int, default=96, metavar="PX", help="longest side of a thumbnail (default 96)")
    p.add_argument("--max-thumb-bytes", type=int, default=6000, metavar="N", help="largest thumbnail, in bytes (default 6000)")
    return p


def default_html_path(output: Path) -> Path:
    return output.with_name(output.name + ".html")


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline report ...`; argv is what follows `report`."""
    args = build_parser().parse_args(argv)
    html_path = args.html or default_html_path(args.output)
    try:
        stats = write_report(args.output, html_path, thumb_px=args.thumb_px, max_thumb_bytes=args.max_thumb_bytes,
                             max_thumbnails=args.max_thumbnails, images_root=args.images_root)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(stats.line())
    return 0


# --- template ---------------------------------------------------------------------
# Kept here rather than in a separate .html file so that an installed (non-editable) package has it too.

_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var F = {};
  data.fields.forEach(function (name, i) { F[name] = i; });
  var rows = data.rows, thumbs = data.thumbs, pageSize = data.page_size;
  var $ = function (id) { return document.getElementById(id); };
  var statusSel = $("f-status"), typeSel = $("f-type"), search = $("f-search");
  var tbody = $("rows"), count = $("count"), pageLabel = $("page"), prev = $("prev"), next = $("next");
  var shown = [], page = 0, haystack = null;

  data.error_types.forEach(function (tc) {
    var option = document.createElement("option");
    option.value = tc[0];
    option.textContent = tc[0] + " (" + tc[1].toLocaleString() + ")";
    typeSel.appendChild(option);
  });

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function num(v) { return v === null || v === undefined ? "–" : Number(v).toLocaleString(); }
  function ms(v) { return v === null || v === undefined ? "–" : v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(2) + " s"; }
  function usd(v) { return v === null || v === undefined ? "–" : "$" + Number(v).toFixed(5); }

  function applyFilters() {
    var status = statusSel.value, type = typeSel.value, q = search.value.trim().toLowerCase();
    if (q && haystack === null) {
      haystack = rows.map(function (r) {
        return [r[F.id], r[F.caption], r[F.error], r[F.image]].join("\n").toLowerCase();
      });
    }
    var ok = 0, error = 0;
    shown = [];
    for (var i = 0; i < rows.length; i++) {
      var r = rows[i];
      if (status !== "all" && r[F.status] !== status) continue;
      if (type && r[F.error_type] !== type) continue;
      if (q && haystack[i].indexOf(q) < 0) continue;
      shown.push(i);
      if (r[F.status] === "ok") ok++; else if (r[F.status] === "error") error++;
    }
    count.textContent = shown.length.toLocaleString() + " of " + rows.length.toLocaleString() +
      " rows match (" + ok.toLocaleString() + " ok, " + error.toLocaleString() + " error)";
    page = 0;
    render();
  }

  function thumbCell(r) {
    var td = el("td", "thumb"), t = r[F.thumb];
    if (typeof t === "number") {
      var img = el("img");
      img.alt = "";
      img.src = thumbs[t];
      td.appendChild(img);
    } else if (t === "remote" && /^https?:\/\//i.test(r[F.image] || "")) {
      var a = el("a", "ph remote", "open image ↗");
      a.href = r[F.image];
      a.target = "_blank";
      a.rel = "noopener noreferrer";
      td.appendChild(a);
    } else {
      td.appendChild(el("span", "ph", t));
    }
    return td;
  }

  function rowElement(i) {
    var r = rows[i], tr = el("tr", r[F.status] === "error" ? "error" : "");
    tr.dataset.status = r[F.status] || "";
    tr.dataset.id = r[F.id] || "";
    tr.appendChild(thumbCell(r));
    var id = el("td", "id");
    id.appendChild(el("div", "rid", r[F.id]));
    if (r[F.image] && r[F.image] !== r[F.id]) id.appendChild(el("div", "path", r[F.image]));
    tr.appendChild(id);
    var st = el("td");
    st.appendChild(el("span", "badge " + (r[F.status] === "ok" ? "ok" : "error"), r[F.status]));
    tr.appendChild(st);
    var text = el("td", "text");
    if (r[F.status] === "error") {
      text.appendChild(el("div", "etype", r[F.error_type] || "error"));
      text.appendChild(el("div", "emsg", r[F.error]));
    } else {
      text.appendChild(el("div", "caption", r[F.caption]));
    }
    tr.appendChild(text);
    tr.appendChild(el("td", "num", num(r[F.prompt_tokens]) + " / " + num(r[F.completion_tokens]) + " / " + num(r[F.total_tokens])));
    if (data.has_cost) tr.appendChild(el("td", "num", usd(r[F.cost_usd])));
    tr.appendChild(el("td", "num", ms(r[F.latency_ms])));
    tr.appendChild(el("td", "num", num(r[F.attempts])));
    return tr;
  }

  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / pageSize));
    page = Math.min(Math.max(page, 0), pages - 1);
    var start = page * pageSize, end = Math.min(start + pageSize, shown.length);
    var fragment = document.createDocumentFragment();
    for (var k = start; k < end; k++) fragment.appendChild(rowElement(shown[k]));
    tbody.replaceChildren(fragment);
    pageLabel.textContent = shown.length ? "rows " + (start + 1).toLocaleString() + "–" + end.toLocaleString() +
      " · page " + (page + 1).toLocaleString() + " of " + pages.toLocaleString() : "no rows match";
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }

  statusSel.addEventListener("change", applyFilters);
  typeSel.addEventListener("change", function () {
    if (typeSel.value && statusSel.value === "ok") statusSel.value = "error";
    applyFilters();
  });
  search.addEventListener("input", applyFilters);
  prev.addEventListener("click", function () { page--; render(); });
  next.addEventListener("click", function () { page++; render(); });
  document.querySelectorAll("[data-error-type]").forEach(function (node) {
    function pick() {
      statusSel.value = "error";
      typeSel.value = node.getAttribute("data-error-type");
      applyFilters();
      $("table").scrollIntoView();
    }
    node.addEventListener("click", pick);
    node.addEventListener("keydown", function (e) { if (e.key === "Enter") pick(); });
  });
  applyFilters();
})();
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{CSP}}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{TITLE}}</title>
<style>
  body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
  header, main { max-width: 1280px; margin: 0 auto; padding: 0 20px; }
  h1 { font-size: 20px; margin: 18px 0 2px; }
  .meta { color: #57606a; margin: 0 0 8px; overflow-wrap: anywhere; }
  .note { background: #fff8c5; border: 1px solid #eedc82; padding: 6px 10px; border-radius: 6px; margin: 6px 0; }
  .cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0; }
  .card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 14px; min-width: 120px; }
  .card .label { color: #57606a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
  .card .value { font-size: 22px; font-weight: 600; }
  .card .detail { color: #57606a; font-size: 12px; }
  .card.ok .value { color: #1a7f37; }
  .card.error .value { color: #cf222e; }
  .charts { display: flex; flex-wrap: wrap; gap: 10px; }
  figure { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 8px 14px; margin: 0; }
  figcaption { color: #57606a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
  .pcts { margin: 4px 0; }
  svg text { font-size: 11px; fill: #57606a; }
  svg.hist rect { fill: #54aeff; }
  svg line.mark { stroke: #57606a; stroke-dasharray: 2 2; }
  svg.errors rect { fill: #ff8182; }
  svg.errors g.etype { cursor: pointer; }
  svg.errors g.etype:hover rect, svg.errors g.etype:focus rect { fill: #cf222e; }
  .controls { position: sticky; top: 0; background: #f6f8fa; display: flex; flex-wrap: wrap; gap: 10px; align-items: center; padding: 10px 0; border-bottom: 1px solid #d0d7de; z-index: 1; }
  .controls input[type=search] { flex: 1; min-width: 200px; padding: 5px 8px; font: inherit; }
  .controls select, .controls button { font: inherit; padding: 4px 8px; }
  #count { color: #57606a; }
  table { width: 100%; border-collapse: collapse; background: #fff; margin: 10px 0 30px; border: 1px solid #d0d7de; }
  th, td { text-align: left; vertical-align: top; padding: 6px 8px; border-bottom: 1px solid #eaeef2; }
  th { background: #f6f8fa; font-size: 12px; color: #57606a; font-weight: 600; }
  .num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
  td.thumb { width: 96px; height: 96px; padding: 4px; }
  td.thumb img { display: block; max-width: 96px; max-height: 96px; border-radius: 4px; }
  .ph { display: flex; align-items: center; justify-content: center; width: 96px; height: 72px; background: #d0d7de; color: #57606a; font-size: 11px; border-radius: 4px; text-align: center; }
  a.ph { color: #0969da; }
  td.id { max-width: 220px; overflow-wrap: anywhere; }
  .rid { font-weight: 600; }
  .path { color: #57606a; font-size: 12px; }
  .text { max-width: 560px; overflow-wrap: anywhere; white-space: pre-wrap; }
  .badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
  .badge.ok { background: #dafbe1; color: #1a7f37; }
  .badge.error { background: #ffebe9; color: #cf222e; }
  tr.error { background: #fff5f5; }
  .etype { font-weight: 600; color: #cf222e; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
  .emsg { color: #82071e; }
</style>
</head>
<body>
<header>
<h1>{{TITLE}}</h1>
{{HEADER}}
{{SUMMARY}}
</header>
<main>
<div class="controls">
  <label>status <select id="f-status"><option value="all">all</option><option value="ok">ok</option><option value="error">error</option></select></label>
  <label>error type <select id="f-type"><option value="">any</option></select></label>
  <input id="f-search" type="search" placeholder="search captions, errors and ids" aria-label="search">
  <button id="prev" type="button">‹ prev</button><span id="page"></span><button id="next" type="button">next ›</button>
  <span id="count"></span>
</div>
<table id="table">
<thead><tr><th>image</th><th>id</th><th>status</th><th>caption or error</th><th class="num">tokens<br>prompt / completion / total</th>{{COST_HEAD}}<th class="num">latency</th><th class="num">attempts</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<noscript><p>The rows need JavaScript to show; the summary above does not.</p></noscript>
</main>
<script type="application/json" id="report-data">{{DATA}}</script>
<script>{{SCRIPT}}</script>
</body>
</html>
"""

if __name__ == "__main__":
    sys.exit(main())
