"""Scenario g: a dataset output grows without being rewritten (issue 14, point 5).

g  wall of appending 10,000 rows (tiny PNGs) to a 1,000,000-row dataset output, against captioning the
   same 10,000 rows into an empty dataset output, both against the simulator at latency 0; the old part
   must come out byte for byte untouched, and one new part of 10,000 rows is the only thing written.
"""

from __future__ import annotations

import csv
import hashlib
import shutil
import statistics
from pathlib import Path

import pyarrow.parquet as pq

import data
from scenarios import BenchError, Context, Result, _fmt, caption, expect, finished_table

BASE_PART = "part-00000000T000000000000Z-0.parquet"  # sorts before any part a run writes


def append(ctx: Context) -> list[Result]:
    n_old, n_new = (200_000, 2_000) if ctx.quick else (1_000_000, 10_000)
    work = ctx.work / "g"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tiny = data.tiny_set(10_000)
    new_rows = [(f"new{i:05d}", str(tiny / "img" / f"{i:06d}.png")) for i in range(n_new)]
    old_ids, old_images = data.url_ids(n_old)
    small, big = work / "new.csv", work / "grown.csv"
    _write(small, new_rows)
    _write(big, list(zip(old_ids, old_images)) + new_rows)
    base = work / "base.parquet"
    with ctx.simulator(name="g") as sim:
        table, _ = finished_table(data.url_manifest(n_old, with_ids=True), base, sim.base_url, n_old)
        pq.write_table(table, base, compression="zstd")
        digest = _digest(base)
        empty_walls, append_walls, rss = [], [], {"empty": [], "append": []}
        for _ in range(ctx.repeats):
            empty = work / "empty"
            shutil.rmtree(empty, ignore_errors=True)
            measured, stats, log = caption(ctx, sim, small, empty, "--concurrency", "64", name="g-empty")
            _expect_parts(measured, log, stats, empty, [n_new], n_new)
            empty_walls.append(measured.wall)
            rss["empty"].append(measured.max_rss_mb)

            grown = work / "grown"
            shutil.rmtree(grown, ignore_errors=True)
            grown.mkdir()
            shutil.copyfile(base, grown / BASE_PART)
            measured, stats, log = caption(ctx, sim, big, grown, "--concurrency", "64", name="g-append")
            _expect_parts(measured, log, stats, grown, [n_old, n_new], n_new)
            if _digest(grown / BASE_PART) != digest:
                raise BenchError(f"the {n_old:,}-row part was rewritten by the append (log {log})")
            append_walls.append(measured.wall)
            rss["append"].append(measured.max_rss_mb)
            print(f"  g: {n_new:,} rows into an empty dataset {_fmt(empty_walls[-1])}; appended to {n_old:,} rows "
                  f"{_fmt(append_walls[-1])} (old part untouched)", flush=True)
    return [Result("g", f"wall, {n_new:,} rows appended to a {n_old:,}-row dataset output, latency 0", "s", append_walls,
                   baseline=statistics.median(empty_walls), baseline_what=f"{n_new:,} rows into an empty one", target=1.5,
                   notes=[f"peak RSS: append {statistics.median(rss['append']):.0f} MB, empty {statistics.median(rss['empty']):.0f} MB; "
                          f"the old part is never rewritten (checked by digest)"])]


def _write(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image"])
        writer.writerows(rows)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _expect_parts(measured, log: Path, stats: dict, output: Path, rows: list[int], requests: int) -> None:
    expect(measured, log)
    parts = sorted(output.glob("part-*.parquet"))
    found = [pq.ParquetFile(p).metadata.num_rows for p in parts]
    if found != rows or stats["requests"] != requests:
        raise BenchError(f"expected parts of {rows} rows and {requests} requests, found {found} and {stats['requests']} ({output}, log {log})")
