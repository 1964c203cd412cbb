"""`pipeline status OUTPUT [MANIFEST]`: how far an output is — counts, errors by type, tokens, cost, the last runs,
and with the manifest the rows left. Reads the output a batch at a time; `--json` for scripts."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from .cost import show_cost, unpriced_note
from .batch.ledger import Ledger
from .remote import RemoteDataset, local_output
from .storage import Storage, location
from .errors import EXIT_USAGE, ConfigError, ManifestError
from .files import journal_path, runs_path
from .hashedset import HashedSet
from .manifest import Manifest, open_manifest
from .outputs import Output
from .rowkey import key, row_keys

LAST_RUNS = 5
COLUMNS = ["id", "task", "status", "error_type", "prompt_tokens", "completion_tokens", "cost_usd", "model"]


@dataclass
class Status:
    output: str
    rows: int = 0
    ok: int = 0
    error: int = 0
    error_types: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None  # None: no row has a price
    unpriced_rows: int = 0  # rows with tokens and no cost
    models: list[str] = field(default_factory=list)
    journal_rows: int = 0  # from an interrupted run, not yet folded into the file
    last_runs: list[dict[str, Any]] = field(default_factory=list)
    manifest: str | None = None
    manifest_rows: int | None = None
    left: int | None = None  # manifest ids without an ok row (for a job with tasks: (id, task) pairs)
    left_failed: int | None = None  # of those, ids with an error row
    tasks: list[str] = field(default_factory=list)  # the last run's [tasks.NAME], each asked of every manifest row
    batch_rows: int = 0  # rows in provider batches not collected yet (--batch)
    batches: int = 0


def output_status(output: Path, manifest: Path | None = None, columns: tuple[str | None, str | None] = (None, None)) -> Status:
    out = Output(output) if isinstance(output, str) or output.exists() or _has_journal(output) else None
    status = Status(str(output), last_runs=_last_runs(output))
    if out is None and not status.last_runs:
        raise ConfigError(f"{output}: no such output, and no run record beside it (no run has written it yet)")
    ok_ids, failed_ids = HashedSet(), HashedSet()
    models: Counter[str] = Counter()
    for batch in out.batches(COLUMNS) if out else ():
        status.rows += batch.num_rows
        is_ok = pc.fill_null(pc.equal(batch.column("status"), "ok"), False)
        ok = int(pc.sum(pc.cast(is_ok, "int64")).as_py() or 0)
        status.ok += ok
        status.error += batch.num_rows - ok
        for name in ("prompt_tokens", "completion_tokens"):
            if name in batch.schema.names:
                setattr(status, name, getattr(status, name) + int(pc.sum(batch.column(name)).as_py() or 0))
        _add_cost(status, batch)
        if "error_type" in batch.schema.names:
            types = pc.fill_null(pc.filter(batch.column("error_type"), pc.invert(is_ok)), "unknown")
            for d in pc.value_counts(types).to_pylist():
                status.error_types[d["values"]] = status.error_types.get(d["values"], 0) + d["counts"]
        if "model" in batch.schema.names:
            models.update({d["values"]: d["counts"] for d in pc.value_counts(pc.drop_null(batch.column("model"))).to_pylist()})
        if manifest is not None:
            keys = row_keys(batch)
            ok_ids.update(pc.filter(keys, is_ok).to_pylist())
            failed_ids.update(pc.filter(keys, pc.invert(is_ok)).to_pylist())
    last_options = status.last_runs[-1].get("options", {}) if status.last_runs else {}
    for run in status.last_runs:
        run.pop("options", None)
    status.models = [m for m, _ in models.most_common(3)]
    status.tasks = sorted(last_options.get("tasks") or {})
    status.journal_rows = out.journal_rows if out else 0
    live = [b for b in Ledger.open(local_output(output)).live() if b.api != "file"]
    status.batches, status.batch_rows = len(live), sum(b.rows for b in live)
    if manifest is not None:
        if columns == (None, None):  # as the last run read it
            columns = (last_options.get("image_column"), last_options.get("id_column"))
        _against_manifest(status, open_manifest(manifest, *columns), ok_ids, failed_ids)
    return status


def _has_journal(output: Path) -> bool:
    return journal_path(output).exists()


def _add_cost(status: Status, batch: Any) -> None:
    if "cost_usd" not in batch.schema.names:
        return
    cost = batch.column("cost_usd")
    if cost.null_count < len(cost):
        status.cost_usd = (status.cost_usd or 0.0) + (pc.sum(cost).as_py() or 0.0)
    if "prompt_tokens" in batch.schema.names:
        billed_unpriced = pc.and_(pc.is_null(cost), pc.fill_null(pc.greater(batch.column("prompt_tokens"), 0), False))
        status.unpriced_rows += int(pc.sum(pc.cast(billed_unpriced, "int64")).as_py() or 0)


def _against_manifest(status: Status, m: Manifest, ok_ids: HashedSet, failed_ids: HashedSet) -> None:
    status.manifest, status.manifest_rows, status.left, status.left_failed = str(m.path), 0, 0, 0
    for row in m.rows():
        status.manifest_rows += 1
        for k in [key(row.id, task) for task in status.tasks] or [row.id]:
            if k not in ok_ids:
                status.left += 1
                status.left_failed += k in failed_ids


def _last_runs(output: Path | str) -> list[dict[str, Any]]:
    if isinstance(output, str):  # a bucket dataset: its _runs.jsonl, every machine's runs
        text = RemoteDataset(output, Storage()).read_runs()
    else:
        path = runs_path(output)
        text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    keep = ("options", "started_at", "ended_at", "exit_code", "rows", "ok", "error", "skipped", "cost_usd", "seconds", "stopped_by", "aborted", "error_types", "left")
    runs = []
    for line in text.splitlines()[-LAST_RUNS:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            runs.append({k: record[k] for k in keep if k in record} | ({"error": record["error"]} if "error" in record and "rows" not in record else {}))
    return runs


def describe(s: Status) -> str:
    """The status for a person."""
    lines = [f"{s.output}: {s.rows:,} rows, {s.ok:,} ok, {s.error:,} error"]
    if s.error_types:
        lines.append("  errors: " + ", ".join(f"{t} {n:,}" for t, n in sorted(s.error_types.items(), key=lambda tn: (-tn[1], tn[0]))))
    unknown = unpriced_note(s.models[0] if s.models else "this model", None) if s.cost_usd is None and s.rows else None
    partly = f" (plus {s.unpriced_rows:,} rows with no price)" if s.cost_usd is not None and s.unpriced_rows else ""
    lines.append(f"  tokens: {s.prompt_tokens + s.completion_tokens:,} ({s.prompt_tokens:,} prompt, {s.completion_tokens:,} completion); "
                 f"cost {show_cost(s.cost_usd or 0.0, unknown)}{partly}")
    if s.models:
        lines.append(f"  model: {', '.join(s.models)}")
    if s.journal_rows:
        lines.append(f"  {s.journal_rows:,} of these rows are in the journal of an interrupted run; the next run folds them into the file")
    if s.batches:
        lines.append(f"  {s.batch_rows:,} rows are in {s.batches} provider batches not collected yet: the next --batch run "
                     f"collects them (pipeline batch status {s.output})")
    if s.manifest is not None:
        never = s.left - s.left_failed
        rows = f"{s.manifest_rows:,} rows" + (f" x {len(s.tasks)} tasks ({', '.join(s.tasks)})" if s.tasks else "")
        lines.append(f"  manifest {s.manifest}: {rows}, {s.left:,} left ({s.left_failed:,} failed, {never:,} not tried); "
                     "rerun the caption command to do them" if s.left else f"  manifest {s.manifest}: {rows}, all done")
    if s.last_runs:
        lines.append("  last runs:")
        lines.extend(f"    {_run_line(r)}" for r in reversed(s.last_runs))
    else:
        lines.append("  no run record beside it")
    return "\n".join(lines)


def _run_line(r: dict[str, Any]) -> str:
    how = f"stopped by {r['stopped_by']}" if r.get("stopped_by") else "aborted" if r.get("aborted") else ""
    if "rows" not in r:
        return f"{r.get('started_at', '?')}  exit {r.get('exit_code')}  {r.get('error', 'failed before any row')}"
    cost = "" if r.get("cost_usd") is None else f", ${r['cost_usd']:.4f}"
    left = f", {r['left']} left" if r.get("left") else ""
    return (f"{r.get('started_at', '?')}  exit {r.get('exit_code')}  {r['rows']} rows ({r.get('ok', 0)} ok, {r.get('error', 0)} error, "
            f"{r.get('skipped', 0)} already done{left}){cost}, {r.get('seconds', 0):.1f} s{'  ' + how if how else ''}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipeline status", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=location, help="the output a caption run wrote (.parquet)")
    parser.add_argument("manifest", nargs="?", type=Path, help="the manifest, to count the rows left")
    parser.add_argument("--image-column", metavar="NAME", help="as for caption (default: what the last run used)")
    parser.add_argument("--id-column", metavar="NAME", help="as for caption (default: what the last run used)")
    parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    args = parser.parse_args(argv)
    try:
        status = output_status(args.output, args.manifest, (args.image_column, args.id_column))
    except (ConfigError, ManifestError) as e:
        print(f"pipeline status: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(asdict(status), ensure_ascii=False) if args.json else describe(status))
    return 0
