"""One object owns the run's counters and shows them: a tqdm bar on a terminal, a log line every few seconds otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm

log = logging.getLogger("pipeline")


@dataclass
class Counters:
    total: int | None = None  # estimated rows to process
    done: int = 0
    ok: int = 0
    error: int = 0
    requests: int = 0  # HTTP attempts, retries included
    rows_sent: int = 0  # rows that made at least one request
    skipped: int = 0  # rows the output already held (counted by the reader's thread)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    error_types: dict[str, int] = field(default_factory=dict)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def retries(self) -> int:
        return self.requests - self.rows_sent


class Progress:
    def __init__(self, total: int | None, *, stream: IO[str] | None = None, interactive: bool | None = None, log_every: float = 5.0):
        self.counters = Counters(total=total)
        self._stream = stream or sys.stderr
        self._interactive = self._stream.isatty() if interactive is None else interactive
        self._log_every = log_every
        self._started = time.monotonic()
        self._last_log = self._started
        self._bar = (
            tqdm(total=total, file=self._stream, unit="img", dynamic_ncols=True, smoothing=0.1)
            if self._interactive
            else None
        )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def record(self, row: dict[str, Any]) -> None:
        c = self.counters
        c.done += 1
        attempts = row.get("attempts") or 0
        c.requests += attempts
        c.rows_sent += attempts > 0
        c.prompt_tokens += row.get("prompt_tokens") or 0
        c.completion_tokens += row.get("completion_tokens") or 0
        c.cost_usd += row.get("cost_usd") or 0.0
        if row["status"] == "ok":
            c.ok += 1
        else:
            c.error += 1
            c.error_types[row["error_type"]] = c.error_types.get(row["error_type"], 0) + 1
        if self._bar is not None:
            self._bar.update(c.done + c.skipped - self._bar.n)
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    async def heartbeat(self) -> None:
        """Without a terminal, say where we are every few seconds even when nothing finishes (a stalled run shows)."""
        if self._interactive:
            return
        while True:
            await asyncio.sleep(self._log_every)
            if time.monotonic() - self._last_log >= self._log_every:
                self.log_line()

    def log_line(self) -> None:
        self._last_log = time.monotonic()
        c = self.counters
        of = f"/{c.total}" if c.total is not None else ""
        skipped = f", {c.skipped} already done" if c.skipped else ""
        log.info(
            "progress: %d%s rows (%d ok, %d error%s), %d tokens, $%.4f, %.1f requests/s",
            c.done + c.skipped, of, c.ok, c.error, skipped, c.tokens, c.cost_usd, self._rate(),
            extra={"progress": {"done": c.done, "ok": c.ok, "error": c.error, "skipped": c.skipped, "total": c.total,
                                "requests": c.requests, "tokens": c.tokens, "cost_usd": round(c.cost_usd, 6)}},
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=True)
            self._bar.close()
            self._bar = None

    def _rate(self) -> float:
        return self.counters.requests / self.elapsed if self.elapsed > 0 else 0.0

    def _postfix(self) -> str:
        c = self.counters
        return f"ok={c.ok} err={c.error} tok={c.tokens} ${c.cost_usd:.4f} req/s={self._rate():.1f}"
