"""Reading an output as the next run would see it: the Parquet file's rows, with the rows a killed run left in
its journal in place of theirs (the journal is newer; the next run folds it in). `status` and `export` read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .errors import ConfigError
from .files import journal_path, not_our_output
from .writer import conform, read_journal, rows_to_table, unified_schema

BATCH_ROWS = 65_536


class Output:
    def __init__(self, path: Path):
        self.path = path
        journal = journal_path(path)
        self.journal = rows_to_table(list(read_journal(journal))) if journal.exists() else None
        self._file = _open(path) if path.exists() else None
        if self._file is None and self.journal is None:
            raise ConfigError(f"{path}: no such output (no run has written it yet)")
        file_schema = self._file.schema_arrow if self._file else None
        self.schema = unified_schema(file_schema, self.journal.schema) if self.journal is not None else file_schema

    @property
    def journal_rows(self) -> int:
        return self.journal.num_rows if self.journal is not None else 0

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows, one batch at a time (bounded memory), in `columns` (those of them it has) or all of them."""
        schema = self.schema if columns is None else pa.schema([f for f in self.schema if f.name in columns])
        replaced = self.journal.column("id") if self.journal is not None else None
        if self._file is not None:
            present = [name for name in schema.names if name in self._file.schema_arrow.names]
            try:
                for batch in self._file.iter_batches(batch_size=BATCH_ROWS, columns=sorted(set(present) | {"id"})):
                    table = pa.Table.from_batches([batch])
                    if replaced is not None:
                        table = table.filter(pc.invert(pc.is_in(table.column("id"), value_set=replaced.combine_chunks())))
                    yield from conform(table, schema).to_batches()
            except (OSError, pa.ArrowException) as e:
                raise not_our_output(self.path, e) from None
        if self.journal is not None:
            yield from conform(self.journal, schema).to_batches()


def _open(path: Path) -> pq.ParquetFile:
    try:
        file = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise not_our_output(path, e) from None
    if not {"id", "status"} <= set(file.schema_arrow.names):
        raise ConfigError(f"{path}: not a caption output (no id or status column)")
    return file
