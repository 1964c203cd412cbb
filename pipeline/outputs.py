"""Reading an output as the next run would see it: the Parquet file's rows (or a dataset's parts, a later part's
row in place of an earlier one's), with the rows a killed run left in its journal in place of theirs (the journal
is newer; the next run folds it in). `status`, `export` and `compact` read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError
from .dataset import stored_files
from .files import journal_path, not_our_output
from .remote import RemoteDataset, local_output
from .storage import Storage
from .merge import conform, read_journal, rows_to_table, unified_schema
from .rowkey import row_keys

BATCH_ROWS = 65_536


class Output:
    def __init__(self, path: Path | str, store: Storage | None = None):
        """`path`: an output file or dataset folder, or a bucket dataset's URL (its parts, and this machine's journal)."""
        self.path = path
        remote = RemoteDataset(path, store or Storage()) if isinstance(path, str) else None
        journal = journal_path(local_output(path))
        self.journal = rows_to_table(list(read_journal(journal))) if journal.exists() else None
        self._paths = remote.parts() if remote else stored_files(path)  # the file, or a dataset's parts oldest first
        self._files = [remote.open(p) if remote else _open(p) for p in self._paths]
        if not self._files and self.journal is None:
            raise ConfigError(f"{path}: no such output (no run has written it yet)")
        schema = None
        for file in self._files:
            schema = unified_schema(schema, file.schema_arrow)
        self.schema = unified_schema(schema, self.journal.schema) if self.journal is not None else schema

    @property
    def journal_rows(self) -> int:
        return self.journal.num_rows if self.journal is not None else 0

    @property
    def parts(self) -> int:
        return len(self._files)

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows, newest per id (per id and task: rowkey.py), one batch at a time, in `columns` (those of them it has) or all of them."""
        schema = self.schema if columns is None else pa.schema([f for f in self.schema if f.name in columns])
        for path, file, replaced in zip(self._paths, self._files, self._keys_written_later()):
            present = [name for name in schema.names if name in file.schema_arrow.names]
            try:
                for batch in file.iter_batches(batch_size=BATCH_ROWS, columns=sorted(set(present) | {"id"} | ({"task"} & set(file.schema_arrow.names)))):
                    table = pa.Table.from_batches([batch])
                    if replaced is not None:
                        table = table.filter(pc.invert(pc.is_in(row_keys(table), value_set=replaced)))
                    yield from conform(table, schema).to_batches()
            except (OSError, pa.ArrowException) as e:
                raise not_our_output(path, e) from None
        if self.journal is not None:
            yield from conform(self.journal, schema).to_batches()

    def _keys_written_later(self) -> list[pa.Array | None]:
        """For each file, the row keys that a later part or the journal holds a newer row for (only ids and tasks are read)."""
        later: list[pa.Array] = [row_keys(self.journal)] if self.journal is not None else []
        out: list[pa.Array | None] = []
        for path, file in reversed(list(zip(self._paths, self._files))):
            out.append(pa.concat_arrays(later) if later else None)
            if len(self._files) > 1:
                try:
                    later.append(row_keys(file.read(columns=["id", "task"] if "task" in file.schema_arrow.names else ["id"])))
                except (OSError, pa.ArrowException) as e:
                    raise not_our_output(path, e) from None
        return out[::-1]


def _open(path: Path) -> pq.ParquetFile:
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise not_our_output(path, e) from None
    if not {"id", "status"} <= set(file.schema_arrow.names):
        raise ConfigError(f"{path}: not a caption output (no id or status column)")
    return file
