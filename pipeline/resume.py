"""What is left to do: the request fingerprint, and an index of the rows the output already holds.

A row is done when the output has an ok row for its id made with the same
fingerprint (model, prompt, system, max_tokens, temperature, and the image
and request settings that change what is sent). Change any of those and the row is captioned again.
Finding what is left reads only three columns of the output, never an image.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .config import JobConfig
from .errors import ConfigError
from .writer import journal_path, read_journal

def fingerprinter(config: JobConfig) -> Callable[[str], str]:
    """prompt -> fingerprint, for this job's settings (cached: most rows share one prompt)."""
    settings = {
        "model": config.model,
        "system": config.system,
        "max_tokens": config.max_tokens,
        "temperature": config.temperature,
    }
    # A setting added later goes in only when it differs from its default, so
    # that existing outputs keep their fingerprints when the code grows.
    defaults = JobConfig()
    for name in ("max_image_side", "max_image_bytes", "image_detail", "fetch_remote", "extra_body"):
        if getattr(config, name) != getattr(defaults, name):
            settings[name] = getattr(config, name)

    @lru_cache(maxsize=4096)
    def fingerprint(prompt: str) -> str:
        material = json.dumps({**settings, "prompt": prompt}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    return fingerprint


class ResumeIndex:
    """The ids the output holds, per fingerprint; built with pyarrow, a batch at a time, never row by row."""

    def __init__(self, retry_errors: bool = True):
        self._ok: dict[str, set[str]] = {}  # fingerprint -> ids whose row is ok
        self._failed: set[str] = set()  # ids whose row is an error (skipped only with retry_errors off)
        self._retry_errors = retry_errors
        self.rows_in_output = 0

    @classmethod
    def load(cls, output: Path, *, retry_errors: bool = True) -> "ResumeIndex":
        """Index the output and any journal a killed run left beside it (read only)."""
        index = cls(retry_errors)
        if output.exists():
            try:
                parquet = pq.ParquetFile(output)
                columns = [c for c in ("id", "status", "fingerprint") if c in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(batch_size=262_144, columns=columns):
                    index._add_batch(pa.Table.from_batches([batch]))
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"{output} exists but cannot be read as our Parquet output ({e}); move it away or pick another --output") from None
        journal = journal_path(output)
        if journal.exists():
            rows = [(r.get("id"), r.get("status"), r.get("fingerprint")) for r in read_journal(journal)]
            index._add_batch(pa.table({name: [r[i] for r in rows] for i, name in enumerate(("id", "status", "fingerprint"))},
                                      schema=pa.schema([("id", pa.string()), ("status", pa.string()), ("fingerprint", pa.string())])))
        return index

    def _add_batch(self, table: pa.Table) -> None:
        table = table.filter(pc.is_valid(table.column("id")))
        self.rows_in_output += table.num_rows
        ok = pc.equal(table.column("status"), "ok")
        if "fingerprint" in table.column_names:
            done = table.filter(pc.and_(ok, pc.is_valid(table.column("fingerprint"))))
            for fingerprint in pc.unique(done.column("fingerprint")).to_pylist():  # usually one
                ids = done.filter(pc.equal(done.column("fingerprint"), fingerprint)).column("id")
                self._ok.setdefault(fingerprint, set()).update(ids.to_pylist())
        if not self._retry_errors:
            self._failed.update(table.filter(pc.invert(pc.fill_null(ok, False))).column("id").to_pylist())

    def is_done(self, row_id: str, fingerprint: str) -> bool:
        return row_id in self._ok.get(fingerprint, ()) or row_id in self._failed
