"""`pipeline compact OUTPUT [--parts N]`: rewrite a dataset output into N parts holding exactly one row per id (per id and task, rowkey.py).

Under the output's lock (no run writes meanwhile). A journal a killed run left is first added as a part.
The newest row per id goes into the new parts, written under temporary names and renamed; then
_parts.json lists only them, and the old parts are deleted. A reader that goes by _parts.json sees the
old set or the new one; one that lists the folder in the same second may see both, and the new parts are
the newer (their names sort last), so newest-per-id still reads right. Killed midway, the dataset is
still correct (old parts plus some new ones, newest wins) and the next compact finishes the job.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .dataset import new_part_name, parts, record_parts
from .storage import Storage, location
from .errors import EXIT_IO, EXIT_LOCKED, EXIT_USAGE, ConfigError, OutputLocked, OutputWriteError, write_error
from .files import fsync_directory, is_dataset, journal_path, temporary_path
from .lock import OutputLock
from .outputs import Output
from .remote import RemoteDataset, local_output
from .merge import merge_journal


def compact(output: Path | str, n_parts: int = 1, store: Storage | None = None) -> tuple[int, int]:
    """(rows, parts before) after rewriting `output` into `n_parts` parts of one row per id."""
    if isinstance(output, str):
        return _compact_in_bucket(output, n_parts, store or Storage())
    if not is_dataset(output):
        raise ConfigError(f"{output} is a single Parquet file, which always holds one row per id: nothing to compact")
    with OutputLock(output):
        if journal_path(output).exists():
            merge_journal(output, journal_path(output))
        old = parts(output)
        if not old:
            raise ConfigError(f"{output}: no such dataset output (no run has written a part yet)")
        reader = Output(output)
        rows = sum(batch.num_rows for batch in reader.batches(["id"]))
        per_part = max(1, -(-rows // n_parts))
        written = _write(output, reader, per_part)
        record_parts(output, replacing=old)
        for part in old:
            if part not in written:
                part.unlink(missing_ok=True)
        fsync_directory(output)
    return rows, len(old)


def _compact_in_bucket(url: str, n_parts: int, store: Storage) -> tuple[int, int]:
    """The same for a dataset in a bucket, under its lease: new parts are written here, put there, then the old ones go."""
    remote, local = RemoteDataset(url, store), local_output(url)
    with OutputLock(local):
        remote.acquire_lease()
        try:
            if journal_path(local).exists():
                merge_journal(local, journal_path(local))
            remote.publish(local)
            old = remote.parts()
            if not old:
                raise ConfigError(f"{url}: no such dataset output (no run has put a part there yet)")
            reader = Output(url, store)
            rows = sum(batch.num_rows for batch in reader.batches(["id"]))
            _write(local, reader, max(1, -(-rows // n_parts)))
            remote.publish(local)
            new = [u for u in remote.parts() if u not in old]
            remote.record_parts(replacing=old)
            remote.delete([u for u in old if u not in new])
        finally:
            remote.release_lease()
    return rows, len(old)


def _write(output: Path, reader: Output, per_part: int) -> list[Path]:
    written: list[Path] = []
    writer, temporary, in_part = None, None, 0

    def seal() -> None:
        nonlocal writer, temporary
        if writer is None:
            return
        writer.close()
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())
        final = new_part_name(output, f"-compact{len(written):05d}")
        temporary.replace(final)
        written.append(final)
        writer, temporary = None, None

    try:
        for batch in reader.batches():
            table = pa.Table.from_batches([batch], schema=reader.schema)
            while table.num_rows:
                if writer is None:
                    temporary = temporary_path(output / f"_compact{len(written)}")
                    writer, in_part = pq.ParquetWriter(temporary, reader.schema, compression="zstd"), 0
                take = min(per_part - in_part, table.num_rows)
                writer.write_table(table.slice(0, take))
                in_part += take
                table = table.slice(take)
                if in_part >= per_part:
                    seal()
        seal()
    finally:
        if writer is not None:
            writer.close()
        if temporary is not None:
            temporary.unlink(missing_ok=True)
    fsync_directory(output)
    return written


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipeline compact", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=location, help="a dataset output (a folder of part files)")
    parser.add_argument("--parts", type=int, default=1, metavar="N", help="how many parts to write (default: 1)")
    args = parser.parse_args(argv)
    if args.parts < 1:
        parser.error("--parts must be at least 1")
    try:
        rows, before = compact(args.output, args.parts)
    except ConfigError as e:
        print(f"pipeline compact: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OutputLocked as e:
        print(f"pipeline compact: error: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except (OutputWriteError, OSError) as e:
        error = e if isinstance(e, OutputWriteError) else write_error(getattr(e, "filename", None) or args.output, e, "compact")
        print(f"pipeline compact: error: {error}", file=sys.stderr)
        return EXIT_IO
    print(f"compacted {args.output}: {before} parts -> {min(args.parts, rows)}, {rows:,} rows (one per id, or per id and task)", file=sys.stderr)
    return 0

