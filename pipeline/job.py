"""What happens to one row: load its image and build its request (prepare), then send it within the
budget, with retries, and write its result (send). The worker pool calls these two; nothing else here."""

from __future__ import annotations

import asyncio
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
from .structured import AnswerSchema, InvalidOutputError, answer_schema
from .tasks import task_configs
from .usage import billed_usage
from .writer import ResultWriter


def _plus(total: float | None, cost: float | None) -> float | None:
    return cost if total is None else total + (cost or 0.0)


@dataclass(frozen=True, slots=True)
class Task:
    """One question asked of every image: its settings, its fingerprint and the schema its answer follows."""

    config: JobConfig
    fingerprint: Callable[[str], str]
    answers: AnswerSchema | None


@dataclass(slots=True)
class ReadyRequest:
    """A row whose request is built and waiting to be sent."""

    row: ManifestRow
    image: PreparedImage
    body: bytes
    tokens: int  # estimated, for a tokens-per-minute limit
    fingerprint: str
    task: Task


class CaptionJob:
    """What happens to one row: load the image, send it (with retries), write the result."""

    def __init__(self, config: JobConfig, images: ImageLoader, client: ChatClient | None, writer: ResultWriter, progress: Progress,
                 stop: StopRequest, *, encode: Callable[[JobConfig, ManifestRow, str, str | bytes], bytes] | None = None,
                 dedupe: Dedupe | None = None):
        """`encode(task config, row, prompt, image_url)`: the request's bytes (default: the chat request body; the
        batch backend makes it a batch line). Without a client, the job only prepares. `dedupe`: rows whose image
        and settings another row has are held there instead of sent."""
        self.config = config
        self.encode = encode or (lambda task, row, prompt, image_url: encode_chat_request(task, prompt, image_url))
        self.images = images
        self.client = client
        self.writer = writer
        self.progress = progress
        self.stop = stop
        self.retry = RetryPolicy(max_retries=config.max_retries)
        self.tasks = {name: Task(task, fingerprinter(task), answer_schema(task)) for name, task in task_configs(config).items()}
        self._loading: dict[str, list] = {}  # id -> [its image loading, rows (tasks) yet to take it]
        # One watch per task: a task whose settings fail every row stops the run even while another task's rows succeed.
        self.failures = {name: FailureWatch(config.max_consecutive_failures) for name in self.tasks}
        self.price = load_price(config.prices, config.model)
        self.budget = Budget(config.max_cost)
        self.refused: float | None = None  # the worst case of a request --max-cost did not let go
        self.dedupe = dedupe

    def budget_note(self) -> str | None:
        """At --max-cost: the cap, what was spent (and is in flight), and what the next request could cost."""
        if self.refused is None:
            return None
        return budget_note(self.config.max_cost, self.budget.spent, self.budget.reserved, self.refused, self.config.max_tokens)

    async def prepare(self, row: ManifestRow) -> ReadyRequest | None:
        """Load the row's image and build its request; a row that fails here is finished (None)."""
        task = self.tasks[row.task]
        prompt = row.prompt or task.config.prompt
        fingerprint = task.fingerprint(prompt)
        if row.problem:
            self._finish(*self._failed(row, task, ManifestRowError(row.problem), fingerprint))
            return None
        try:
            image = await self._load(row)
        except ImageError as e:
            self._finish(*self._failed(row, task, e, fingerprint))
            return None
        if self.dedupe is not None and self.dedupe.hold(row, dataclasses.replace(image, url=b""), fingerprint):
            return None  # answered by the row with the same image: written when the run's requests are done
        if task.answers is not None:
            prompt = task.answers.instruct(prompt)
        body = self.encode(task.config, row, prompt, image.url)
        tokens = estimate_request_tokens(task.config, image, prompt)
        # The body holds the image now; keeping its data: URL too would hold every waiting image twice.
        return ReadyRequest(row, dataclasses.replace(image, url=b""), body, tokens, fingerprint, task)

    async def _load(self, row: ManifestRow) -> PreparedImage:
        """The row's image; the rows of one manifest row's tasks (next to each other in the queue) share one load."""
        if row.share == 1:
            return await self.images.load(row)
        loading = self._loading.get(row.id)
        if loading is None:
            loading = self._loading[row.id] = [asyncio.ensure_future(self.images.load(row)), row.share]
        loading[1] -= 1
        if not loading[1]:
            del self._loading[row.id]
        return await asyncio.shield(loading[0])  # one task's row cancelled is not the others' load cancelled

    async def send(self, ready: ReadyRequest) -> None:
        """Send a prepared row (with retries) within the cost budget, and write its result."""
        worst_case = worst_case_cost(self.price, ready.tokens, ready.task.config.max_tokens)
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
        self.failures[result["task"]].check(error, result["error"] or "")

    async def _send(self, ready: ReadyRequest, reserved: list[float]) -> tuple[OutputRow, PipelineError | None]:
        row, image, fingerprint, answers = ready.row, ready.image, ready.fingerprint, ready.task.answers
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
        for ask in range(1 + (self.config.max_invalid if answers is not None else 0)):
            if ask and not self.budget.reserve(reserved[0]):
                break  # --max-cost has no room to ask again: the invalid answer is the row's
            reserved += [reserved[0]] if ask else []
            try:
                completion = await self.retry.run(attempt)
            except APIError as e:
                self.progress.gave_up()
                # An empty answer or a refusal was billed: its row keeps the tokens and their cost.
                cost = _plus(spent, self._cost(e.usage)) if isinstance(e, AnswerError) else spent
                return self._failed(row, ready.task, e, fingerprint, attempts=attempts, latency_ms=(time.monotonic() - started) * 1000,
                                    cost_usd=cost, image=image)
            latency_ms = (time.monotonic() - started) * 1000
            spent = _plus(spent, self._cost(completion.usage))
            try:
                columns = answers.read(completion) if answers is not None else None
            except InvalidOutputError as e:
                invalid = e
                continue
            return ok_row(row, image, completion, attempts=attempts, latency_ms=latency_ms, fingerprint=fingerprint,
                          cost_usd=spent, columns=columns), None
        self.progress.gave_up()
        return self._failed(row, ready.task, invalid, fingerprint, attempts=attempts, latency_ms=latency_ms, cost_usd=spent, image=image)

    def _cost(self, usage: dict[str, Any]) -> float | None:
        return row_cost(self.price, billed_usage(usage))

    def _failed(self, row: ManifestRow, task: Task, error: PipelineError, fingerprint: str, **kwargs: Any) -> tuple[OutputRow, PipelineError]:
        message = self.config.redact(str(error))
        columns = dict.fromkeys(task.answers.columns.values()) if task.answers is not None else None
        return error_row(row, error, message=message, model=self.config.model, fingerprint=fingerprint, columns=columns, **kwargs), error
