"""Read the manifest: the list of images to caption, one ManifestRow per entry.

The format is picked by extension (.csv, .tsv, .jsonl/.ndjson, .parquet, .txt)
or is a folder of images. Each format has one small reader yielding raw records;
`_to_row` applies the column rules shared by all of them, and `Manifest.rows`
drops duplicate ids. An entry that cannot be captioned is not dropped: it comes
out with `problem` set, so every entry still gets exactly one output row.
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
from .records import ManifestRow

log = logging.getLogger("pipeline.manifest")

IMAGE_COLUMNS = ("image", "path", "url", "image_url", "file")
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
MAX_DUPLICATE_EXAMPLES = 20

_EXPECTED_IMAGE = "expected a column named image, path, url, image_url or file"
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}


class Raw(NamedTuple):
    """One entry as a reader saw it, before the column rules."""

    line: int
    fields: dict[str, Any]
    problem: str | None = None  # why the entry is unusable, without the "line N: " prefix


@dataclass
class ManifestStats:
    rows: int = 0  # rows yielded, problem rows included
    problems: int = 0
    duplicates: int = 0
    duplicate_examples: list[tuple[int, str]] = field(default_factory=list)  # (line, id)


class Manifest:
    # `unit` is what `line` counts, for messages: "line", or "record" for Parquet.
    def __init__(self, path: Path, read: Callable[[], Iterator[Any]], count: Callable[[], int], unit: str = "line"):
        self.path = path
        self.stats = ManifestStats()
        self._read, self._count, self._unit = read, count, unit

    def count(self) -> int:
        """A cheap estimate of the number of rows, for a progress bar."""
        return self._count()

    def rows(self) -> Iterator[ManifestRow]:
        """Stream the rows once; each call starts a fresh `stats`."""
        self.stats = stats = ManifestStats()
        seen: set[str] = set()
        base = str(self.path.parent)
        for raw in self._read():
            row = raw if isinstance(raw, ManifestRow) else _to_row(raw, base, self._unit)
            if row.id in seen:
                stats.duplicates += 1
                if stats.duplicates <= MAX_DUPLICATE_EXAMPLES:
                    stats.duplicate_examples.append((row.line, row.id))
                    log.warning("%s %s %d: duplicate id %r skipped", self.path.name, self._unit, row.line, row.id)
                elif stats.duplicates == MAX_DUPLICATE_EXAMPLES + 1:
                    log.warning("%s: more duplicate ids; counting them without logging each", self.path.name)
                continue
            seen.add(row.id)
            stats.rows += 1
            stats.problems += row.problem is not None
            yield row


def open_manifest(path: str | os.PathLike) -> Manifest:
    """Check that the manifest can be read and return it; rows are read later, lazily."""
    path = Path(os.path.abspath(os.path.expanduser(path)))
    if not path.exists():
        raise ManifestError(f"manifest not found: {path}")
    if path.is_dir():
        return Manifest(path, partial(_read_directory, path), lambda: len(_image_files(path)))
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        delimiter = "\t" if suffix == ".tsv" else ","
        with _open(path, "r", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            _check_columns(path, _csv_header(path, reader))
        return Manifest(path, partial(_read_csv, path, delimiter), partial(_count_lines, path, header=1))
    if suffix in (".jsonl", ".ndjson", ".txt"):
        _open(path).close()
        read = _read_txt if suffix == ".txt" else _read_jsonl
        return Manifest(path, partial(read, path), partial(_count_lines, path))
    if suffix == ".parquet":
        _check_columns(path, _parquet_file(path).schema_arrow.names)
        return Manifest(path, partial(_read_parquet, path), lambda: _parquet_file(path).metadata.num_rows, "record")
    kind = repr(path.suffix) if path.suffix else "(no extension)"
    raise ManifestError(
        f"unsupported manifest type {kind} for {path}; "
        "use a .csv, .tsv, .jsonl, .ndjson, .parquet or .txt file, or a folder of images"
    )


# --- one reader per format ----------------------------------------------------


def _read_csv(path: Path, delimiter: str) -> Iterator[Raw]:
    with _open(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = _csv_header(path, reader)
        width = len(header)
        try:
            start = reader.line_num + 1
            for cells in reader:
                line, start = start, reader.line_num + 1  # a quoted field may span lines
                if len(cells) == width:  # the usual case first: this loop runs once per row
                    yield Raw(line, dict(zip(header, cells)))
                elif not cells:
                    continue  # blank line
                elif len(cells) < width:
                    yield Raw(line, dict(zip(header, cells + [""] * (width - len(cells)))))  # short rows padded with ""
                else:
                    yield Raw(line, dict(zip(header, cells)), f"{len(cells)} fields, the header has {width} (an unquoted {delimiter!r}?)")
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
                yield Raw(line, value)
            else:
                yield Raw(line, {}, f"expected a JSON object, got {_JSON_TYPES.get(type(value), 'null')}")


def _read_txt(path: Path) -> Iterator[Raw]:
    for line, text in _lines(path):
        if text is None:
            yield Raw(line, {}, "not valid UTF-8 text")
        elif text and not text.startswith("#"):
            yield Raw(line, {"image": text})


def _read_parquet(path: Path) -> Iterator[Raw]:
    record = 0
    try:
        for batch in _parquet_file(path).iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                record += 1
                yield Raw(record, fields)
    except (pyarrow.ArrowException, OSError) as e:
        raise ManifestError(f"cannot read Parquet manifest {path} after record {record}: {e}") from None


def _read_directory(root: Path) -> Iterator[ManifestRow]:
    # Built here, not by _to_row: a file name is exact, never trimmed or resolved.
    for index, name in enumerate(_image_files(root), 1):
        yield ManifestRow(line=index, id=name, image=name, source=str(root / name))


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


def _to_row(raw: Raw, base: str, unit: str) -> ManifestRow:
    image_key, id_key, prompt_key = keys = _special_columns(tuple(raw.fields))
    extra = {k: v for k, v in raw.fields.items() if k not in keys}
    row_id = image = ""
    try:
        row_id = _id(raw.fields.get(id_key))
        if raw.problem:
            raise ManifestRowError(raw.problem)
        image = _image(raw.fields, image_key)
        row_id = row_id or image.strip()
        source = _source(image.strip(), base)
        prompt = _prompt(raw.fields.get(prompt_key))
    except ManifestRowError as e:
        problem = f"{unit} {raw.line}: {e}"
        return ManifestRow(raw.line, row_id or f"line:{raw.line}", image, "", None, extra, problem)
    return ManifestRow(raw.line, row_id, image, source, prompt, extra)


@lru_cache(maxsize=256)  # CSV and Parquet rows all share one set of columns; JSONL rows mostly do
def _special_columns(names: tuple[str, ...]) -> tuple[str | None, str | None, str | None]:
    """The (image, id, prompt) column names as written, or None where absent."""
    columns = {name.strip(): name for name in reversed(names)}  # the first of repeated names wins
    image = next((columns[name] for name in IMAGE_COLUMNS if name in columns), None)
    return image, columns.get("id"), columns.get("prompt")


def _id(value: Any) -> str:
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
