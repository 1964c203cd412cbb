"""Read the manifest: the list of images to caption, one ManifestRow per entry.

The format is picked by extension (.csv, .tsv, .jsonl/.ndjson, .parquet, .txt)
or is a folder of images. Each format has one small reader (manifest_readers.py),
and `Manifest.rows` drops duplicate ids. An entry that cannot
be captioned is not dropped: it comes out with `problem` set, so every entry
still gets exactly one output row.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from . import storage
from .errors import ManifestError
from .hashedset import HashedSet
from .manifest_files import (
    count_lines,
    folder_entries,
    scan_folder,
    open_file,
    parquet_file,
    RemoteFile,
)
from .manifest_readers import (
    USUAL,
    Chosen,
    Entry,
    check_columns,
    csv_entries,
    csv_header,
    extra_columns,
    sampled_names,
    read_jsonl,
    read_parquet,
    read_txt,
    ruled,
)
from .records import ManifestRow

log = logging.getLogger("pipeline.manifest")
MAX_DUPLICATE_EXAMPLES = 20

@dataclass
class ManifestStats:
    rows: int = 0  # rows read, one per id: problem rows and rows `skip` took included
    problems: int = 0
    duplicates: int = 0
    duplicate_examples: list[tuple[int, str]] = field(default_factory=list)  # (line, id)

class Manifest:
    # `unit` is what `line` counts, for messages: "line", or "record" for Parquet.
    def __init__(self, path: Path, entries: Callable[[], Iterator[Entry]], count: Callable[[], int], unit: str = "line",
                 chosen: Chosen = USUAL, quiet: bool = False):
        self.path = path
        self.chosen = chosen
        self.stats = ManifestStats()
        self._entries, self._count, self._unit = entries, count, unit
        self._counted: int | None = None
        self._quiet = quiet  # a second reader: the first one warns
        self.skipped_files = 0  # a folder's files that are not images

    def second_reader(self) -> "Manifest":
        """An independent reader of the same manifest, with its own stats and no warnings (plan.py counts with it)."""
        return Manifest(self.path, self._entries, self.count, self._unit, self.chosen, quiet=True)

    def count(self) -> int:
        """A cheap estimate of the number of rows (never fewer than there are), for a progress bar."""
        if self._counted is None:
            self._counted = self._count()
        return self._counted

    def rows(self, skip: Callable[[str, str | None, str], bool] | None = None) -> Iterator[ManifestRow]:
        """Stream the rows once; each call starts a fresh `stats`.

        A row for which `skip(id, prompt, source)` is true is checked and counted but not
        yielded. It is asked before the row is built: a resumed run skips most rows.
        """
        self.stats = stats = ManifestStats()
        seen = HashedSet(expected=self.count())  # sized up front: growing costs more than counting
        for line, row_id, image, source, prompt, problem, record in self._entries():
            if not seen.add(row_id):
                self._count_duplicate(line, row_id)
                continue
            stats.rows += 1
            stats.problems += problem is not None
            if skip is not None and skip(row_id, prompt, source):
                continue
            yield ManifestRow(line, row_id, image, source, prompt, extra_columns(record, self.chosen), problem)

    def _count_duplicate(self, line: int, row_id: str) -> None:
        stats = self.stats
        stats.duplicates += 1
        if self._quiet:
            return
        if stats.duplicates <= MAX_DUPLICATE_EXAMPLES:
            stats.duplicate_examples.append((line, row_id))
            log.warning("%s %s %d: duplicate id %r skipped", self.path.name, self._unit, line, row_id)
        elif stats.duplicates == MAX_DUPLICATE_EXAMPLES + 1:
            log.warning("%s: more duplicate ids; counting them without logging each", self.path.name)

def open_manifest(path: str | os.PathLike, image_column: str | None = None, id_column: str | None = None,
                  store: storage.Storage | None = None) -> Manifest:
    """Check that the manifest can be read and return it; rows are read later, lazily.

    `path` is a local path or any fsspec URL (`store` reads it). `image_column` / `id_column` name the
    columns to use instead of the usual names (any case)."""
    chosen: Chosen = (image_column or None, id_column or None)
    if storage.protocol(str(path)):
        path, is_dir = _remote(str(path), store or storage.Storage())
        base = path.folder
    else:
        path = Path(os.path.abspath(os.path.expanduser(path)))
        if not path.exists():
            raise ManifestError(f"manifest not found: {path}")
        is_dir, base = path.is_dir(), str(path.parent)
    if (is_dir or path.suffix.lower() == ".txt") and chosen != USUAL:
        what = "a folder" if is_dir else "a .txt manifest"
        raise ManifestError(f"--image-column and --id-column name columns of a CSV, JSONL or Parquet manifest; {path} is {what}, which has none")
    if is_dir:
        scan = scan_folder(path)  # once: the count, the plan and the reader see the same files
        if scan.skipped:
            log.warning("%s: skipped %d files that are not images (%s%s)", path, scan.skipped, ", ".join(scan.skipped_examples),
                        ", ..." if scan.skipped > len(scan.skipped_examples) else "",
                        extra={"event": "skipped_files", "skipped_files": scan.skipped, "examples": scan.skipped_examples})
        manifest = Manifest(path, partial(folder_entries, path, scan.images), lambda: len(scan.images))
        manifest.skipped_files = scan.skipped
        return manifest
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with open_file(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            check_columns(path, csv_header(path, reader), chosen)
        return Manifest(path, partial(csv_entries, path, delimiter, base, chosen), partial(count_lines, path, header=1), chosen=chosen)
    if suffix in (".jsonl", ".ndjson", ".txt"):
        open_file(path).close()
        if suffix != ".txt" and (names := sampled_names(path)) is not None:
            check_columns(path, names, chosen, where=" (in its first 1000 lines)")
        read = read_txt if suffix == ".txt" else read_jsonl
        return Manifest(path, lambda: ruled(read(path), base, "line", chosen), partial(count_lines, path), chosen=chosen)
    if suffix == ".parquet":
        check_columns(path, parquet_file(path).schema_arrow.names, chosen)
        return Manifest(path, lambda: ruled(read_parquet(path), base, "record", chosen),
                        lambda: parquet_file(path).metadata.num_rows, "record", chosen)
    kind = repr(path.suffix) if path.suffix else "(no extension)"
    raise ManifestError(
        f"unsupported manifest type {kind} for {path}; "
        "use a .csv, .tsv, .jsonl, .ndjson, .parquet or .txt file, or a folder of images"
    )


def _remote(url: str, store: storage.Storage) -> tuple[RemoteFile, bool]:
    """The manifest at a URL, and whether it is a folder (a prefix of images); it must exist."""
    manifest = RemoteFile(url, store)
    try:
        fs, where = store.filesystem(url)
        if url.endswith("/") or fs.isdir(where):
            return manifest, True
        if not fs.exists(where):
            raise ManifestError(f"manifest not found: {url}")
    except storage.StorageError as e:
        raise ManifestError(f"cannot read manifest {url}: {e}") from None
    except ManifestError:
        raise
    except Exception as e:  # the store's own errors: no credentials, no such bucket, access denied
        raise ManifestError(f"cannot read manifest {url}: {type(e).__name__}: {e}") from None
    return manifest, False
