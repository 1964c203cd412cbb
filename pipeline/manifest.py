"""Read the manifest: the list of images to caption, one ManifestRow per entry.

The format is picked by extension (.csv, .tsv, .jsonl/.ndjson, .parquet, .txt)
or is a folder of images. Each format has one small reader; `_apply_rules`
applies the column rules shared by all of them (the CSV reader works the usual
row out inline), and `Manifest.rows` drops duplicate ids. An entry that cannot
be captioned is not dropped: it comes out with `problem` set, so every entry
still gets exactly one output row.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow
import pyarrow.parquet as pq

from .errors import ManifestError, ManifestRowError
from .hashedset import HashedSet
from .records import ManifestRow

log = logging.getLogger("pipeline.manifest")

IMAGE_COLUMNS = ("image", "path", "url", "image_url", "file")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_DUPLICATE_EXAMPLES = 20

_EXPECTED_IMAGE = "expected a column named image, path, url, image_url or file"
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}

# An entry once the column rules have judged it, before its row is built:
# (line, id, image, source, prompt, problem, record). `record` is what the reader
# read, kept for the passthrough columns: a dict, or (header, cells) for a CSV row.
Entry = tuple[int, str, str, str, str | None, str | None, Any]


class Raw(NamedTuple):
    """One entry as a reader saw it, before the column rules.

    For the usual entry, readers yield a plain (line, fields, None) tuple instead:
    a Raw costs ~0.3 µs more to build.
    """

    line: int
    fields: dict[str, Any]
    problem: str | None = None  # why the entry is unusable, without the "line N: " prefix


@dataclass
class ManifestStats:
    rows: int = 0  # rows read, one per id: problem rows and rows `skip` took included
    problems: int = 0
    duplicates: int = 0
    duplicate_examples: list[tuple[int, str]] = field(default_factory=list)  # (line, id)


class Manifest:
    # `unit` is what `line` counts, for messages: "line", or "record" for Parquet.
    def __init__(self, path: Path, entries: Callable[[], Iterator[Entry]], count: Callable[[], int], unit: str = "line"):
        self.path = path
        self.stats = ManifestStats()
        self._entries, self._count, self._unit = entries, count, unit
        self._counted: int | None = None

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
            yield ManifestRow(line, row_id, image, source, prompt, _extra(record), problem)

    def _count_duplicate(self, line: int, row_id: str) -> None:
        stats = self.stats
        stats.duplicates += 1
        if stats.duplicates <= MAX_DUPLICATE_EXAMPLES:
            stats.duplicate_examples.append((line, row_id))
            log.warning("%s %s %d: duplicate id %r skipped", self.path.name, self._unit, line, row_id)
        elif stats.duplicates == MAX_DUPLICATE_EXAMPLES + 1:
            log.warning("%s: more duplicate ids; counting them without logging each", self.path.name)


def open_manifest(path: str | os.PathLike) -> Manifest:
    """Check that the manifest can be read and return it; rows are read later, lazily."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    if path.is_dir():
        return Manifest(path, partial(_folder_entries, path), lambda: len(_image_files(path)))
    base = str(path.parent)
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with _open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            _check_columns(path, _csv_header(path, reader))
        return Manifest(path, partial(_csv_entries, path, delimiter, base), partial(_count_lines, path, header=1))
    if suffix in (".jsonl", ".ndjson", ".txt"):
        _open(path).close()
        read = _read_txt if suffix == ".txt" else _read_jsonl
        return Manifest(path, lambda: _ruled(read(path), base, "line"), partial(_count_lines, path))
    if suffix == ".parquet":
        _check_columns(path, _parquet_file(path).schema_arrow.names)
        return Manifest(path, lambda: _ruled(_read_parquet(path), base, "record"), lambda: _parquet_file(path).metadata.num_rows, "record")
    kind = repr(path.suffix) if path.suffix else "(no extension)"
    raise ManifestError(
        f"unsupported manifest type {kind} for {path}; "
        "use a .csv, .tsv, .jsonl, .ndjson, .parquet or .txt file, or a folder of images"
    )


# --- one reader per format ----------------------------------------------------


