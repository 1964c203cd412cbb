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
import logging
import os
import sys
import traceback

from . import __version__
from .config import DEFAULT_API_KEY_ENV, FALLBACK_API_KEY_ENV, JobConfig, load_config
from .errors import EXIT_INTERNAL, EXIT_SIGINT, ConfigError, ManifestError, OutputLocked, OutputWriteError, exit_code_for
from .logs import redact_in_logs, setup_logging

log = logging.getLogger("pipeline")

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
        "2 usage or configuration error; 3 aborted (authentication, credits, quota, a broken setup or too many failures in a row); "
        "4 stopped at --max-cost; 74 the output could not be written (full disk, read-only folder); "
        "75 another run holds the output; 130 stopped by Ctrl-C; 143 stopped by SIGTERM. "
        "A rerun of the same command continues where the last one stopped.",
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
    c.add_argument("--rpm", type=int, metavar="N", help="requests per minute the provider allows; paced just under it (default: found from 429s and limit headers)")
    c.add_argument("--tpm", type=int, metavar="N", help="tokens per minute the provider allows, counted from an estimate before sending (default: found adaptively)")
    c.add_argument("--max-cost", type=float, metavar="USD", help="stop (resumably, exit 4) before spending more than this, counting requests in flight")
    c.add_argument("--prices", metavar="FILE", help="TOML of USD per million tokens per model (default: the copy shipped in pipeline/defaults/prices.toml)")
    c.add_argument("--max-retries", type=int, metavar="N", help=f"retries per image after a transient failure (default {D.max_retries})")
    c.add_argument("--timeout", type=float, metavar="SECONDS", help=f"give up on one attempt after this long (default {D.timeout:g})")
    c.add_argument("--limit", type=int, metavar="N", help="process only the first N manifest rows")
    c.add_argument("--dry-run", action="store_true", default=None, help="read and check everything, send nothing, say what would be sent")
    c.add_argument("--redo", action="store_true", default=None, help="caption every row again, even those the output already holds")
    c.add_argument(
        "--no-retry-errors", dest="retry_errors", action="store_false", default=None,
        help="on a rerun, skip rows that failed last time too (by default they are tried again)",
    )
    c.add_argument("--grace", type=float, metavar="SECONDS", help=f"after SIGTERM or Ctrl-C, how long requests in flight may finish (default {D.grace:g})")
    c.add_argument(
        "--max-consecutive-failures", type=int, metavar="N",
        help=f"abort (exit 3) after N rows in a row fail after retries, 0 for never (default {D.max_consecutive_failures})",
    )
    c.add_argument("--max-image-side", type=int, metavar="PX", help=f"scale images down so the long edge is at most this (default {D.max_image_side})")
    c.add_argument("--max-image-bytes", type=int, metavar="N", help=f"largest base64 image payload; bigger images are re-encoded smaller (default {D.max_image_bytes})")
    c.add_argument("--fetch-remote", action="store_true", default=None, help="download http(s) images and send them inline, prepared like local files")
    c.add_argument("--allow-private-urls", action="store_true", default=None, help="let --fetch-remote reach loopback, private and link-local addresses")
    c.add_argument("--image-detail", choices=("low", "high", "auto"), help="image detail for OpenAI-style models (default: not sent)")
    c.add_argument("--image-formats", metavar="LIST",
                   help="image types the provider takes as they are, e.g. jpeg,png,webp; others are converted "
                   "(default auto: no GIF for Ollama and Gemini, by --base-url and --model)")
    c.add_argument("--stream", action="store_true", default=None, help="ask for a streamed answer (stream: true, with usage in the last chunk)")
    c.add_argument("--stall-timeout", type=float, metavar="SECONDS", help=f"with --stream, longest silence between chunks (default {D.stall_timeout:g})")
    c.add_argument(
        "--max-tokens-field", choices=("auto", "max_tokens", "max_completion_tokens"),
        help="which field carries --max-tokens; auto picks max_completion_tokens for OpenAI reasoning models (default auto)",
    )
    c.add_argument("--log-format", choices=("text", "json"), help="log as text or one JSON object per line (default: json when stderr is not a terminal)")
    c.set_defaults(func=_caption)

    commands.add_parser("simulate", help="serve the bundled OpenAI-compatible simulator (see: simulate --help)", add_help=False)
    commands.add_parser("report", help="write a self-contained HTML review page for an output (see: report --help)", add_help=False)
    d = commands.add_parser("demo", help="run the job on sample_data/ against the simulator on loopback (no key, no network)")
    d.add_argument("-o", "--output", default="output/demo.parquet", help="where to write the demo's output")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:
        from . import simulator

        return simulator.main(argv[1:])
    if argv[:1] == ["report"]:
        from . import report

        return report.main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "log_format", None) or os.environ.get("CAPTION_LOG_FORMAT"))
    try:
        return args.func(args)
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


def _caption(args: argparse.Namespace) -> int:
    from .runner import run_job

    flags = {
        name: getattr(args, name)
        for name in ("manifest", "output", "base_url", "model", "api_key_env", "prompt", "system", "max_tokens",
                     "temperature", "concurrency", "rpm", "tpm", "max_cost", "prices", "max_retries", "timeout", "limit", "dry_run", "redo", "retry_errors",
                     "grace", "max_consecutive_failures", "log_format", "max_image_side", "max_image_bytes", "fetch_remote",
                     "allow_private_urls", "image_detail", "image_formats", "stream", "stall_timeout", "max_tokens_field")
    }
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

