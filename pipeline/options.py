"""Every job option, declared once: its flag, help, environment variable and whether it joins the fingerprint.

JobConfig's fields carry the declaration (`option(...)` puts an `Option` in the field's metadata), so the
name, type and default are the dataclass's own. From it come the command line's flags (cli.py), the keys a
job file may set, the environment variables (config.py), the request fingerprint (resume.py) and
jobs/default.toml (`default_job_toml`, checked by a test); a test also checks the README's table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

ALWAYS, IF_CHANGED = "always", "if-changed"


@dataclass(frozen=True)
class Option:
    help: str
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    env: str | None = None  # an environment variable that may set it
    # Joins the request fingerprint: ALWAYS, or IF_CHANGED (a setting added after outputs existed: only when
    # it differs from its default, so that those outputs keep their fingerprints).
    fingerprint: str | None = None
    flag: str | None = ""  # "" : --<name with dashes>; None: job file only; "--no-x": a switch that turns it off
    short: str | None = None
    show_default: bool = True


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING, **declared: Any) -> Any:
    """A JobConfig field with its declaration."""
    meta = {"option": Option(help, **declared)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(cls: type) -> list[tuple[dataclasses.Field, Option]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def flag_of(field: dataclasses.Field, opt: Option) -> str | None:
    if opt.flag is None:
        return None
    return opt.flag or "--" + field.name.replace("_", "-")


def kind_of(field: dataclasses.Field) -> type:
    """bool, int, float or str, from the annotation (a string, with `from __future__ import annotations`)."""
    annotation = str(field.type)
    for kind in (bool, int, float):
        if annotation.split(" | ")[0] == kind.__name__:
            return kind
    return str


def default_job_toml(cls: type) -> str:
    """jobs/default.toml: every option a job file may set, with its default and what it does."""
    lines = [
        "# Every option a job file may set, with its built-in default (generated from pipeline/options.py; a test",
        "# checks it). Copy this file, uncomment and edit what you need, and run:",
        "#   pipeline caption --job my-job.toml      (or: make caption JOB=my-job.toml)",
        "# Precedence: command-line flag > environment variable > this file > built-in default.",
        "# Relative paths are relative to the job file's folder, so the job runs the same from any directory (cron).",
        "# The API key never goes in a file: api_key_env names the environment variable that holds it.",
        "",
        '# manifest = "../data/manifest.csv"      # CSV, JSONL, Parquet, .txt, or a folder of images',
        '# output = "../output/captions.parquet"  # default: output/<manifest name>.parquet',
    ]
    for field, opt in declared(cls):
        if field.name in ("manifest", "output"):
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if isinstance(default, dict):
            lines.append(f"# [{field.name}]  # {opt.help}")
            continue
        value = "(not set)" if default is None else "(the shipped file)" if isinstance(default, PurePath) else _toml(default)
        lines.append(f"# {field.name} = {value}  # {opt.help}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
