"""The files beside an output, and the few rules every module that writes one follows.

Sidecar names (the journal, the lock, the run record, the review page) are made here only; a file
is replaced atomically (a temporary name in the same folder, fsync, rename, fsync of the folder);
a file at the output's path that is not our Parquet is refused with one message.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError


def is_dataset(output: Path) -> bool:
    """A folder output (dataset.py): any --output that does not end in .parquet (config refuses other file names)."""
    return output.suffix.lower() != ".parquet"


def _sidecar(output: Path, suffix: str) -> Path:
    """Beside a file output; inside a dataset folder under a `_` name, which dataset readers skip."""
    return output / f"_{suffix}" if is_dataset(output) else output.with_name(f"{output.name}.{suffix}")


def journal_path(output: Path) -> Path:
    return _sidecar(output, "journal.jsonl")


def lock_path(output: Path) -> Path:
    return _sidecar(output, "lock")


def runs_path(output: Path) -> Path:
    return _sidecar(output, "runs.jsonl")


def batches_path(output: Path) -> Path:
    """The folder of provider batch jobs submitted for this output (batch/ledger.py)."""
    return _sidecar(output, "batches")


def report_path(output: Path) -> Path:
    return output.with_name(output.name + ".html")


def temporary_path(path: Path, tag: str = "") -> Path:
    """A hidden name beside `path`, unique to this process; ResultWriter.open() removes any a killed run left."""
    return path.with_name(f".{path.name}.{os.getpid()}{tag}.tmp")


def write_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data`: a reader sees the old file or the new one, never half of one."""
    temporary = temporary_path(path)
    try:
        with open(temporary, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def not_our_output(output: Path, error: Exception) -> ConfigError:
    return ConfigError(f"{output} exists but cannot be read as our Parquet output ({error}); move it away or pick another --output")
