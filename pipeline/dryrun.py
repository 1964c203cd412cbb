"""--dry-run: read and check every row and image, send nothing, and say what would be sent and cost."""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

from .config import JobConfig
from .cost import load_price
from .errors import ImageError, ManifestRowError
from .estimate import estimate_input_tokens
from .images import ImageLoader
from .manifest import Manifest
from .pool import run_pool
from .progress import Progress
from .records import ManifestRow
from .request import build_chat_request
from .results import error_row
from .summary import RunSummary, summarize_run


async def dry_run(config: JobConfig, manifest: Manifest, rows: Iterable[ManifestRow], progress: Progress, images: ImageLoader) -> RunSummary:
    """Read and check every row and image the run would send; send nothing; say what would be sent."""
    invalid: list[str] = []
    example: list[dict[str, Any]] = []
    input_tokens = 0
    unknown_size = 0

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
        nonlocal input_tokens, unknown_size
        progress.record({"status": "ok"})
        input_tokens += estimate_input_tokens(config, image, row.prompt or config.prompt)
        unknown_size += image.width is None
        if not example:
            shown = image.url if len(image.url) <= 80 else image.url[:60] + f"...<{len(image.url)} characters>"
            example.append(build_chat_request(config, row.prompt or config.prompt, shown))

    await run_pool(rows, check, config.concurrency, progress)
    progress.close()
    c = progress.counters
    print(f"dry run: nothing was sent. {c.done + c.skipped} rows read from {manifest.path}")
    print(f"  already done in {config.output}: {c.skipped} rows")
    print(f"  would send {c.ok} requests to {config.base_url.rstrip('/')}/chat/completions (model {config.model})")
    if c.error:
        print(f"  {c.error} rows would fail without a request:")
        print("\n".join(invalid) + ("\n  ..." if c.error > len(invalid) else ""))
    if manifest.stats.duplicates:
        print(f"  {manifest.stats.duplicates} duplicate ids would be skipped")
    guessed = f" ({unknown_size} remote images counted at full size: their size is unknown until the provider fetches them)" if unknown_size else ""
    print(f"  estimated input tokens: {input_tokens:,}{guessed}")
    price = load_price(config.prices, config.model)
    if price is None:
        print(f"  estimated cost: unknown ({config.model} has no price in {config.prices})")
    elif c.ok:
        # Captions rarely use all of max_tokens: the range runs from a quarter of it to all of it.
        low = price.cost(input_tokens, c.ok * config.max_tokens // 4)
        high = price.cost(input_tokens, c.ok * config.max_tokens)
        print(f"  estimated cost: ${low:.4f} to ${high:.4f} (input ${price.cost(input_tokens, 0):.4f}; answers of "
              f"{config.max_tokens // 4} to {config.max_tokens} tokens each)")
    if example:
        print("  example request body:\n" + json.dumps(example[0], indent=2, ensure_ascii=False))
    return dataclasses.replace(summarize_run(config, manifest, progress, dry_run=True), estimated_input_tokens=input_tokens)
