"""Several tasks per image: `[tasks.NAME]` tables in the job file, each asking its own question of every image.

A task is the job's configuration with the task's prompt, system, max_tokens, temperature and schema (each
defaulting to the job's), and its name, which joins the fingerprint. A manifest row becomes one row per task
left to do (`TaskRows`), all sharing one prepared image (job.py), and each becomes one output row with a
`task` column: resume, dedupe and newest-row-wins go by (id, task) (rowkey.py). A job without tasks is the
single task None, whose rows have no task, as before.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any, Callable, Iterator

import pyarrow as pa

from .config import JobConfig
from .errors import ConfigError
from .records import ManifestRow
from .resume import ResumeIndex, fingerprinter

TASK_OPTIONS = ("prompt", "system", "max_tokens", "temperature", "schema")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_task_tables(tasks: Any, check: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The job file's [tasks.NAME] tables, each checked like the job's own options (`check`)."""
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        raise ConfigError('tasks must be tables in the job file, one per task: [tasks.short] prompt = "..."')
    checked = {}
    for name, table in tasks.items():
        if not _NAME.match(name):
            raise ConfigError(f"task name {name!r}: use letters, digits, - and _ (at most 64)")
        unknown = set(table) - set(TASK_OPTIONS)
        if unknown:
            raise ConfigError(f"[tasks.{name}]: unknown option(s) {', '.join(sorted(unknown))}; a task may set {', '.join(TASK_OPTIONS)}")
        try:
            checked[name] = {option: value for option, value in check(dict(table)).items() if option in table}
        except ConfigError as e:
            raise ConfigError(f"[tasks.{name}]: {e}") from None
    return checked


def task_configs(config: JobConfig) -> dict[str | None, JobConfig]:
    """Each task's configuration by name; {None: config} for a job without tasks."""
    if not config.tasks:
        return {None: config}
    return {name: dataclasses.replace(config, **table, tasks={}, task=name) for name, table in config.tasks.items()}


def answer_columns(*configs: JobConfig) -> pa.Schema | None:
    """The typed columns of every task's structured answer, together, for one job or several (None: no schema).

    Two tasks may share a column only with one type: the output is one table."""
    from .structured import answer_schema

    fields: dict[str, pa.Field] = {}
    for name, task in ((name, task) for config in configs for name, task in task_configs(config).items()):
        answers = answer_schema(task)
        for field in answers.arrow if answers is not None else ():
            if field.name in fields and fields[field.name].type != field.type:
                raise ConfigError(f"tasks give the column {field.name!r} two types ({fields[field.name].type} and {field.type}, "
                                  f"in [tasks.{name}]): rename the property in one of the schemas")
            fields[field.name] = field
    return pa.schema(list(fields.values())) if fields else None


def check_tasks(config: JobConfig) -> None:
    """What a job with tasks cannot do, said before anything is sent."""
    answer_columns(config)  # two tasks' schemas that give one column two types


class TaskRows:
    """Which tasks of each manifest row are left to do, and the rows the workers get: one per task left."""

    def __init__(self, config: JobConfig, index: ResumeIndex | None):
        self.configs = task_configs(config)
        self.names = tuple(self.configs)
        self._prompt = config.prompt
        self._fingerprints = {name: fingerprinter(task) for name, task in self.configs.items()}
        self._index = index if index is not None and index.rows_in_output else None  # None: nothing is done yet

    def left(self, row_id: str, prompt: str | None, source: str) -> tuple[str | None, ...]:
        """The tasks the output has no answer for (a row's own prompt applies to a job without tasks only)."""
        if self._index is None:
            return self.names
        return tuple(name for name in self.names
                     if not self._index.is_done(row_id, self._fingerprints[name](self.configs[name].prompt if name else prompt or self._prompt),
                                                source, name))

    def rows_to_do(self, rows_of: Callable[..., Iterator[ManifestRow]], limit: int | None,
                   done: Callable[[int], None] = lambda n: None) -> Iterator[ManifestRow]:
        """The rows to do from `rows_of(skip=...)` (a manifest's reader), at most `limit` manifest rows of them,
        each once per task left; `done(n)` hears of every row read, with how many of its tasks are done."""
        if limit == 0:
            return
        if self.names == (None,):  # no tasks: one question per row (the nightly resume's path, kept lean)
            yield from itertools.islice(rows_of(skip=self._skip_done(done) if self._index is not None else None), limit)
            return
        last: tuple[str | None, tuple[str | None, ...]] = (None, self.names)

        def skip(row_id: str, prompt: str | None, source: str) -> bool:
            nonlocal last
            left = self.left(row_id, prompt, source)
            done(len(self.names) - len(left))
            last = (row_id, left)
            return not left

        for count, row in enumerate(rows_of(skip=skip if self._index is not None else None), 1):
            left = last[1] if last[0] == row.id else self.names  # skip() was asked about this row just before it came
            for name in left:
                yield dataclasses.replace(row, prompt=None, task=name, share=len(left))
            if count == limit:
                return

    def _skip_done(self, done: Callable[[int], None]) -> Callable[[str, str | None, str], bool]:
        index, fingerprint, default = self._index, self._fingerprints[None], self._prompt

        def skip(row_id: str, prompt: str | None, source: str) -> bool:
            finished = index.is_done(row_id, fingerprint(prompt or default), source)
            done(finished)
            return finished

        return skip
