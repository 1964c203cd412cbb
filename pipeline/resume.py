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
from typing import Callable, Iterable

import pyarrow.parquet as pq

from .config import JobConfig
from .errors import ConfigError
from .writer import journal_path, read_journal

_KEY_BYTES = 8  # 64-bit keys: a collision among a billion ids is ~3 % likely; among a million, negligible


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


def _key(row_id: str, fingerprint: str) -> bytes:
    return hashlib.blake2b(f"{row_id}\0{fingerprint}".encode(), digest_size=_KEY_BYTES).digest()


class ResumeIndex:
    """The ids the output holds, as compact keys; memory is ~70 bytes per row, not per image."""

    def __init__(self, retry_errors: bool = True):
        self._done: set[bytes] = set()
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
                for batch in parquet.iter_batches(batch_size=65_536, columns=columns):
                    data = batch.to_pydict()
                    index.add_all(zip(data["id"], data["status"], data.get("fingerprint", [None] * batch.num_rows)))
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"{output} exists but cannot be read as our Parquet output ({e}); move it away or pick another --output") from None
        journal = journal_path(output)
        if journal.exists():
            index.add_all((r.get("id"), r.get("status"), r.get("fingerprint")) for r in read_journal(journal))
        return index

    def add_all(self, rows: Iterable[tuple[str | None, str | None, str | None]]) -> None:
        for row_id, status, fingerprint in rows:
            if row_id is None:
                continue
            self.rows_in_output += 1
            if status == "ok" and fingerprint:
                self._done.add(_key(row_id, fingerprint))
            elif not self._retry_errors:
                self._done.add(_key(row_id, ""))

    def is_done(self, row_id: str, fingerprint: str) -> bool:
        if not self._done:
            return False
        return _key(row_id, fingerprint) in self._done or (not self._retry_errors and _key(row_id, "") in self._done)
