"""`<output>.runs.jsonl`: one JSON line per run, what a cron alert reads."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .errors import write_error
from .files import runs_path


def append_run_record(output: Path, record: dict[str, Any], *, required: bool = True, quiet: bool = False) -> None:
    """Append and fsync one line. `required=False` (a run already failing): a write error is logged, not raised."""
    path = runs_path(output)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        if required:
            raise write_error(path, e) from None
        if not quiet:
            logging.getLogger("pipeline").warning("could not append the run record to %s: %s", path, e.strerror or e)