def _csv_entries(path: Path, delimiter: str, base: str) -> Iterator[Entry]:
    with _open(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = _csv_header(path, reader)
        width = len(header)
        image_at, id_at, prompt_at = (None if name is None else header.index(name) for name in _special_columns(tuple(header)))
        try:
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1  # a quoted field may span lines
                problem = None
                if len(cells) == width:  # the usual case first: this loop runs once per row
                    image = cells[image_at]
                    stripped = image.strip()
                    if stripped.startswith(("http://", "https://")) or (stripped and "://" not in stripped):
                        # A URL or a path, every value a string: the entry _apply_rules would make,
                        # worked out without building a dict. A skipped row takes a third less time.
                        row_id = cells[id_at].strip() if id_at is not None else ""
                        prompt = cells[prompt_at] if prompt_at is not None and cells[prompt_at].strip() else None
                        yield line, row_id or stripped, image, _source(stripped, base), prompt, None, (header, cells)
                        continue
                elif not cells:
                    continue  # blank line
                elif len(cells) < width:
                    cells += [""] * (width - len(cells))  # short rows padded with ""
                else:
                    problem = f"{len(cells)} fields, the header has {width} (an unquoted {delimiter!r}?)"
                yield _apply_rules(Raw(line, dict(zip(header, cells)), problem), base, "line")
        except (UnicodeDecodeError, csv.Error) as e:
            raise _unreadable(path, reader, e) from None


def _csv_header(path: Path, reader: Any) -> list[str]:
    try:
        header = [name.strip() for name in next(reader, [])]
    except (UnicodeDecodeError, csv.Error) as e:
        raise _unreadable(path, reader, e) from None
    if not any(header):
        raise ManifestError(f"manifest {path} has no header row (line 1 should name the columns)")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise ManifestError(f"manifest {path} repeats column names in its header: {', '.join(repeated)}")
    return header


def _read_jsonl(path: Path) -> Iterator[Raw]:
    for line, text in _lines(path):
        if text is None:
            yield Raw(line, {}, "not valid UTF-8 text")
        elif text:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                yield Raw(line, {}, f"not valid JSON: {e.msg}")
                continue
            if isinstance(value, dict):
                yield line, value, None
            else:
                yield Raw(line, {}, f"expected a JSON object, got {_JSON_TYPES.get(type(value), 'null')}")


def _read_txt(path: Path) -> Iterator[Raw]:
    for line, text in _lines(path):
        if text is None:
            yield Raw(line, {}, "not valid UTF-8 text")
        elif text and not text.startswith("#"):
            yield line, {"image": text}, None


def _read_parquet(path: Path) -> Iterator[Raw]:
    record = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                record += 1
                yield record, fields, None
    except (pyarrow.ArrowException, OSError) as e:
        raise ManifestError(f"cannot read Parquet manifest {path} after record {record}: {e}") from None


def _folder_entries(root: Path) -> Iterator[Entry]:
    # Not through _apply_rules: a file name is exact, never trimmed or resolved.
    for index, name in enumerate(_image_files(root), 1):
        yield index, name, name, str(root / name), None, None, {}


def _image_files(root: Path) -> list[str]:
    """Relative paths (with /) of the images under root, hidden ones skipped, sorted."""
    found = []
    for folder, subfolders, files in os.walk(root, onerror=_folder_error):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(folder, name).relative_to(root).as_posix())
    return sorted(found)


# --- the rules shared by all formats -------------------------------------------


def _ruled(raws: Iterator[Raw], base: str, unit: str) -> Iterator[Entry]:
    for raw in raws:
        yield _apply_rules(raw, base, unit)


def _apply_rules(raw: Raw, base: str, unit: str) -> Entry:
    """The entry `raw` makes; an unusable one gets a problem and no source."""
    line, fields, problem = raw
    image_key, id_key, prompt_key = _special_columns(tuple(fields))
    row_id = image = ""
    try:
        row_id = _id(fields.get(id_key))
        if problem:
            raise ManifestRowError(problem)
        image = _image(fields, image_key)
        row_id = row_id or image.strip()
        source = _source(image.strip(), base)
        prompt = _prompt(fields.get(prompt_key))
    except ManifestRowError as e:
        return line, row_id or f"line:{line}", image, "", None, f"{unit} {line}: {e}", fields
    return line, row_id, image, source, prompt, None, fields


