"""What is left to do: the request fingerprint, and an index of the rows the output already holds.

A row is done when the output has an ok row for its id made with the same
fingerprint (model, prompt, system, max_tokens, temperature, the image and request settings that change
what is sent, and the task's name for a job with tasks). Change any of those and the row is captioned again.
A local image's row also records the file's size and modification time: a file replaced since
is captioned again (rsync's quick check: one stat per row, no read). An object in a bucket is
checked the same way from its prefix's listing (storage.Storage.stat: one LIST per prefix).
Finding what is left reads only those columns of the output, never an image.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .config import JobConfig
from .options import ALWAYS, IF_CHANGED, declared
from .dedupe import twin_keys
from .hashedset import HashedSet
from .dataset import stored_files
from .files import journal_path, not_our_output
from .remote import RemoteDataset
from .storage import ObjectStat, Storage, is_object_url, local_stat
from .merge import read_journal
from .rowkey import key

INDEX_COLUMNS = ("id", "status", "fingerprint", "file_size", "file_mtime_ns", "image_sha256", "task")
_INDEX_SCHEMA = pa.schema([("id", pa.string()), ("status", pa.string()), ("fingerprint", pa.string()),
                           ("file_size", pa.int64()), ("file_mtime_ns", pa.int64()), ("image_sha256", pa.string()),
                           ("task", pa.string())])
_FILE_KEY = ("id", "fingerprint", "file_size", "file_mtime_ns")


def fingerprinter(config: JobConfig) -> Callable[[str], str]:
    """prompt -> fingerprint, for this job's settings (cached: most rows share one prompt)."""
    # Which settings join is declared with each option (options.py). A setting added later goes in only
    # when it differs from its default, so that existing outputs keep their fingerprints when the code grows.
    defaults = JobConfig()
    settings = {
        f.name: getattr(config, f.name)
        for f, o in declared(JobConfig)
        if o.fingerprint == ALWAYS or (o.fingerprint == IF_CHANGED and getattr(config, f.name) != getattr(defaults, f.name))
    }
    if config.task is not None:  # one of the job file's tasks: its rows are its own, even when another task asks the same
        settings["task"] = config.task

    @lru_cache(maxsize=4096)
    def fingerprint(prompt: str) -> str:
        material = json.dumps({**settings, "prompt": prompt}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    return fingerprint


class ResumeIndex:
    """What the output holds, read with pyarrow a batch at a time and kept as hashes (see HashedSet)."""

    def __init__(self, retry_errors: bool = True, expected: int = 0, store: Storage | None = None, answered: bool = True):
        self._store = store
        self._ok = HashedSet(expected)  # (id, fingerprint) of the ok rows with no file stat (URLs, older outputs)
        self._ok_files = HashedSet(expected)  # (id, fingerprint, size, mtime_ns) of the ok rows of local files
        self._failed = None if retry_errors else HashedSet()  # row keys of the error rows, skipped only with retry_errors off
        self.answered = HashedSet(expected if answered else 0)  # dedupe.twin_key of the ok rows: what dedupe.py reuses
        self._keep_answered = answered  # off with --no-dedupe: about a second per million output rows saved
        self.files: list[pq.ParquetFile] = []  # the output's Parquet files, oldest first (dedupe reads answers from them)
        self.rows_in_output = 0
        self._last_stat: tuple[str, ObjectStat | None] | None = None  # a row's tasks ask about one file in turn

    @classmethod
    def load(cls, output: Path, *, retry_errors: bool = True, store: Storage | None = None, answered: bool = True,
             remote: "RemoteDataset | None" = None) -> "ResumeIndex":
        """Index the output and any journal a killed run left beside it (read only); `store` stats objects in buckets.

        `remote`: a bucket dataset whose parts are read too (`output` is then its staging folder)."""
        paths = (remote.parts() if remote is not None else []) + stored_files(output)  # oldest first
        files = [remote.open(path) if isinstance(path, str) else _open_output(path) for path in paths]
        index = cls(retry_errors, expected=sum(f.metadata.num_rows for f in files), store=store, answered=answered)
        index.files = files
        journal = journal_path(output)
        rows = [tuple(r.get(name) for name in INDEX_COLUMNS) for r in read_journal(journal)] if journal.exists() else []
        # (this run's own journal is there, empty, when the writer opened before the index is read)
        sources: list[tuple[object, Callable[[], Iterator[pa.Table]]]] = [(path, partial(_tables, parquet)) for path, parquet in zip(paths, files)]
        if rows:  # newest line last; read newest first below, when it matters
            ordered = rows[::-1] if paths else rows
            sources.append((journal, lambda: iter([pa.table({name: [r[i] for r in ordered] for i, name in enumerate(INDEX_COLUMNS)},
                                                            schema=_INDEX_SCHEMA)])))
        # Several sources (a dataset's parts, a killed run's journal): only each row's newest counts, as on reading.
        newest = _newest_first() if len(sources) > 1 else None
        for where, tables in (reversed(sources) if newest else sources):
            try:
                for table in tables():
                    index._add_batch(newest(table) if newest else table)
            except (OSError, ValueError, KeyError) as e:
                raise not_our_output(where, e) from None
        return index

    def _add_batch(self, table: pa.Table) -> None:
        import pyarrow.compute as pc  # only when an output is read: not at start-up (~40 ms)
        table = table.filter(pc.is_valid(table.column("id")))
        self.rows_in_output += table.num_rows
        # Not pc.equal(status, "ok"): making "ok" an Arrow scalar has pyarrow import pandas, when installed (~0.5 s).
        ok = pc.match_like(table.column("status"), "ok")
        if "fingerprint" in table.column_names:
            done = table.filter(pc.and_(ok, pc.is_valid(table.column("fingerprint"))))
            if "file_mtime_ns" in done.column_names:
                stat = pc.and_(pc.is_valid(done.column("file_size")), pc.is_valid(done.column("file_mtime_ns")))
                files = done.filter(stat)
                self._ok_files.update(zip(*(files.column(c).to_pylist() for c in _FILE_KEY)))
                done = done.filter(pc.invert(stat))
            self._ok.update(zip(done.column("id").to_pylist(), done.column("fingerprint").to_pylist()))
        if self._keep_answered and "image_sha256" in table.column_names and "fingerprint" in table.column_names:
            # (not pc.binary_join_element_wise: its separator scalar imports pandas too)
            answered = table.filter(pc.and_(ok, pc.and_(pc.is_valid(table.column("image_sha256")), pc.is_valid(table.column("fingerprint")))))
            self.answered.update(twin_keys(answered.column("image_sha256").to_pylist(), answered.column("fingerprint").to_pylist()))
        if self._failed is not None:
            not_ok = pc.or_kleene(pc.invert(ok), pc.is_null(ok))  # not pc.fill_null(ok, False), for the same reason
            self._failed.update(_keys(table.filter(not_ok)))

    def is_done(self, row_id: str, fingerprint: str, source: str | None = None, task: str | None = None) -> bool:
        """The output has this row's answer (for a job with tasks, the task's: its fingerprint names the task)."""
        if (row_id, fingerprint) in self._ok or (self._failed is not None and key(row_id, task) in self._failed):
            return True
        if not self._ok_files or source is None or source.startswith(("http://", "https://")):
            return False
        stat = self._stat(source)
        if stat is None:
            return False  # gone: the row is tried again, and says so
        return (row_id, fingerprint, stat.size, stat.mtime_ns) in self._ok_files

    def _stat(self, source: str) -> ObjectStat | None:
        last = self._last_stat  # read once: the plan's counting thread asks too
        if last is not None and last[0] == source:
            return last[1]
        stat = self._stat_now(source)
        self._last_stat = (source, stat)
        return stat

    def _stat_now(self, source: str) -> ObjectStat | None:
        if not is_object_url(source):
            return local_stat(source)
        if self._store is None:
            self._store = Storage()
        try:
            return self._store.stat(source)
        except Exception:  # cannot list (credentials, network): the row is read again, and its error says why
            return None


def _open_output(output: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(output)
    except (OSError, ValueError, KeyError) as e:
        raise not_our_output(output, e) from None


def _tables(parquet: pq.ParquetFile) -> Iterator[pa.Table]:
    columns = [c for c in INDEX_COLUMNS if c in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=65_536, columns=columns):
        yield pa.Table.from_batches([batch])


def _keys(table: pa.Table) -> list[str | None]:
    """rowkey.key of each row, made in Python (rowkey.row_keys' Arrow kernels would import pandas: see _add_batch)."""
    ids = table.column("id").to_pylist()
    if "task" not in table.column_names:
        return ids
    return [None if row_id is None else key(row_id, task) for row_id, task in zip(ids, table.column("task").to_pylist())]


def _newest_first() -> Callable[[pa.Table], pa.Table]:
    """Fed tables newest first, keeps the rows whose key no newer table had (a Python pass: only for several sources)."""
    seen = HashedSet()

    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pa.array([k is not None and seen.add(k) for k in _keys(table)], pa.bool_()))

    return keep
