"""The command line: a thin layer over config.load_config and runner.run_job.

Exit codes (also in the README):
  0  every row ok          1  finished, some rows failed (they are in the output)
  2  usage or configuration error        3  aborted (auth, quota, too many failures in a row)
  4  stopped at --max-cost               70 internal error (a bug: please report it with PIPELINE_DEBUG=1 output)
  74 the output could not be written (full disk, read-only folder)
  75 another run holds the output's lock  130 / 143 stopped by Ctrl-C / SIGTERM
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib
import logging
import os
import sys
import traceback
from functools import partial

from . import __version__
from .config import JobConfig, load_config
from .errors import EXIT_INTERNAL, EXIT_SIGINT, ConfigError, ManifestError, OutputLocked, OutputWriteError, exit_code_for
from .logs import redact_in_logs, setup_logging
from .options import Option, declared, flag_of, kind_of

log = logging.getLogger("pipeline")

D = JobConfig()  # built-in defaults, shown in --help
SUBPROGRAMS = {"simulate": ".simulator", "report": ".report", "status": ".status", "export": ".export", "compact": ".compact", "batch": ".batch.cli"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Caption images with an OpenAI-compatible vision API and write the results to Parquet.",
    )
    parser.add_argument("--version", action="version", version=f"pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "caption",
        help="caption every image in a manifest",
        description="Caption every image in a manifest; one Parquet row per image. "
        "Precedence: flag > environment variable > job file > built-in default.",
        epilog="exit codes: 0 all rows ok; 1 some rows failed (they are in the output); "
        "2 usage or configuration error; 3 aborted (authentication, credits, quota, a broken setup or too many failures in a row); "
        "4 stopped at --max-cost; 74 the output could not be written (full disk, read-only folder); "
        "75 another run holds the output; 130 stopped by Ctrl-C; 143 stopped by SIGTERM. "
        "A rerun of the same command continues where the last one stopped.",
    )
    c.add_argument("manifest", nargs="?", help=JobConfig.__dataclass_fields__["manifest"].metadata["option"].help)
    c.add_argument("--job", metavar="FILE", help="TOML job file that can set any option below, manifest and output included")
    for field, opt in declared(JobConfig):
        add_option(c, field, opt)
    c.set_defaults(func=_caption)

    commands.add_parser("status", help="how far an output is: counts, errors, cost, last runs, rows left (see: status --help)", add_help=False)
    commands.add_parser("export", help="an output's rows as CSV or JSON lines (see: export --help)", add_help=False)
    commands.add_parser("compact", help="rewrite a dataset output into N parts of one row per id (see: compact --help)", add_help=False)
    commands.add_parser("batch", help="an output's provider batches: status, cancel, export, import (see: batch --help)", add_help=False)
    commands.add_parser("report", help="write a self-contained HTML review page for an output (see: report --help)", add_help=False)
    commands.add_parser("simulate", help="serve the bundled OpenAI-compatible simulator (see: simulate --help)", add_help=False)
    d = commands.add_parser("demo", help="run the job on sample_data/ against the simulator on loopback (no key, no network)")
    d.add_argument("-o", "--output", default="output/demo.parquet", help="where to write the demo's output")
    d.set_defaults(func=_demo)
    return parser


def add_option(parser: argparse.ArgumentParser, field: dataclasses.Field, opt: Option) -> None:
    """One flag from its declaration (options.py); None means not given, so lower layers can decide."""
    flag = flag_of(field, opt)
    if flag is None:
        return
    names = [opt.short, flag] if opt.short else [flag]
    default = getattr(D, field.name)
    help_text = opt.help + (f"; env {opt.env}" if opt.env else "")
    if opt.show_default and default is not None and "(default" not in opt.help:
        help_text += f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
    if kind_of(field) is bool:
        action = "store_false" if flag.startswith("--no-") else "store_true"
        parser.add_argument(*names, dest=field.name, action=action, default=None, help=help_text)
    else:
        kind = kind_of(field)
        parser.add_argument(*names, dest=field.name, type=kind if kind in (int, float) else str, metavar=None if opt.choices else opt.metavar,
                            choices=opt.choices, help=help_text)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SUBPROGRAMS:  # commands with their own parser, imported only when used
        command = partial(_subprogram, argv[0], argv[1:])
    else:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _refuse_unknown(parser, args, unknown)
        setup_logging(getattr(args, "log_format", None) or os.environ.get("CAPTION_LOG_FORMAT"))
        command = partial(args.func, args)
    try:
        return command()
    except (ConfigError, ManifestError, OutputLocked, OutputWriteError) as e:
        log.error("error: %s", e)
        return exit_code_for(e)
    except KeyboardInterrupt:  # before the run took over Ctrl-C (while starting up)
        log.error("interrupted")
        return EXIT_SIGINT
    except Exception as e:  # a bug: say so plainly, show the traceback only on request
        if os.environ.get("PIPELINE_DEBUG"):
            traceback.print_exc()
        log.error("internal error: %s: %s (rerun with PIPELINE_DEBUG=1 for details, and report it)", type(e).__name__, e)
        return EXIT_INTERNAL


def _subprogram(name: str, argv: list[str]) -> int:
    return importlib.import_module(SUBPROGRAMS[name], __package__).main(argv)


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> None:
    """Unknown arguments, under the subcommand's own usage, with the flag that was probably meant (exit 2)."""
    command = parser._subparsers._group_actions[0].choices[args.command]  # type: ignore[union-attr]
    known = [flag for action in command._actions for flag in action.option_strings]
    words = []
    for arg in unknown:
        guess = difflib.get_close_matches(arg.split("=")[0], known, n=1, cutoff=0.6) if arg.startswith("-") else []
        words.append(f"{arg} (did you mean {guess[0]}?)" if guess else arg)
    command.error("unrecognized arguments: " + " ".join(words))


def _caption(args: argparse.Namespace) -> int:
    from .runner import run_job

    flags = {field.name: getattr(args, field.name) for field, opt in declared(JobConfig) if field.name == "manifest" or flag_of(field, opt)}
    config = load_config(flags, job_file=args.job)
    if config.api_key:
        redact_in_logs(config.api_key.reveal())
    if config.log_format and config.log_format != args.log_format:
        setup_logging(config.log_format)  # the job file chose
    summary = run_job(config)
    log.info("%s", summary.line(), extra={"summary": {k: v for k, v in summary.__dict__.items() if k != "output"}})
    return summary.exit_code


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.output)

