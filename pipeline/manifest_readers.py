"""The manifest's formats: one small reader per format, and the column rules they share.

`_apply_rules` applies the column rules shared by all formats (the CSV reader works the usual row out
inline, for speed). Each reader yields Entry tuples; manifest.py turns them into ManifestRows.
"""

from __future__ import annotations

import csv
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, NamedTuple
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pyarrow

from . import storage
from .errors import ManifestError, ManifestRowError
from .manifest_files import _lines, _unreadable, open_file, parquet_file

IMAGE_COLUMNS = ("image", "path", "url", "image_url", "file")

_EXPECTED_IMAGE = "expected a column named image, path, url, image_url or file"
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "true/false"}

# The image and id columns the user named (--image-column, --id-column), or None for the usual names.
Chosen = tuple["str | None", "str | None"]
USUAL: Chosen = (None, None)

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


# --- one reader per format ----------------------------------------------------


def csv_entries(path: Path, delimiter: str, base: str, chosen: Chosen = USUAL) -> Iterator[Entry]:
    with open_file(path, "r", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = csv_header(path, reader)
        width = len(header)
        image_at, id_at, prompt_at = (None if name is None else header.index(name) for name in _special_columns(tuple(header), *chosen))
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
                yield _apply_rules(Raw(line, dict(zip(header, cells)), problem), base, "line", chosen)
        except (UnicodeDecodeError, csv.Error) as e:
            raise _unreadable(path, reader, e) from None


def csv_header(path: Path, reader: Any) -> list[str]:
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


def read_jsonl(path: Path) -> Iterator[Raw]:
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


def sampled_names(path: Path, within: int = 1000) -> list[str] | None:
    """The keys found in a JSONL manifest's first `within` lines, to check its columns up front (None: no object)."""
    names: dict[str, None] = {}
    found = False
    for number, (_, fields, problem) in enumerate(read_jsonl(path)):
        if number >= within:
            break
        if problem is None:
            found = True
            names.update(dict.fromkeys(fields))
    return list(names) if found else None


def read_txt(path: Path) -> Iterator[Raw]:
    for line, text in _lines(path):
        if text is None:
            yield Raw(line, {}, "not valid UTF-8 text")
        elif text and not text.startswith("#"):
            yield line, {"image": text}, None


def read_parquet(path: Path) -> Iterator[Raw]:
    record = 0
    try:
        for batch in parquet_file(path).iter_batches(batch_size=1024):
            for fields in batch.to_pylist():
                record += 1
                yield record, fields, None
    except (pyarrow.ArrowException, OSError) as e:
        raise ManifestError(f"cannot read Parquet manifest {path} after record {record}: {e}") from None


# --- the rules shared by all formats -------------------------------------------


def ruled(raws: Iterator[Raw], base: str, unit: str, chosen: Chosen = USUAL) -> Iterator[Entry]:
    for raw in raws:
        yield _apply_rules(raw, base, unit, chosen)


def _apply_rules(raw: Raw, base: str, unit: str, chosen: Chosen = USUAL) -> Entry:
    """The entry `raw` makes; an unusable one gets a problem and no source."""
    line, fields, problem = raw
    image_key, id_key, prompt_key = _special_columns(tuple(fields), *chosen)
    row_id = image = ""
    try:
        row_id = _id(fields.get(id_key))
        if problem:
            raise ManifestRowError(problem)
        image = _image(fields, image_key, chosen[0])
        row_id = row_id or image.strip()
        source = _source(image.strip(), base)
        prompt = _prompt(fields.get(prompt_key))
    except ManifestRowError as e:
        return line, row_id or f"line:{line}", image, "", None, f"{unit} {line}: {e}", fields
    return line, row_id, image, source, prompt, None, fields


def extra_columns(record: dict[str, Any] | tuple[list[str], list[str]], chosen: Chosen = USUAL) -> dict[str, Any]:
    """The passthrough columns: all but image, id and prompt."""
    fields = record if isinstance(record, dict) else dict(zip(*record))  # a CSV row comes as (header, cells)
    columns = _special_columns(tuple(fields), *chosen)
    return {k: v for k, v in fields.items() if k not in columns}


@lru_cache(maxsize=256)  # CSV and Parquet rows all share one set of columns; JSONL rows mostly do
def _special_columns(names: tuple[str, ...], image_column: str | None = None, id_column: str | None = None) -> tuple[str | None, str | None, str | None]:
    """The (image, id, prompt) column names as written, or None where absent; `Image` and `ID` count too."""
    columns = {name.strip().lower(): name for name in reversed(names)}  # the first of repeated names wins
    if image_column is not None:
        image = columns.get(image_column.strip().lower())
    else:
        image = next((columns[name] for name in IMAGE_COLUMNS if name in columns), None)
    return image, columns.get((id_column or "id").strip().lower()), columns.get("prompt")


def _id(value: Any) -> str:
    if type(value) is str:  # the usual case first: this runs per row
        return value.strip()
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ManifestRowError(f"the id must be a string or a number, got {value!r:.60}")
    return str(value).strip()


def _image(fields: dict[str, Any], key: str | None, named: str | None = None) -> str:
    if key is None:
        raise ManifestRowError(f"no {named!r} value (--image-column)" if named else f"no image value ({_EXPECTED_IMAGE})")
    value = fields[key]
    if value is not None and not isinstance(value, str):
        raise ManifestRowError(f"the image value in column {key!r} is not a string: {value!r:.60}")
    if not value or not value.strip():
        raise ManifestRowError(f"no image value in column {key!r}")
    return value


def _source(image: str, base: str) -> str:
    """http(s) and object-store URLs as they are; anything else is relative to the manifest's folder (a path or a URL)."""
    if image.startswith(("http://", "https://")):  # the usual case first
        return image
    scheme = _URL_SCHEME.match(image) if "://" in image else None  # the cheap test first: this runs per row
    if scheme:
        name = scheme[1].lower()
        if name in ("http", "https"):
            return name + image[len(name) :]  # lower-case scheme, so ManifestRow.is_remote agrees
        if name != "file":
            if not storage.known_protocol(name):
                raise ManifestRowError(f"unsupported URL scheme {name}:// in {image!r:.80} (use a local path, http(s) or a store fsspec knows: s3, gs, az, hf)")
            return name + image[len(name) :]
        url = urlsplit(image)
        if url.netloc not in ("", "localhost"):
            raise ManifestRowError(f"file URL on another host is not supported: {image!r:.80}")
        image = url2pathname(url.path)
    if "://" in base and not image.startswith(("/", "~")):
        return storage.join(base, image)  # a key beside a manifest in a bucket
    if image.startswith("~"):
        image = os.path.expanduser(image)
    return os.path.normpath(os.path.join(base, image))  # base is absolute


def _prompt(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ManifestRowError(f"the prompt must be a string, got {value!r:.60}")
    return value


def check_columns(path: Path, names: list[str], chosen: Chosen = USUAL, where: str = "") -> None:
    """Exit 2 with one message when the manifest has no image column, or lacks a column the user named."""
    image, row_id, _ = _special_columns(tuple(names), *chosen)
    found = ", ".join(repr(name) for name in names) or "none"
    image_column, id_column = chosen
    if image is None:
        expected = f"--image-column names {image_column!r}" if image_column else f"{_EXPECTED_IMAGE} (or name it with --image-column)"
        raise ManifestError(f"manifest {path} has no image column{where}; found columns {found}; {expected}")
    if id_column and row_id is None:
        raise ManifestError(f"manifest {path} has no column {id_column!r} (--id-column){where}; found columns {found}")