def _extra(record: dict[str, Any] | tuple[list[str], list[str]]) -> dict[str, Any]:
    """The passthrough columns: all but image, id and prompt."""
    fields = record if isinstance(record, dict) else dict(zip(*record))  # a CSV row comes as (header, cells)
    columns = _special_columns(tuple(fields))
    return {k: v for k, v in fields.items() if k not in columns}


@lru_cache(maxsize=256)  # CSV and Parquet rows all share one set of columns; JSONL rows mostly do
def _special_columns(names: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """The (image, id, prompt) column names as written, or None where absent."""
    columns = {name.strip(): name for name in reversed(names)}  # the first of repeated names wins
    image = next((columns[name] for name in IMAGE_COLUMNS if name in columns), None)
    return image, columns.get("id"), columns.get("prompt")


def _id(value: Any) -> str:
    if type(value) is str:  # the usual case first: this runs per row
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestRowError(f"the id must be a string or a number, got {value!r:.60}")
    return str(value).strip()


def _image(fields: dict[str, Any], key: str | None) -> str:
    if key is None:
        raise ManifestRowError(f"no image value ({_EXPECTED_IMAGE})")
    value = fields[key]
    if value is not None and not isinstance(value, str):
        raise ManifestRowError(f"the image value in column {key!r} is not a string: {value!r:.60}")
    if not value or not value.strip():
        raise ManifestRowError(f"no image value in column {key!r}")
    return value


def _source(image: str, base: str) -> str:
    """http(s) URLs as they are; anything else becomes an absolute local path."""
    if image.startswith(("http://", "https://")):  # the usual case first
        return image
    scheme = _URL_SCHEME.match(image) if "://" in image else None  # the cheap test first: this runs per row
    if scheme:
        name = scheme[1].lower()
        if name in ("http", "https"):
            return name + image[len(name) :]  # lower-case scheme, so ManifestRow.is_remote agrees
        if name != "file":
            raise ManifestRowError(f"unsupported URL scheme {name}:// in {image!r:.80} (use http(s) or a local path)")
        url = urlsplit(image)
        if url.netloc not in ("", "localhost"):
            raise ManifestRowError(f"file URL on another host is not supported: {image!r:.80}")
        image = url2pathname(url.path)
    if image.startswith("~"):
        image = os.path.expanduser(image)
    return os.path.normpath(os.path.join(base, image))  # base is absolute


def _prompt(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ManifestRowError(f"the prompt must be a string, got {value!r:.60}")
    return value


# --- file helpers ---------------------------------------------------------------


def _check_columns(path: Path, names: list[str]) -> None:
    if not any(name.strip() in IMAGE_COLUMNS for name in names):
        found = ", ".join(repr(name) for name in names) or "none"
        raise ManifestError(f"manifest {path} has no image column; found columns {found}; {_EXPECTED_IMAGE}")


def _open(path: Path, mode: str = "rb", **kwargs: Any) -> Any:
    try:
        return open(path, mode, **kwargs)
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror or e}") from None


def _unreadable(path: Path, reader: Any, error: Exception) -> ManifestError:
    if isinstance(error, UnicodeDecodeError):
        reason = f"not valid UTF-8 ({error.reason}); save it as UTF-8"
    else:
        reason = str(error)
    where = f" after line {reader.line_num}" if reader.line_num else ""
    return ManifestError(f"cannot read manifest {path}{where}: {reason}")


def _parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise ManifestError(f"cannot read Parquet manifest {path}: {e}") from None


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, stripped text) for each line; text is None when not UTF-8."""
    with _open(path) as f:
        for number, data in enumerate(f, 1):
            try:
                text = data.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                text = None
            yield number, text


def _count_lines(path: Path, header: int = 0) -> int:
    lines, last = 0, b"\n"
    with _open(path) as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(0, lines - header)


def _folder_error(error: OSError) -> None:
    raise ManifestError(f"cannot read folder {error.filename}: {error.strerror}")
