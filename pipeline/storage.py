"""Where manifests and images live: local paths, or any fsspec URL (s3://, gs://, az://, hf://, http(s)://).

Filesystems come from fsspec and the package of each store (s3fs, gcsfs, adlfs, huggingface_hub), so
credentials come from each one's usual configuration (environment, config files, instance roles).
The job file's `[storage]` table gives options per protocol (`[storage.s3] endpoint_url = ...`);
they reach fsspec and are never logged (only the protocols are). fsspec is imported on first use:
a run over local files never pays for it.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import posixpath
import re
from collections import OrderedDict
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Mapping, NamedTuple

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# The package each protocol needs, for the message when it is missing.
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
             "hf": "huggingface_hub", "http": "aiohttp", "https": "aiohttp"}
_EXTRAS = {"s3fs": "s3", "gcsfs": "gcs", "adlfs": "azure", "huggingface_hub": "hf"}
_LISTINGS_KEPT = 8  # prefixes whose listing the change check keeps (a dataset is usually sharded by prefix)


class StorageError(Exception):
    """A store cannot be reached or used as configured; the message says what to install or set."""


class ObjectStat(NamedTuple):
    size: int | None
    mtime_ns: int | None


def protocol(location: str) -> str | None:
    """The URL's protocol, lower case; None for a local path (file:// URLs included: they are local)."""
    match = _URL.match(location) if "://" in location[:32] else None
    if match is None or match[1].lower() == "file":
        return None
    return match[1].lower()


def location(text: str) -> "Path | str":
    """A command-line path: a URL stays text (Path would fold its //), anything else is a Path."""
    return text if protocol(text) else Path(text)


def is_object_url(location: str) -> bool:
    """A URL read through fsspec: any protocol but http(s) (passed through or fetched as web images) and file."""
    name = protocol(location)
    return name is not None and name not in ("http", "https")


def known_protocol(name: str) -> bool:
    from fsspec.registry import known_implementations, registry
    return name in known_implementations or name in registry


def join(base: str, relative: str) -> str:
    """A path relative to a URL folder, as a URL (`..` resolved)."""
    head, sep, rest = base.partition("://")
    return f"{head}{sep}{posixpath.normpath(posixpath.join(rest, relative))}"


def parent(url: str) -> str:
    head, sep, rest = url.rstrip("/").partition("://")
    return f"{head}{sep}{posixpath.dirname(rest)}"


class Storage:
    """The run's filesystems, built once from the `[storage]` options; shared by the manifest, images and resume."""

    def __init__(self, options: Mapping[str, Mapping[str, Any]] | None = None, *, threads: int = 16):
        self._options = {str(k).lower(): dict(v) for k, v in (options or {}).items()}
        self._filesystems: dict[str, Any] = {}
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._listings: OrderedDict[str, dict[str, ObjectStat]] = OrderedDict()

    def filesystem(self, url: str) -> tuple[Any, str]:
        """(fsspec filesystem, path within it) for a URL."""
        name = protocol(url)
        assert name is not None, url
        if name not in self._filesystems:
            self._filesystems[name] = self._make(name)
        fs = self._filesystems[name]
        return fs, fs._strip_protocol(url)

    def _make(self, name: str) -> Any:
        import fsspec
        if not known_protocol(name):
            raise StorageError(f"unknown storage protocol {name}:// (fsspec knows s3, gs, az, hf, http(s) and more)")
        try:
            # A fresh instance per run: fsspec's shared one keeps listings (s3fs's dircache) from a run before.
            return fsspec.filesystem(name, skip_instance_cache=True, **self._options.get(name, {}))
        except ImportError:
            package = _PACKAGES.get(name, "the fsspec package for it")
            extra = f" (or pip install 'pipeline[{_EXTRAS[package]}]')" if package in _EXTRAS else ""
            raise StorageError(f"reading {name}:// needs {package}: pip install {package}{extra}") from None
        except TypeError as e:  # an option the filesystem does not take
            raise StorageError(f"[storage.{name}] in the job file: {e}") from None

    def open(self, url: str, mode: str = "rb", **kwargs: Any) -> Any:
        fs, path = self.filesystem(url)
        return fs.open(path, mode, **kwargs)

    def stat(self, url: str) -> ObjectStat | None:
        """An object's size and modification time, from its prefix's listing (kept for the next rows); None if gone.

        One LIST per prefix (a thousand objects per request) rather than one HEAD per object: this runs
        for every row already done when a run resumes.
        """
        folder = parent(url)
        listing = self._listings.get(folder)
        if listing is None:
            fs, path = self.filesystem(folder)
            try:
                entries = fs.ls(path, detail=True, refresh=True)
            except FileNotFoundError:
                entries = []
            listing = {fs._strip_protocol(e["name"]): object_stat(e) for e in entries if e.get("type") != "directory"}
            self._listings[folder] = listing
            if len(self._listings) > _LISTINGS_KEPT:
                self._listings.popitem(last=False)
        else:
            self._listings.move_to_end(folder)
        return listing.get(self.filesystem(url)[1])

    async def read(self, url: str, max_bytes: int) -> tuple[bytes, ObjectStat]:
        """A whole object (one GET, no ranges) and its size and modification time as read (one HEAD before it).

        In threads: fsspec's sync calls wait on its own IO loop, so the threads only wait, and any store works.
        The stat is taken first: if the object changes between the two, the next run sees a newer time and reads it again.
        """
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="storage")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._read, url, max_bytes)

    def _read(self, url: str, max_bytes: int) -> tuple[bytes, ObjectStat]:
        fs, path = self.filesystem(url)
        info = fs.info(path)
        stat = object_stat(info)
        if info.get("type") == "directory":
            raise IsADirectoryError(url)
        if stat.size is not None and stat.size > max_bytes:
            raise ValueError(f"the object is {stat.size:,} bytes, more than the {max_bytes:,} read for one image")
        return fs.cat_file(path), stat

    def find(self, url: str) -> Iterator[str]:
        """Every object under a URL folder, as URLs, sorted."""
        fs, path = self.filesystem(url)
        name = protocol(url)
        for found in sorted(fs.find(path)):
            yield f"{name}://{fs._strip_protocol(found)}"

    def protocols(self) -> list[str]:
        """The protocols the job file gives options for (never the options: they may hold credentials)."""
        return sorted(self._options)

    def __enter__(self) -> "Storage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def object_stat(info: Mapping[str, Any]) -> ObjectStat:
    """Size and modification time from an fsspec info dict, whatever the store calls them."""
    size = info.get("size")
    when = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "modified", "created") if info.get(k) is not None), None)
    return ObjectStat(int(size) if size is not None else None, _nanoseconds(when))


def _nanoseconds(when: Any) -> int | None:
    if isinstance(when, datetime.datetime):
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return int(when.timestamp() * 1_000_000) * 1000
    if isinstance(when, (int, float)):
        return int(when * 1e9)
    if isinstance(when, str):
        try:
            return _nanoseconds(datetime.datetime.fromisoformat(when.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def local_stat(path: str) -> ObjectStat | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return ObjectStat(stat.st_size, stat.st_mtime_ns)
