"""What happens to one row: load its image and build its request (prepare), then send it within the
budget, with retries, and write its result (send). The worker pool calls these two; nothing else here."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

from .client import ChatClient
from .config import JobConfig
from .dedupe import Dedupe
from .cost import Budget, budget_note, load_price, row_cost, worst_case_cost
from .errors import AnswerError, APIError, ImageError, ManifestRowError, PipelineError
from .estimate import estimate_request_tokens
from .failures import FailureWatch
from .images import ImageLoader
from .pool import StopRequest
from .progress import Progress
from .records import ManifestRow, PreparedImage
from .request import encode_chat_request
from .results import OutputRow, error_row, ok_row
from .resume import fingerprinter
from .retry import RetryPolicy
from .structured import InvalidOutputError, answer_schema
from .usage import billed_usage
from .writer import ResultWriter


def _plus(total: float | None, cost: float | None) -> float | None:
    return cost if total is None else total + (cost or 0.0)


@dataclass(slots=True)
class ReadyRequest:
    """A row whose request is built and waiting to be sent."""

    row: ManifestRow
    image: PreparedImage
    body: bytes
    tokens: int  # estimated, for a tokens-per-minute limit
    fingerprint: str


class CaptionJob:
    """What happens to one row: load the image, send it (with retries), write the result."""

    def __init__(self, config: JobConfig, images: ImageLoader, client: ChatClient | None, writer: ResultWriter, progress: Progress,
                 stop: StopRequest, *, encode: Callable[[ManifestRow, str, str | bytes], bytes] | None = None,
                 dedupe: Dedupe | None = None):
        """`encode(row, prompt, image_url)`: the request's bytes (default: the chat request body; the batch backend
        makes it a batch line). Without a client, the job only prepares. `dedupe`: rows whose image and settings
        another row has are held there instead of sent."""
        self.config = config
        self.encode = encode or (lambda row, prompt, image_url: encode_chat_request(config, prompt, image_url))
        self.images = images
        self.client = client
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.retry = RetryPolicy(max_retries=config.max_retries)
        self.fingerprint = fingerprinter(config)
        self.failures = FailureWatch(config.max_consecutive_failures)
        self.price = load_price(config.prices, config.model)
        self.budget = Budget(config.max_cost)
        self.refused: float | None = None  # the worst case of a request --max-cost did not let go
        self.answers = answer_schema(config)  # with --schema: the answer must be JSON that follows it
        self.dedupe = dedupe

    def budget_note(self) -> str | None:
        """At --max-cost: the cap, what was spent (and is in flight), and what the next request could cost."""
        if self.refused is None:
            return None
        return budget_note(self.config.max_cost, self.budget.spent, self.budget.reserved, self.refused, self.config.max_tokens)

    async def prepare(self, row: ManifestRow) -> ReadyRequest | None:
        """Load the row's image and build its request; a row that fails here is finished (None)."""
        prompt = row.prompt or self.config.prompt
        fingerprint = self.fingerprint(prompt)
        if row.problem:
            self._finish(*self._failed(row, ManifestRowError(row.problem), fingerprint))
            return None
        try:
            image = await self.images.load(row)
        except ImageError as e:
            self._finish(*self._failed(row, e, fingerprint))
            return None
        if self.dedupe is not None and self.dedupe.hold(row, dataclasses.replace(image, url=b""), fingerprint):
            return None  # answered by the row with the same image: written when the run's requests are done
        if self.answers is not None:
            prompt = self.answers.instruct(prompt)
        body = self.encode(row, prompt, image.url)
        tokens = estimate_request_tokens(self.config, image, prompt)
        # The body holds the image now; keeping its data: URL too would hold every waiting image twice.
        return ReadyRequest(row, dataclasses.replace(image, url=b""), body, tokens, fingerprint)

    async def send(self, ready: ReadyRequest) -> None:
        """Send a prepared row (with retries) within the cost budget, and write its result."""
        worst_case = worst_case_cost(self.price, ready.tokens, self.config.max_tokens)
        if not self.budget.reserve(worst_case):  # not sent: the next run takes it
            self.refused = max(self.refused or 0.0, worst_case)
            self.stop("max-cost", f" ({self.budget_note()})")
            return
        reserved = [worst_case]  # one worst case per time the row is asked (an invalid answer asks again)
        try:
            result, error = await self._send(ready, reserved)
        except BaseException:
            self.budget.settle(sum(reserved), sum(reserved))  # cancelled in flight: it may still be billed
            raise
        self.budget.settle(sum(reserved), result["cost_usd"] or 0.0)
        self._finish(result, error)

    def _finish(self, result: OutputRow, error: PipelineError | None) -> None:
        self.writer.write(result)
        self.progress.record(result)
        self.failures.check(error, result["error"] or "")

    async def _send(self, ready: ReadyRequest, reserved: list[float]) -> tuple[OutputRow, PipelineError | None]:
        row, image, fingerprint = ready.row, ready.image, ready.fingerprint
        attempts = 0
        started = time.monotonic()
        spent: float | None = None  # what every answer so far was billed, an invalid one too

        async def attempt():
            nonlocal attempts, started
            attempts += 1
            started = time.monotonic()
            self.progress.attempt_started(first=attempts == 1)
            try:
                return await self.client.complete(ready.body, stream=self.config.stream, tokens=ready.tokens)
            except Exception as e:
                self.progress.attempt_failed(getattr(e, "status", None))
                raise

        invalid: InvalidOutputError | None = None
        for ask in range(1 + (self.config.max_invalid if self.answers is not None else 0)):
            if ask and not self.budget.reserve(reserved[0]):
                break  # --max-cost has no room to ask again: the invalid answer is the row's
            reserved += [reserved[0]] if ask else []
            try:
                completion = await self.retry.run(attempt)
            except APIError as e:
                self.progress.gave_up()
                # An empty answer or a refusal was billed: its row keeps the tokens and their cost.
                cost = _plus(spent, self._cost(e.usage)) if isinstance(e, AnswerError) else spent
                return self._failed(row, e, fingerprint, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000,
                                    cost_usd=cost, image=image)
            latency_ms = (time.monotonic() - started) * 1000
            spent = _plus(spent, self._cost(completion.usage))
            try:
                columns = self.answers.read(completion) if self.answers is not None else None
            except InvalidOutputError as e:
                invalid = e
                continue
            return ok_row(row, image, completion, attempts=attempts, latency_ms=latency_ms, fingerprint=fingerprint,
                          cost_usd=spent, columns=columns), None
        self.progress.gave_up()
        return self._failed(row, invalid, fingerprint, attempts=attempts, latency_ms=latency_ms, cost_usd=spent, image=image)

    def _cost(self, usage: dict[str, Any]) -> float | None:
        return row_cost(self.price, billed_usage(usage))

    def _failed(self, row: ManifestRow, error: PipelineError, fingerprint: str, **kwargs: Any) -> tuple[OutputRow, PipelineError]:
        message = self.config.redact(str(error))
        columns = dict.fromkeys(self.answers.columns.values()) if self.answers is not None else None
        return error_row(row, error, message=message, model=self.config.model, fingerprint=fingerprint, columns=columns, **kwargs), error
