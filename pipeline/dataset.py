"""A Parquet dataset output: a folder that each run adds part files to and never rewrites (issue 14).

    OUT/part-20261202T031500123456Z-4242.parquet   one per run (and per recovered journal); names sort by time
    OUT/_parts.json                                 the parts and their row counts, rewritten atomically after each part
    OUT/_journal.jsonl, OUT/_lock, OUT/_runs.jsonl  the run's sidecars (files.py)

A part is written under a hidden temporary name, fsynced and renamed, so a reader never sees half of one;
pyarrow.dataset skips `_` and `.` names, and `OUT/*.parquet` globs match only parts. The newest row per
id wins on reading (parts in name order, rows in order): a row retried or re-captioned by a later run is
in a later part. `pipeline compact OUT` rewrites the parts into N holding exactly one row per id.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .files import fsync_directory, is_dataset, temporary_path, write_atomically

PARTS = "_parts.json"
_PREFIX = "part-"


def parts(output: Path) -> list[Path]:
    """The dataset's complete parts, oldest first: those renamed into place (a part not yet in _parts.json included)."""
    try:
        names = [entry.name for entry in os.scandir(output) if entry.name.startswith(_PREFIX) and entry.name.endswith(".parquet")]
    except FileNotFoundError:
        return []
    return [output / name for name in sorted(names)]


def stored_files(output: Path) -> list[Path]:
    """The Parquet files an output's rows are in, oldest first: the output itself, or a dataset's parts."""
    if is_dataset(output):
        return parts(output)
    return [output] if output.exists() else []


def new_part_name(output: Path, tag: str = "") -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"{time.time_ns() // 1000 % 1_000_000:06d}Z"
    return output / f"{_PREFIX}{stamp}-{os.getpid()}{tag}.parquet"


def write_part(output: Path, tables: Iterator[pa.Table], schema: pa.Schema) -> Path | None:
    """One new part holding `tables` (already conformed to `schema`); None when they hold no row."""
    output.mkdir(parents=True, exist_ok=True)
    final = new_part_name(output)
    temporary = temporary_path(final)
    rows = 0
    try:
        with pq.ParquetWriter(temporary, schema, compression="zstd") as parquet:
            for table in tables:
                if table.num_rows:
                    parquet.write_table(table)
                    rows += table.num_rows
        if not rows:
            return None
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(output)
    record_parts(output)
    return final


def record_parts(output: Path, *, replacing: list[Path] | None = None) -> dict[str, Any]:
    """Rewrite _parts.json from the parts in the folder (minus `replacing`, which compaction is about to delete)."""
    gone = {p.name for p in replacing or []}
    listed = []
    for part in parts(output):
        if part.name in gone:
            continue
        meta = pq.ParquetFile(part).metadata
        listed.append({"name": part.name, "rows": meta.num_rows, "bytes": part.stat().st_size})
    manifest = {"format": "pipeline-dataset/1", "parts": listed, "rows": sum(p["rows"] for p in listed),
                "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_atomically(output / PARTS, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def read_parts_manifest(output: Path) -> dict[str, Any] | None:
    try:
        return json.loads((output / PARTS).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
