"""The same job on Ray Data: `--engine ray` (run_on_ray), and `caption_dataset` for Ray pipelines of your own.

The driver hands Ray the rows left after resume, a window at a time (so its memory does not grow with
the manifest), and writes what comes back through the run's own journal and writer, so output, resume
and exit codes are the local engine's. The work happens in Captioner actors (ray_actor); the limits
that hold for the whole cluster (--rpm, --tpm, the adaptive control, --max-cost) and the stop are
kept by one LimitKeeper actor per run (ray_limits).
Ray is imported only here, and this module only with `--engine ray`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import threading
from typing import Any, Iterable

import pyarrow as pa

from .config import JobConfig
from .cost import budget_note
from .errors import ConfigError
from .merge import rows_to_table
from .structured import answer_schema
from .pool import StopRequest
from .progress import Progress
from .ray_actor import Captioner, manifest_items
from .ray_limits import LimitKeeper
from .records import ManifestRow

log = logging.getLogger("pipeline")

WINDOW_ROWS = 100_000  # manifest rows per Ray dataset: what the driver holds at a time
CALLS_PER_ACTOR = 4  # batches an actor works on at once: while one waits for its slowest answer, the others go on
POLL_SECONDS = 0.5  # how often the driver asks the keeper how things stand


def _ray() -> Any:
    from . import nopandas

    nopandas.remove()  # Ray Data needs pandas
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'pipeline[ray]' (or ray[data])") from None
    return ray


def start_keeper(config: JobConfig) -> Any:
    """The run's LimitKeeper actor (no CPU of its own: it only counts)."""
    ray = _ray()
    return ray.remote(LimitKeeper).options(num_cpus=0).remote(config.rpm, config.tpm, config.max_cost)


def _actors(ray: Any, config: JobConfig) -> int:
    return max(1, min(int(ray.cluster_resources().get("CPU", 1)), config.concurrency))


def batch_rows(config: JobConfig, actors: int) -> int:
    """Rows per batch (and block, and Ray task): an actor's requests in flight. Smaller batches cost more in Ray's
    per-task overhead than they save (measured: 8 rows a batch ran at 0.6x the speed of 32); an actor that dies
    loses the answers of its batches under way, which Ray's task retry asks again."""
    return max(1, math.ceil(config.concurrency / actors))


def caption_json(ds: Any, config: JobConfig, keeper: Any) -> Any:
    """A Dataset of manifest items -> one of output rows as JSON text (column `row`), one per item started."""
    ray = _ray()
    actors = _actors(ray, config)
    per_actor = max(1, config.concurrency // actors)
    batch = batch_rows(config, actors)
    pool = ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=2 * CALLS_PER_ACTOR,
                                      max_concurrent_calls_per_actor=CALLS_PER_ACTOR, enable_true_multi_threading=True)
    return ds.map_batches(Captioner, fn_constructor_args=(config, per_actor, keeper), compute=pool,
                          batch_size=batch, batch_format="pyarrow", num_cpus=0.5,
                          scheduling_strategy="SPREAD")  # over the nodes: each has its own network and CPU for images


def caption_dataset(ds: Any, config: JobConfig) -> Any:
    """For Ray pipelines of your own: a Dataset of manifest rows (id, image, and optional prompt) -> output rows,
    with the local engine's columns and types, under the job's limits. Nothing is written and nothing is
    resumed: that is the caller's."""

    def items(batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        return pa.Table.from_pylist(list(manifest_items(
            ManifestRow(i, str(r.get("id") or r["image"]), r["image"], r.get("source") or r["image"], r.get("prompt")) for i, r in enumerate(rows, 1))))

    answers = answer_schema(config)

    def columns(batch: pa.Table) -> pa.Table:
        return rows_to_table([json.loads(text) for text in batch.column("row").to_pylist()], answers.arrow if answers else None)

    return caption_json(ds.map_batches(items, batch_format="pyarrow"), config, start_keeper(config)).map_batches(columns, batch_format="pyarrow")


class _Watch:
    """A thread that keeps the driver and the keeper in step: the keeper's counts and holds go to the
    progress display, a signal the runner caught goes to the keeper, and a stop the keeper heard goes to the run."""

    def __init__(self, ray: Any, keeper: Any, progress: Progress, stop: StopRequest):
        self.ray, self.keeper, self.progress, self.stop = ray, keeper, progress, stop
        self.state: dict[str, Any] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-watch", daemon=True)
        progress.watch(lambda: self.state.get("holding"))
        self._thread.start()

    def _run(self) -> None:
        while not self._done.wait(POLL_SECONDS):
            self.poll()

    def poll(self) -> None:
        if self.stop.reason and not self.state.get("stopped"):
            self.keeper.stop.remote(self.stop.reason)
        self.state = self.ray.get(self.keeper.state.remote())
        self.progress.counters.rate_limited = self.state["rate_limited"]
        stopped = self.state["stopped"]
        if stopped and stopped[0] == "max-cost" and self.stop.reason is None:
            self.stop("max-cost")

    def close(self) -> dict[str, Any]:
        self._done.set()
        self._thread.join()
        self.poll()
        return self.state


def run_on_ray(rows: Iterable[ManifestRow], config: JobConfig, writer: Any, progress: Progress,
               stop: StopRequest) -> tuple[str | None, str | None]:
    """The driver: rows to Ray, every row back through the run's writer and progress. (why it aborted, the --max-cost note)"""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=config.ray_address or None, include_dashboard=False, log_to_driver=False)
    keeper = start_keeper(config)
    watch = _Watch(ray, keeper, progress, stop)
    items = manifest_items(rows)
    try:
        while not (stop.reason or watch.state.get("stopped")):
            window = list(itertools.islice(items, WINDOW_ROWS))
            if not window or not _write_results(ray, window, config, keeper, writer, progress, stop):
                break
    finally:
        state = watch.close()
        ray.kill(keeper)
    reason, detail = state["stopped"] or (None, None)
    if reason == "aborted":
        log.error("%s", detail)
        return detail, None
    if reason == "max-cost":
        return None, budget_note(config.max_cost, progress.counters.cost_usd, 0.0, detail or 0.0, config.max_tokens)
    return None, None


def _write_results(ray: Any, window: list[dict[str, Any]], config: JobConfig, keeper: Any, writer: Any,
                   progress: Progress, stop: StopRequest) -> bool:
    """One window through the cluster; False when the run is to stop at once (a second Ctrl-C)."""
    # A block a batch: a task is one batch, so that an actor's batches run at once (from_items would make one block).
    blocks = math.ceil(len(window) / batch_rows(config, _actors(ray, config)))
    out = caption_json(ray.data.from_items(window, override_num_blocks=blocks), config, keeper)
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        for text in batch.column("row").to_pylist():
            row = json.loads(text)
            writer.write(row)
            attempts = row.get("attempts") or 0  # made in an actor: counted here, for the bar and the summary
            progress.counters.requests += attempts
            progress.counters.rows_sent += attempts > 0
            progress.record(row)
        if stop.now.is_set():
            return False
    return True
