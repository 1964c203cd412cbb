"""Collecting an ended batch: download its results, write one output row per answered line, record it collected.

Every row of the batch is looked up by its custom_id: an answer becomes an ok row (or an error row, by the
online rule), an error line an error row classified as online; a line the provider never ran (expired,
cancelled, or missing) writes nothing, so the row is to do again. Rows already in the output with the same
the batch wrote already (a collection a kill interrupted: any row of its ids written since it was prepared is
its own, as no other run sends an id while its batch is live) are not written twice. Results are downloaded to files
beside the ledger first, so a download that breaks starts again and a parse never holds a socket.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Iterator

from ..config import JobConfig
from ..cost import Price, row_cost
from ..errors import AnswerError, ConfigError
from ..hashedset import HashedSet
from ..outputs import Output
from ..progress import Progress
from ..records import ManifestRow, PreparedImage
from ..rowkey import key, row_keys
from ..structured import InvalidOutputError, answer_schema
from ..tasks import task_configs
from ..results import OutputRow, error_row, ok_row
from ..usage import billed_usage
from ..writer import ResultWriter
from .ledger import Batch, Ledger
from .lines import LineResult

log = logging.getLogger("pipeline")

async def collect(ledger: Ledger, batch: Batch, state: Any, api: Any, config: JobConfig, price: Price | None,
                  writer: ResultWriter, progress: Progress, output: Path | None = None) -> tuple[int, int, float]:
    """Collect one ended batch; returns (rows written, rows to do again, what they cost)."""
    if batch.status is None:
        ledger.record("ended", batch.key, status=state.status, output_file_id=state.output_file_id,
                      error_file_id=state.error_file_id, note=state.problem)
    if state.status == "failed":
        kept = ledger.requests_path(batch.key)
        why = state.problem or "the provider gave no reason"
        log.error("batch %s (%s) was rejected at validation: %s; its %d rows are to do again%s", batch.key, state.batch_id,
                  why, batch.rows, f" (its file is kept at {kept})" if kept.exists() else "")
        ledger.record("rejected", batch.key, why=why)
        return 0, batch.rows, 0.0
    results: dict[str, LineResult] = {}
    async for name, where in api.results(state):
        path = ledger.results_path(batch.key, name)
        if not path.exists():
            await api.http.download(where, path)
        for result in _parse(path, api.parse):
            results[result.custom_id] = result
    written_before = _written_since(output, batch.at) if batch.collecting and output is not None else None
    ledger.record("collecting", batch.key)
    written, again, cost = write_rows(ledger.read_rows(batch.key), results, config, price, writer, progress, written_before)
    writer.sync()  # the rows are durable before the ledger says they are
    ledger.record("collected", batch.key, written=written, again=again)
    ledger.remove_files(batch.key, "rows", "output", "errors", "requests")
    log.info("collected batch %s (%s, %s): %d rows written, %d to do again", batch.key, state.batch_id, state.status, written, again)
    return written, again, cost


def write_rows(rows: Iterator[dict[str, Any]], results: dict[str, LineResult], config: JobConfig, price: Price | None,
               writer: ResultWriter, progress: Progress, written_before: HashedSet | None) -> tuple[int, int, float]:
    written = again = 0
    cost = 0.0
    for meta in rows:
        result = results.get(meta["c"])
        if result is None or (result.completion is None and result.error is None):
            again += 1
            continue
        if written_before is not None and key(meta["id"], meta.get("task")) in written_before:
            continue
        out = output_row(meta, result, config, price)
        writer.write(out)
        progress.counters.requests += 1  # the provider ran one request for it, in the batch
        progress.counters.rows_sent += 1
        progress.record(out)
        written += 1
        cost += out["cost_usd"] or 0.0
    return written, again, cost


def output_row(meta: dict[str, Any], result: LineResult, config: JobConfig, price: Price | None) -> OutputRow:
    row = ManifestRow(meta["line"], meta["id"], meta["image"], meta["source"], meta.get("prompt"), meta.get("extra") or {},
                      task=meta.get("task"))
    image = PreparedImage(url=b"", **meta["img"])
    answers = answer_schema(task_configs(config).get(row.task, config))
    columns = dict.fromkeys(answers.columns.values()) if answers is not None else None
    error = result.error
    if result.completion is not None:
        completion = result.completion
        cost = row_cost(price, billed_usage(completion.usage))
        try:
            if answers is not None:
                columns = answers.read(completion)
            return ok_row(row, image, completion, attempts=1, latency_ms=None, fingerprint=meta["fp"], cost_usd=cost, columns=columns)
        except InvalidOutputError as e:  # not asked again here: an error row, which the next run sends again
            return error_row(row, e, message=config.redact(str(e)), attempts=1, model=config.model, fingerprint=meta["fp"],
                             cost_usd=cost, image=image, columns=dict.fromkeys(columns))
    cost = row_cost(price, billed_usage(error.usage)) if isinstance(error, AnswerError) else None
    return error_row(row, error, message=config.redact(str(error)), attempts=1, model=config.model, fingerprint=meta["fp"],
                     cost_usd=cost, image=image, columns=columns)


def _written_since(output: Path, since: float) -> HashedSet:
    """The keys (rowkey.py) of the rows the output got since `since` (epoch seconds): read only after an interrupted collection."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = HashedSet()
    try:
        rows = Output(output)
    except ConfigError:  # nothing written yet
        return ids
    for batch in rows.batches(["id", "task", "completed_at"]):
        table = pa.Table.from_batches([batch])
        newer = pc.greater_equal(pc.cast(table.column("completed_at"), pa.int64()), int(since * 1000))
        ids.update(row_keys(table.filter(pc.fill_null(newer, False))).to_pylist())
    return ids


def _parse(path: Path, parse: Callable[[bytes], LineResult]) -> Iterator[LineResult]:
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield parse(raw)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s line %d is not a batch result (%s: %s); its row is to do again", path.name, number,
                            type(e).__name__, str(e)[:200])
