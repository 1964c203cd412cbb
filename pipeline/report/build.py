"""`python -m pipeline report OUTPUT.parquet`: one self-contained HTML page to review an output table.

The page opens from disk in any browser and loads nothing from anywhere: the rows travel as one JSON
blob that the page's own script renders 100 at a time (so 100,000 rows never become 100,000 DOM nodes),
the summary and its charts are plain HTML and inline SVG made here, and thumbnails are small JPEG
`data:` URLs embedded for a capped number of rows. Captions come from a model and ids from a manifest,
so every piece of data is escaped on the way in and set with `textContent` on the way out.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import EXIT_USAGE
from pipeline.files import report_path, write_atomically
from pipeline.report.data import read_output, summarize
from pipeline.report.errors import ReportError
from pipeline.storage import location
from pipeline.report.render import render_page
from pipeline.report.thumbs import NOT_EMBEDDED, image_roots, make_thumbnails

DEFAULT_MAX_THUMBNAILS = 5000


@dataclass(frozen=True)
class ReportStats:
    html_path: Path
    rows: int
    ok: int
    error: int
    thumbnails: int  # rows shown with an embedded thumbnail
    not_embedded: int  # rows left without one because of the thumbnail cap
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
    _write_page(html_path, page.encode("utf-8"))
    return ReportStats(
        html_path=html_path,
        rows=summary["rows"],
        ok=summary["ok"],
        error=summary["error"],
        thumbnails=sum(isinstance(r, int) for r in refs),
        not_embedded=refs.count(NOT_EMBEDDED),
        bytes=len(page.encode("utf-8")),
        seconds=time.monotonic() - started,
    )


def _write_page(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, data, durable=False)
    except OSError as e:
        raise ReportError(f"cannot write {path}: {e.strerror or e}") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline report",
        description="Write one self-contained HTML page to review an output table: a summary (counts, tokens, "
        "cost, latency, error types), then every row with a thumbnail, filterable by status and error type, "
        "searchable. It opens from disk in any browser, offline.",
        epilog="exit codes: 0 page written; 2 the table cannot be read or the page cannot be written.",
    )
    p.add_argument("output", metavar="OUTPUT.parquet", type=location, help="the Parquet file a caption run wrote")
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
    return report_path(output)


def main(argv: list[str] | None = None) -> int:
    """`python -m pipeline report ...`; argv is what follows `report`."""
    args = build_parser().parse_args(argv)
    if isinstance(args.output, str):  # a URL (storage.location keeps it as text)
        print("error: the review page is made from a local output; for one in a bucket, compact it and copy its part here "
              "(or use `pipeline status URL` and `pipeline export URL`)", file=sys.stderr)
        return EXIT_USAGE
    html_path = args.html or default_html_path(args.output)
    try:
        stats = write_report(args.output, html_path, thumb_px=args.thumb_px, max_thumb_bytes=args.max_thumb_bytes,
                             max_thumbnails=args.max_thumbnails, images_root=args.images_root)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(stats.line())
    return 0
