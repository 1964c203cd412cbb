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
from .hashedset import HashedSet
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
    """What the output holds, read with pyarrow a batch at a time and kept as hashes (see HashedSet)."""

    def __init__(self, retry_errors: bool = True, expected: int = 0):
        self._ok = HashedSet(expected)  # (id, fingerprint) of the ok rows
        self._failed = None if retry_errors else HashedSet()  # ids of the error rows, skipped only with retry_errors off
        self.rows_in_output = 0

    @classmethod
    def load(cls, output: Path, *, retry_errors: bool = True) -> "ResumeIndex":
        """Index the output and any journal a killed run left beside it (read only)."""
        parquet = _open_output(output) if output.exists() else None
        index = cls(retry_errors, expected=parquet.metadata.num_rows if parquet is not None else 0)
        if parquet is not None:
            try:
                columns = [c for c in ("id", "status", "fingerprint") if c in parquet.schema_arrow.names]
                for batch in parquet.iter_batches(batch_size=65_536, columns=columns):
                    index._add_batch(pa.Table.from_batches([batch]))
            except (OSError, ValueError, KeyError) as e:
                raise _not_our_output(output, e) from None
        journal = journal_path(output)
        if journal.exists():
            rows = [(r.get("id"), r.get("status"), r.get("fingerprint")) for r in read_journal(journal)]
            index._add_batch(pa.table({name: [r[i] for r in rows] for i, name in enumerate(("id", "status", "fingerprint"))},
                                      schema=pa.schema([("id", pa.string()), ("status", pa.string()), ("fingerprint", pa.string())])))
        return index

    def _add_batch(self, table: pa.Table) -> None:
        table = table.filter(pc.is_valid(table.column("id")))
        self.rows_in_output += table.num_rows
        # Not pc.equal(status, "ok"): making "ok" an Arrow scalar has pyarrow import pandas, when installed (~0.5 s).
        ok = pc.match_like(table.column("status"), "ok")
        if "fingerprint" in table.column_names:
            done = table.filter(pc.and_(ok, pc.is_valid(table.column("fingerprint"))))
            self._ok.update(zip(done.column("id").to_pylist(), done.column("fingerprint").to_pylist()))
        if self._failed is not None:
            not_ok = pc.or_kleene(pc.invert(ok), pc.is_null(ok))  # not pc.fill_null(ok, False), for the same reason
            self._failed.update(table.filter(not_ok).column("id").to_pylist())

    def is_done(self, row_id: str, fingerprint: str) -> bool:
        return (row_id, fingerprint) in self._ok or (self._failed is not None and row_id in self._failed)


def _open_output(output: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(output)
    except (OSError, ValueError, KeyError) as e:
        raise _not_our_output(output, e) from None


def _not_our_output(output: Path, error: Exception) -> ConfigError:
    return ConfigError(f"{output} exists but cannot be read as our Parquet output ({error}); move it away or pick another --output")
