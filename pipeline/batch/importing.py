"""`pipeline batch import`: a results file run elsewhere (vLLM's run_batch, a manual upload) read back into the output.

The output's ledger knows every exported row by its custom_id (export recorded them as batches of api "file");
each result line, in OpenAI's or Anthropic's format, becomes the row's output row by the same rules as a
collected batch (collect.py). An exported batch whose rows all have a result is marked collected.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from ..config import DEFAULT_PRICES, JobConfig
from ..cost import load_price
from ..progress import Progress
from ..storage import Storage
from ..target import Target
from ..tasks import answer_columns
from ..writer import ResultWriter
from .collect import write_rows
from .ledger import Ledger
from .lines import LineResult, parse_anthropic_result, parse_openai_result

log = logging.getLogger("pipeline")


def import_results(results: Path, output: Path | str, prices: Path | None) -> tuple[int, int, int]:
    """(rows written, exported rows without a result, results matching no exported row)."""
    return asyncio.run(_import(results, output, prices or DEFAULT_PRICES))


async def _import(results_file: Path, output: Path | str, prices: Path) -> tuple[int, int, int]:
    results = _read(results_file)
    with Storage({}) as store:
        target = Target(output, store)
        async with target.held():
            ledger = Ledger.open(target.local)
            exported = [b for b in ledger.batches.values() if b.api == "file" and not b.done]
            configs = {b.key: JobConfig(model=b.model or JobConfig().model, prices=prices, **(b.answers or {})) for b in exported}
            writer = ResultWriter(target.local, columns=answer_columns(*configs.values())).open()
            matched: set[str] = set()
            written = left = 0
            try:
                for batch in exported:
                    config = configs[batch.key]
                    rows = list(ledger.read_rows(batch.key))
                    matched.update(row["c"] for row in rows if row["c"] in results)
                    done, again, _ = write_rows(iter(rows), results, config, load_price(prices, config.model, batch=True), writer,
                                                Progress(None, interactive=False), None)
                    written += done
                    left += again
                    if again == 0:
                        writer.sync()
                        ledger.record("collected", batch.key, written=done, again=0)
                        ledger.remove_files(batch.key, "rows")
            finally:
                writer.close()
                target.publish()
    return written, left, len(set(results) - matched)


def _read(path: Path) -> dict[str, LineResult]:
    results: dict[str, LineResult] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                parse = parse_anthropic_result if b'"result"' in raw and b'"response"' not in raw else parse_openai_result
                result = parse(raw)
            except (ValueError, KeyError, TypeError) as e:
                log.warning("%s line %d is not a batch result (%s); skipped", path, number, str(e)[:200])
                continue
            results[result.custom_id] = result
    return results
