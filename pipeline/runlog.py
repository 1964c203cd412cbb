"""`<output>.runs.jsonl`: one JSON line per run, what a cron alert reads."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def runs_path(output: Path) -> Path:
    return output.with_name(output.name + ".runs.jsonl")


def append_run_record(output: Path, record: dict[str, Any]) -> None:
    path = runs_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
