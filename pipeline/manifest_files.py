"""The manifest's files: opening one (a local path or a URL), counting its lines, and scanning a folder of images."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

import pyarrow
import pyarrow.parquet as pq

from . import storage
from .errors import ManifestError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"})

# (line, id, image, source, prompt, problem, record): see manifest_readers.Entry.
Entry = tuple[int, str, str, str, "str | None", "str | None", Any]


def open_file(path: "Path | RemoteFile", mode: str = "rb", **kwargs: Any) -> Any:
    try:
        return path.open(mode, **kwargs) if isinstance(path, RemoteFile) else open(path, mode, **kwargs)
    except storage.StorageError as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from None
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror or e}") from None
    except Exception as e:  # a store's own errors (no credentials, access denied) come in its own types
        raise ManifestError(f"cannot read manifest {path}: {type(e).__name__}: {e}") from None


class RemoteFile:
    """A manifest at a URL, where the readers take a Path: str() is the URL, open() goes through fsspec."""

    def __init__(self, url: str, store: storage.Storage):
        self.url, self.store = url.rstrip("/"), store
        self.name = self.url.rsplit("/", 1)[-1]
        self.suffix = os.path.splitext(self.name)[1]

    def open(self, mode: str = "rb", **kwargs: Any) -> Any:
        return self.store.open(self.url, mode, **kwargs)

    def is_dir(self) -> bool:
        fs, path = self.store.filesystem(self.url)
        return fs.isdir(path)

    @property
    def folder(self) -> str:
        return storage.parent(self.url)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # for os.path helpers in messages; never opened as a local file
        return self.url


def _unreadable(path: Path, reader: Any, error: Exception) -> ManifestError:
    if isinstance(error, UnicodeDecodeError):
        reason = f"not valid UTF-8 ({error.reason}); save it as UTF-8"
    else:
        reason = str(error)
    where = f" after line {reader.line_num}" if reader.line_num else ""
    return ManifestError(f"cannot read manifest {path}{where}: {reason}")


def parquet_file(path: "Path | RemoteFile") -> pq.ParquetFile:
    if isinstance(path, RemoteFile):
        return pq.ParquetFile(open_file(path))
    try:
        return pq.ParquetFile(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise ManifestError(f"cannot read Parquet manifest {path}: {e}") from None


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, stripped text) for each line; text is None when not UTF-8."""
    with open_file(path) as f:
        for number, data in enumerate(f, 1):
            try:
                text = data.decode("utf-8-sig" if number == 1 else "utf-8").strip()
            except UnicodeDecodeError:
                text = None
            yield number, text


def count_lines(path: Path, header: int = 0) -> int:
    lines, last = 0, b"\n"
    with open_file(path) as f:
        while chunk := f.read(1 << 20):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(0, lines - header)


def _folder_error(error: OSError) -> None:
    raise ManifestError(f"cannot read folder {error.filename}: {error.strerror}")

class FolderScan(NamedTuple):
    images: list[str]  # relative paths (with /), sorted
    skipped: int  # files that are not images we read (hidden files are not counted)
    skipped_examples: list[str]


def scan_folder(root: "Path | RemoteFile", examples: int = 5) -> FolderScan:
    """The images under root (hidden files and folders left out), and what else was there."""
    if isinstance(root, RemoteFile):
        return _scan_prefix(root, examples)
    return _sorted_out(_walk(root), examples)


def _walk(root: Path) -> Iterator[str]:
    for folder, subfolders, files in os.walk(root, onerror=_folder_error):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        for name in files:
            if not name.startswith("."):
                yield Path(folder, name).relative_to(root).as_posix()


def _scan_prefix(root: "RemoteFile", examples: int) -> FolderScan:
    """The same for a folder (prefix) in a bucket: one listing, no download."""
    try:
        urls = list(root.store.find(root.url))
    except storage.StorageError as e:
        raise ManifestError(f"cannot list {root}: {e}") from None
    except Exception as e:  # the store's own errors: no credentials, no such bucket, access denied
        raise ManifestError(f"cannot list {root}: {type(e).__name__}: {e}") from None
    relatives = (url[len(root.url) :].lstrip("/") for url in urls)
    return _sorted_out((r for r in relatives if not any(part.startswith(".") for part in r.split("/"))), examples)


def _sorted_out(relatives: Iterable[str], examples: int) -> FolderScan:
    """Images by extension, and the other files counted, with a few named."""
    found, skipped, names = [], 0, []
    for relative in relatives:
        if os.path.splitext(relative)[1].lower() in IMAGE_EXTENSIONS:
            found.append(relative)
        else:
            skipped += 1
            if len(names) < examples:
                names.append(relative)
    return FolderScan(sorted(found), skipped, sorted(names))


def folder_entries(root: "Path | RemoteFile", images: list[str]) -> Iterator[Entry]:
    # Not through _apply_rules: a file name is exact, never trimmed or resolved.
    for index, name in enumerate(images, 1):
        source = f"{root.url}/{name}" if isinstance(root, RemoteFile) else str(root / name)
        yield index, name, name, source, None, None, {}
