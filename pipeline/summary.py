"""How a run ended: the summary line, its exit code, and its line in the run record."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import JobConfig
from .cost import show_cost
from .errors import EXIT_ABORTED, EXIT_BUDGET, EXIT_OK, EXIT_ROWS_FAILED, EXIT_SIGINT, EXIT_SIGTERM
from .manifest import Manifest
from .progress import Counters, Progress


@dataclass(frozen=True)
class RunSummary:
    output: Path | str | None
    rows: int
    ok: int
    error: int
    skipped: int
    requests: int
    retries: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # None: the model has no price
    duplicates: int
    seconds: float
    exit_code: int
    error_types: dict[str, int] = field(default_factory=dict)
    aborted: str | None = None
    stopped_by: str | None = None  # "SIGTERM" / "SIGINT" / "max-cost"
    dry_run: bool = False
    estimated_input_tokens: int | None = None  # dry runs
    rate_limited: int = 0  # attempts answered 429
    left: int | None = None  # rows of this run's work not done (a stop or an abort), None when unknown
    left_exact: bool = True
    unpriced: str | None = None  # how a cost is shown when unknown
    budget: str | None = None  # at --max-cost: the cap, what was spent, and the next request's worst case
    retry_errors: bool = True
    skipped_files: int = 0  # a folder's files that are not images
    reused: int = 0  # rows that reused the answer of a row with the same image and settings
    batches: str | None = None  # --batch: the batches still at the provider, and how to collect them

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def line(self) -> str:
        if self.rows == 0 and not self.skipped and not self.dry_run and not self.aborted and not self.stopped_by and not self.batches:
            return "nothing to caption: no rows to do (no output file was written)"
        if self.rows == 0 and self.skipped and not self.dry_run and not self.aborted and not self.stopped_by and not self.batches:
            return f"nothing to do: all {self.skipped} rows are already in {self.output} (0 requests sent; --redo captions them again)"
        errors = f" ({', '.join(f'{t}: {n}' for t, n in sorted(self.error_types.items()))})" if self.error_types else ""
        if self.dry_run:
            fail = f", {self.error} {'row' if self.error == 1 else 'rows'} would fail without a request{errors}" if self.error else ""
            return (f"dry run in {self.seconds:.1f} s, nothing was sent: would send {self.ok - self.reused} requests{fail}, "
                    f"{self.skipped} already done" + "".join(f"\n  {step}" for step in self.next_steps()))
        what = "dry run" if self.dry_run else "aborted" if self.aborted else f"stopped by {self.stopped_by}" if self.stopped_by else "done"
        written = isinstance(self.output, str) or (self.output is not None and self.output.exists())  # a bucket: put by now
        where = f" -> {self.output}" if self.output and written and not self.dry_run else ""
        skipped = f", {self.skipped} already done" if self.skipped else ""
        dup = f", {self.duplicates} duplicate ids skipped" if self.duplicates else ""
        dup += f", {self.skipped_files} files that are not images skipped" if self.skipped_files else ""
        dup += f", {self.reused} answered by a row with the same image (no request)" if self.reused else ""
        limited = f", {self.rate_limited} rate-limited" if self.rate_limited else ""
        return (
            f"{what} in {self.seconds:.1f} s: {self.rows} rows, {self.ok} ok, {self.error} error{errors}{skipped}{dup}, "
            f"{self.requests} requests ({self.retries} retries{limited}), {self.total_tokens} tokens, "
            f"cost {show_cost(self.cost_usd, self.unpriced)}{where}" + "".join(f"\n  {step}" for step in self.next_steps())
        )

    def next_steps(self) -> list[str]:
        """What is left and what to do about it, for an ending that is not a clean finish."""
        steps = []
        if self.batches:
            steps.append(self.batches)
        if self.budget:
            steps.append(self.budget)
        if (self.stopped_by or self.aborted) and not self.dry_run:
            left = "an unknown number of" if self.left is None else f"{self.left}" if self.left_exact else f"at most {self.left}"
            fix = "raise --max-cost, then rerun" if self.stopped_by == "max-cost" else "fix the cause above, then rerun" if self.aborted else "rerun"
            steps.append(f"{left} {'row' if self.left == 1 and self.left_exact else 'rows'} left: {fix} the same command to continue "
                         "(finished rows are kept and not sent again)")
        if self.error and self.dry_run:
            steps.append(f"exit 1: {self.error} {'row' if self.error == 1 else 'rows'} would fail; the list above says why")
        if self.error and not self.dry_run and self.output:
            again = "a rerun tries them again" if self.retry_errors else "--retry-errors tries them again"
            steps.append(f"{self.error} {'row' if self.error == 1 else 'rows'} failed ({again}): see them with `pipeline status {self.output}` "
                         f"or `pipeline report {self.output}`")
        return steps


def summarize_run(
    config: JobConfig,
    manifest: Manifest,
    progress: Progress,
    *,
    aborted: str | None = None,
    stopped_by: str | None = None,
    dry_run: bool = False,
    budget: str | None = None,
    batches: str | None = None,
) -> RunSummary:
    c: Counters = progress.counters
    if aborted:
        code = EXIT_ABORTED
    elif stopped_by:
        code = {"SIGTERM": EXIT_SIGTERM, "SIGINT": EXIT_SIGINT, "max-cost": EXIT_BUDGET}[stopped_by]
    else:
        code = EXIT_ROWS_FAILED if c.error else EXIT_OK
    return RunSummary(
        output=config.output,
        rows=c.done,
        ok=c.ok,
        error=c.error,
        skipped=c.skipped,
        requests=c.requests,
        retries=c.retries,
        prompt_tokens=c.prompt_tokens,
        completion_tokens=c.completion_tokens,
        cost_usd=None if progress.unpriced else round(c.cost_usd, 6),
        duplicates=manifest.stats.duplicates,
        reused=c.reused,
        seconds=progress.elapsed,
        exit_code=code,
        error_types=dict(c.error_types),
        aborted=aborted,
        stopped_by=stopped_by,
        dry_run=dry_run,
        rate_limited=c.rate_limited,
        left=c.left,
        left_exact=c.total is not None,
        unpriced=progress.unpriced,
        budget=budget,
        retry_errors=config.retry_errors,
        skipped_files=manifest.skipped_files,
        batches=batches,
    )


def run_record(config: JobConfig, summary: RunSummary | None, started_at: float, **outcome: Any) -> dict[str, Any]:
    """One line of <output>.runs.jsonl; a run that ended on an error has no summary, only its exit code and why."""
    utc = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    record = {
        "run_id": uuid.uuid4().hex[:12],
        "started_at": utc(started_at),
        "ended_at": utc(time.time()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "options": config.public_options(),
        **({k: v for k, v in asdict(summary).items() if k not in ("output", "dry_run", "retry_errors", "unpriced")} if summary else {}),
        **({"total_tokens": summary.total_tokens} if summary else {}),
        **outcome,
    }
    return json.loads(config.redact(json.dumps(record, default=str)))
