"""A dataset output in a bucket (`-o s3://bucket/captions/`): parts are put there whole; the journal stays here.

A run writes as it does into a local dataset, in a staging folder on this machine (the journal, the lock,
a part before it is put); each finished part is put into the bucket as one object (a PUT or a completed
multipart upload: readers never see half of one), `_parts.json` and `_runs.jsonl` beside them are
rewritten, and the local copy goes. A killed run's journal is recovered by the next run on this machine;
on another machine its rows are done again.

One writer at a time: `_lease.json` in the bucket is created with a conditional put (If-None-Match: *,
which S3 and its compatibles honour; elsewhere exists-then-put, a documented single-writer rule) and
renewed every minute; a run that finds a live lease refuses (exit 75), one that finds a lease whose
holder stopped renewing it (LEASE_SECONDS) takes it over.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .dataset import PARTS, parts as local_parts
from .errors import OutputLocked
from .storage import Storage

LEASE = "_lease.json"
LEASE_SECONDS = 300  # a lease not renewed for this long belongs to a dead run
RENEW_SECONDS = 60
RUNS = "_runs.jsonl"


def staging_folder(url: str) -> Path:
    """This machine's working folder for a bucket output: its journal, lock and parts not yet put."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "pipeline" / "outputs" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteDataset:
    def __init__(self, url: str, store: Storage):
        self.url = url.rstrip("/")
        self.fs, self.root = store.filesystem(self.url)
        self._protocol = self.url.split("://", 1)[0]
        self._lease_token: str | None = None

    def _url(self, path: str) -> str:
        return f"{self._protocol}://{path}"

    def parts(self) -> list[str]:
        """The parts in the bucket, oldest first, as URLs."""
        try:
            names = [p for p in self.fs.ls(self.root, detail=False, refresh=True) if p.rsplit("/", 1)[-1].startswith("part-")
                     and p.endswith(".parquet")]
        except FileNotFoundError:
            return []
        return [self._url(p) for p in sorted(names)]

    def open(self, part_url: str) -> pq.ParquetFile:
        return pq.ParquetFile(self.fs.open(self.fs._strip_protocol(part_url), "rb"))

    def publish(self, staging: Path) -> int:
        """Put every finished local part into the bucket, then _parts.json; the local copies go. Returns how many."""
        put = 0
        for part in local_parts(staging):
            self.fs.put_file(str(part), f"{self.root}/{part.name}")
            part.unlink()
            put += 1
        if put:
            self.record_parts()
        return put

    def record_parts(self, *, replacing: list[str] | None = None) -> None:
        gone = set(replacing or [])
        listed = []
        for url in self.parts():
            if url in gone:
                continue
            listed.append({"name": url.rsplit("/", 1)[-1], "rows": self.open(url).metadata.num_rows})
        manifest = {"format": "pipeline-dataset/1", "parts": listed, "rows": sum(p["rows"] for p in listed),
                    "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.fs.pipe_file(f"{self.root}/{PARTS}", (json.dumps(manifest, indent=1) + "\n").encode())

    def delete(self, part_urls: list[str]) -> None:
        for url in part_urls:
            self.fs.rm_file(self.fs._strip_protocol(url))

    # --- the run record -------------------------------------------------------------------------

    def append_run(self, line: str) -> None:
        """Objects cannot be appended to: read, add the line, put (the lease makes this the only writer)."""
        path = f"{self.root}/{RUNS}"
        try:
            old = self.fs.cat_file(path)
        except FileNotFoundError:
            old = b""
        self.fs.pipe_file(path, old + line.encode())

    def read_runs(self) -> str:
        try:
            return self.fs.cat_file(f"{self.root}/{RUNS}").decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    # --- the lease ------------------------------------------------------------------------------

    def acquire_lease(self) -> None:
        path = f"{self.root}/{LEASE}"
        for _ in range(2):
            try:
                self.fs.pipe_file(path, self._lease_body(), mode="create")
                return
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder.get("expires_at", 0) > time.time():
                    raise OutputLocked(f"another run holds {self.url}/{LEASE} ({_who(holder)}, renewed until "
                                       f"{time.strftime('%H:%M:%S UTC', time.gmtime(holder['expires_at']))}); wait for it to finish, "
                                       f"or delete the lease if that run is dead (it expires {LEASE_SECONDS // 60} min after its last renewal)") from None
                self.fs.rm_file(path)  # its holder stopped renewing it: dead
            except TypeError:  # a filesystem without conditional create: check, then put
                if self.fs.exists(path) and (holder := self._holder()) and holder.get("expires_at", 0) > time.time():
                    raise OutputLocked(f"another run holds {self.url}/{LEASE} ({_who(holder)})") from None
                self.fs.pipe_file(path, self._lease_body())
                return
        raise OutputLocked(f"another run took {self.url}/{LEASE} at the same moment; try again")

    def renew_lease(self) -> None:
        if self._lease_token is not None:
            self.fs.pipe_file(f"{self.root}/{LEASE}", self._lease_body())

    def release_lease(self) -> None:
        if self._lease_token is not None:
            holder = self._holder()
            if holder is not None and holder.get("token") == self._lease_token:
                self.fs.rm_file(f"{self.root}/{LEASE}")
            self._lease_token = None

    def _lease_body(self) -> bytes:
        self._lease_token = self._lease_token or os.urandom(8).hex()
        body: dict[str, Any] = {"token": self._lease_token, "host": socket.gethostname(), "pid": os.getpid(),
                                "expires_at": time.time() + LEASE_SECONDS}
        return json.dumps(body).encode()

    def _holder(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.fs.cat_file(f"{self.root}/{LEASE}"))
        except (FileNotFoundError, ValueError):
            return None


def _who(holder: dict[str, Any]) -> str:
    return f"pid {holder.get('pid')} on {holder.get('host')}"


def local_output(output: Path | str) -> Path:
    """Where a run's journal, lock and local run record go: the output itself, or a bucket output's staging folder."""
    return staging_folder(output) if isinstance(output, str) else output
