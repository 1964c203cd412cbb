"""--dry-run: read and check every row and image, send nothing, and say what would be sent and cost."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
from pathlib import Path

from .config import JobConfig
from .cost import load_price, unpriced_note
from .errors import ConfigError, ImageError, ManifestRowError
from .estimate import estimate_input_tokens
from .images import ImageLoader
from .files import journal_path
from .dedupe import twin_key
from .hashedset import HashedSet
from .manifest import Manifest
from .outputs import Output
from .pool import run_pool
from .progress import Progress
from .records import ManifestRow
from .request import build_chat_request
from .results import error_row
from .resume import fingerprinter
from .structured import answer_schema
from .summary import RunSummary, summarize_run
from .tasks import task_configs

SAMPLED_ANSWERS = 100_000  # earlier answers read to ground the cost range (the first ones: bounded memory)


def _answer_lengths(config: JobConfig) -> tuple[int, int, str]:
    """The answer lengths to price: those of this output's earlier answers from the same model (and task) when there
    are any (10th to 90th percentile), else a quarter of --max-tokens to all of it."""
    if isinstance(config.output, Path) and (config.output.exists() or journal_path(config.output).exists()):
        lengths = []
        try:
            for batch in Output(config.output).batches(["status", "model", "completion_tokens", "task"]):
                if not {"model", "completion_tokens"} <= set(batch.schema.names):
                    break
                mine = pc.and_(pc.equal(batch.column("status"), "ok"), pc.equal(batch.column("model"), config.model))
                if config.task is not None:  # one task's answers, not another's
                    if "task" not in batch.schema.names:
                        continue
                    mine = pc.and_(mine, pc.equal(batch.column("task"), config.task))
                lengths.extend(pc.drop_null(pc.filter(batch.column("completion_tokens"), pc.fill_null(mine, False))).to_pylist())
                if len(lengths) >= SAMPLED_ANSWERS:
                    break
        except ConfigError:
            lengths = []  # not an output we can read: the run itself will say so
        if lengths:
            p10, p90 = (int(v) for v in pc.quantile(pa.array(lengths), q=[0.1, 0.9], interpolation="nearest").to_pylist())
            return p10, max(p90, p10), f"10th to 90th percentile of {len(lengths):,} earlier answers in {config.output.name}"
    return config.max_tokens // 4, config.max_tokens, "a guess from --max-tokens; a first run grounds it in real answers"


def _answer_tokens(tasks: dict[str | None, JobConfig], requests: Counter) -> tuple[int, int, str]:
    """(fewest, most) answer tokens of `requests` (per task), and what the lengths are grounded on."""
    low = high = 0
    said = []
    for name, n in requests.items():
        shortest, longest, grounds = _answer_lengths(tasks[name])
        low, high = low + n * shortest, high + n * longest
        said.append(f"{shortest} to {longest} tokens each{'' if name is None else f' for {name}'}: {grounds}")
    return low, high, "; ".join(said)


async def dry_run(config: JobConfig, manifest: Manifest, rows: Iterable[ManifestRow], progress: Progress, images: ImageLoader,
                  answered: HashedSet | None = None) -> RunSummary:
    """Read and check every row and image the run would send; send nothing; say what would be sent.

    `answered`: the twin keys (dedupe.twin_key) the output has answers for."""
    invalid: list[str] = []
    example: list[dict[str, Any]] = []
    input_tokens = 0
    unknown_size = 0
    tasks = task_configs(config)
    fingerprints = {name: fingerprinter(task) for name, task in tasks.items()}
    seen, answered = HashedSet(), answered if answered is not None else HashedSet()
    twin_tokens = 0  # input tokens of the rows dedupe answers without a request
    sent, reused = Counter(), Counter()  # requests per task, and rows per task that dedupe answers

    async def check(row: ManifestRow) -> None:
        try:
            if row.problem:
                raise ManifestRowError(row.problem)
            image = await images.load(row)
        except (ImageError, ManifestRowError) as e:
            progress.record(error_row(row, e))
            if len(invalid) < 20:
                invalid.append(f"  {row.id}: {e.error_type}: {e}")
            return
        nonlocal input_tokens, unknown_size, twin_tokens
        task, answers = tasks[row.task], answer_schema(tasks[row.task])
        prompt = row.prompt or task.prompt
        sent_prompt = answers.instruct(prompt) if answers is not None else prompt
        tokens = estimate_input_tokens(task, image, sent_prompt)
        key = twin_key(image.sha256, fingerprints[row.task](prompt)) if image.sha256 is not None else None
        if config.dedupe and key is not None and (key in answered or not seen.add(key)):
            progress.record({"status": "ok", "reused_from": image.sha256})
            twin_tokens += tokens
            reused[row.task] += 1
            return
        progress.record({"status": "ok"})
        sent[row.task] += 1
        input_tokens += tokens
        unknown_size += image.width is None
        if not example:
            url = image.url if isinstance(image.url, str) else image.url.decode("ascii")
            shown = url if len(url) <= 80 else url[:60] + f"...<{len(url)} characters>"
            example.append(build_chat_request(task, sent_prompt, shown))

    await run_pool(rows, check, config.concurrency, progress)
    progress.close()
    c = progress.counters
    print(f"dry run: nothing was sent. {c.done + c.skipped} rows read from {manifest.path}")
    print(f"  already done in {config.output}: {c.skipped} rows")
    where = (f"as {config.batch_api} batch jobs at {config.base_url.rstrip('/')}" if config.batch
             else f"to {config.base_url.rstrip('/')}/chat/completions")
    print(f"  would send {c.ok - c.reused} requests {where} (model {config.model})")
    if config.tasks:
        print(f"  {len(tasks)} tasks per image: {', '.join(tasks)} (one output row per image and task)")
    for name, task in tasks.items():
        if (answers := answer_schema(task)) is None:
            continue
        how = (f"as response_format (strict {str(answers.response_format()['json_schema']['strict']).lower()})"
               if answers.mode == "response_format" else "in the prompt (the provider ignores response_format)")
        print(f"  {'answers' if name is None else f'task {name} answers'} must follow the schema, sent {how}; its "
              f"{len(answers.columns)} properties become columns: {', '.join(answers.columns.values())}")
    if c.error:
        print(f"  {c.error} {'row' if c.error == 1 else 'rows'} would fail without a request:")
        print("\n".join(invalid) + ("\n  ..." if c.error > len(invalid) else ""))
    if manifest.stats.duplicates:
        print(f"  {manifest.stats.duplicates} duplicate ids would be skipped")
    guessed = f" ({unknown_size} remote images counted at full size: their size is unknown until the provider fetches them)" if unknown_size else ""
    print(f"  estimated input tokens: {input_tokens:,}{guessed}")
    price = load_price(config.prices, config.model)
    if price is None:
        print(f"  estimated cost: {unpriced_note(config.model, config.prices)}")
    elif sent:
        low_answers, high_answers, grounds = _answer_tokens(tasks, sent)
        low = price.cost(input_tokens, low_answers)
        high = price.cost(input_tokens, high_answers)
        print(f"  estimated cost: ${low:.4f} to ${high:.4f} online (input ${price.cost(input_tokens, 0):.4f}; answers of {grounds})")
        batch = load_price(config.prices, config.model, batch=True)
        if batch is not None:
            mode = "--batch, as asked" if config.batch else "with --batch"
            print(f"  estimated cost {mode}: ${batch.cost(input_tokens, low_answers):.4f} to "
                  f"${batch.cost(input_tokens, high_answers):.4f} (answered within 24 h)")
    if c.reused:
        saving = ""
        if price is not None:
            low_answers, high_answers, _ = _answer_tokens(tasks, reused)
            saving = (f", saving ${price.cost(twin_tokens, low_answers):.4f} to "
                      f"${price.cost(twin_tokens, high_answers):.4f} online")
        print(f"  {c.reused} rows have the same image and settings as another row and would reuse its answer{saving} "
              "(--no-dedupe sends them too)")
    if example:
        print("  example request body:\n" + json.dumps(example[0], indent=2, ensure_ascii=False))
    return dataclasses.replace(summarize_run(config, manifest, progress, dry_run=True), estimated_input_tokens=input_tokens)
