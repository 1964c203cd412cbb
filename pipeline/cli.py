"""The command line: a thin layer over config.load_config and runner.run_job.

Exit codes (also in the README):
  0  every row ok          1  finished, some rows failed (they are in the output)
  2  usage or configuration error        3  aborted (authentication failure)
  70 internal error (a bug: please report it with PIPELINE_DEBUG=1 output)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from . import __version__
from .config import DEFAULT_API_KEY_ENV, FALLBACK_API_KEY_ENV, JobConfig, load_config
from .errors import EXIT_USAGE, ConfigError, ManifestError

EXIT_INTERRUPTED = 130
EXIT_INTERNAL = 70

D = JobConfig()  # built-in defaults, shown in --help


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
        "2 usage or configuration error; 3 aborted (authentication failure).",
    )
    c.add_argument("manifest", nargs="?", help="CSV, JSONL, Parquet, .txt (one image per line) or a folder of images")
    c.add_argument("-o", "--output", help="Parquet file to write (default: output/<manifest name>.parquet)")
    c.add_argument("--job", metavar="FILE", help="TOML job file that can set any option below, manifest and output included")
    c.add_argument("--base-url", metavar="URL", help=f"the provider's OpenAI-compatible API root; env CAPTION_BASE_URL (default {D.base_url})")
    c.add_argument("--model", metavar="NAME", help=f"model to ask; env CAPTION_MODEL (default {D.model})")
    c.add_argument(
        "--api-key-env",
        metavar="NAME",
        help=f"environment variable that holds the API key (default {DEFAULT_API_KEY_ENV}, falling back to {FALLBACK_API_KEY_ENV})",
    )
    c.add_argument("--prompt", metavar="TEXT", help="instruction sent with every image unless the manifest row has its own prompt")
    c.add_argument("--system", metavar="TEXT", help="system message sent before the image (default: none)")
    c.add_argument("--max-tokens", type=int, metavar="N", help=f"longest caption, in tokens (default {D.max_tokens})")
    c.add_argument("--temperature", type=float, metavar="X", help="sampling temperature, 0 to 2 (default: the provider's)")
    c.add_argument("--concurrency", type=int, metavar="N", help=f"most requests in flight at once (default {D.concurrency})")
    c.add_argument("--max-retries", type=int, metavar="N", help=f"retries per image after a transient failure (default {D.max_retries})")
    c.add_argument("--timeout", type=float, metavar="SECONDS", help=f"give up on one attempt after this long (default {D.timeout:g})")
    c.add_argument("--limit", type=int, metavar="N", help="process only the first N manifest rows")
    c.add_argument("--dry-run", action="store_true", default=None, help="read and check everything, send nothing, say what would be sent")
    c.set_defaults(func=_caption)

    commands.add_parser("simulate", help="serve the bundled OpenAI-compatible simulator (see: simulate --help)", add_help=False)
    d = commands.add_parser("demo", help="run the job on sample_data/ against the simulator on loopback (no key, no network)")
    d.add_argument("-o", "--output", default="output/demo.parquet", help="where to write the demo's output")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        from . import simulator

        return simulator.main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging()
    try:
        return args.func(args)
    except (ConfigError, ManifestError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: say so plainly, show the traceback only on request
        if os.environ.get("PIPELINE_DEBUG"):
            traceback.print_exc()
        print(f"internal error: {type(e).__name__}: {e} (rerun with PIPELINE_DEBUG=1 for details, and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _caption(args: argparse.Namespace) -> int:
    from .runner import run_job

    flags = {
        name: getattr(args, name)
        for name in ("manifest", "output", "base_url", "model", "api_key_env", "prompt", "system", "max_tokens",
                     "temperature", "concurrency", "max_retries", "timeout", "limit", "dry_run")
    }
    config = load_config(flags, job_file=args.job)
    summary = run_job(config)
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.output)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    root = logging.getLogger("pipeline")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
