"""`pipeline batch status|cancel|export|import`: an output's provider batches, for people.

status OUTPUT              the batches beside OUTPUT: what each holds and how far it got (no key, no network)
cancel OUTPUT              ask the provider to stop every live batch (what was answered is still collected)
export MANIFEST -o FILE    the rows left as OpenAI batch lines (for vLLM's run_batch or a manual upload)
import RESULTS -o OUTPUT   an OpenAI or Anthropic results file read back into OUTPUT
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..cli import add_option
from ..config import JobConfig, _find_api_key, load_config
from ..errors import EXIT_OK, EXIT_USAGE, ConfigError, PipelineError, exit_code_for
from ..files import runs_path
from ..options import declared, flag_of
from ..remote import local_output
from ..secret import Secret
from ..storage import location
from .ledger import Ledger


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pipeline batch", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="the batches beside an output, and how far each got")
    status.add_argument("output", type=location, help="the output a --batch run wrote")
    status.add_argument("--json", action="store_true", help="one JSON object per batch")
    cancel = actions.add_parser("cancel", help="cancel every live batch of an output at the provider")
    cancel.add_argument("output", type=location)
    cancel.add_argument("--base-url", help="default: the one the last --batch run used")
    cancel.add_argument("--batch-api", choices=("openai", "anthropic"), help="default: the one the last --batch run used")
    cancel.add_argument("--api-key-env", metavar="NAME", help="default: the one the last --batch run used")
    export = actions.add_parser("export", help="write the rows left as OpenAI batch request lines")
    export.add_argument("manifest")
    export.add_argument("-o", "--to", type=Path, required=True, metavar="FILE", help="the requests file to write (.jsonl)")
    export.add_argument("--job", metavar="FILE")
    for field, opt in declared(JobConfig):
        if flag_of(field, opt) and field.name not in ("batch", "batch_api", "batch_wait", "batch_poll", "dry_run", "engine", "ray_address"):
            add_option(export, field, dataclasses.replace(opt, short=None) if field.name == "output" else opt)
    imported = actions.add_parser("import", help="read a results file back into the output its requests were exported for")
    imported.add_argument("results", type=Path, help="OpenAI batch output or error lines, or Anthropic Message Batch results")
    imported.add_argument("-o", "--output", type=location, required=True, help="the output the requests were exported for")
    imported.add_argument("--prices", type=Path, help="prices file (default: the shipped one)")
    args = parser.parse_args(argv)
    try:
        return {"status": _status, "cancel": _cancel, "export": _export, "import": _import}[args.action](args)
    except (ConfigError, PipelineError) as e:
        print(f"pipeline batch {args.action}: error: {e}", file=sys.stderr)
        return exit_code_for(e)


def _status(args: argparse.Namespace) -> int:
    ledger = Ledger.open(local_output(args.output))
    if not ledger.batches:
        print(f"no batches beside {args.output}", file=sys.stderr)
        return EXIT_OK
    for batch in ledger.batches.values():
        state = "exported" if batch.api == "file" else batch.status or ("submitted" if batch.submitted else "prepared, not submitted")
        if batch.done:
            state = "rejected" if batch.status == "rejected" or (batch.note and batch.status == "failed") else "collected"
        if args.json:
            print(json.dumps({**dataclasses.asdict(batch), "state": state}))
        else:
            print(f"{batch.key}  {batch.api:9}  {batch.batch_id or '-':24}  {batch.rows:7,} rows  {batch.bytes / 1e6:8.1f} MB  "
                  f"{state}{'  (' + batch.note + ')' if batch.note else ''}")
    live = ledger.live()
    if not args.json:
        print(f"{len(live)} live ({sum(b.rows for b in live):,} rows, up to ${sum(b.worst_usd for b in live):.4f}), "
              f"{len(ledger.batches) - len(live)} done", file=sys.stderr)
    return EXIT_OK


def _cancel(args: argparse.Namespace) -> int:
    from .api import make_api
    import aiohttp

    ledger = Ledger.open(local_output(args.output))
    live = [b for b in ledger.live() if b.submitted and b.api != "file"]
    if not live:
        print(f"no live batches beside {args.output}", file=sys.stderr)
        return EXIT_OK
    config = _api_config(args)

    async def cancel_all() -> None:
        async with aiohttp.ClientSession() as session:
            api = make_api(session, config)
            for batch in live:
                state = await api.cancel(batch.batch_id)
                print(f"{batch.key}  {batch.batch_id}  {state.status}")
    asyncio.run(cancel_all())
    print("the next run of the job collects what they answered; the rest is to do again", file=sys.stderr)
    return EXIT_OK


def _api_config(args: argparse.Namespace) -> JobConfig:
    """The provider to talk to: the flags, else what the last --batch run of this output used."""
    options: dict[str, Any] = {}
    runs = runs_path(local_output(args.output))
    if runs.exists():
        for line in runs.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if (record.get("options") or {}).get("batch"):
                options = record["options"]
    base_url = args.base_url or options.get("base_url")
    if not base_url:
        raise ConfigError("no --base-url given, and no --batch run of this output recorded one")
    variable = args.api_key_env or options.get("api_key_env") or JobConfig().api_key_env
    key = _find_api_key(variable, os.environ)
    if key is None:
        raise ConfigError(f"no API key: set the environment variable {variable}")
    return JobConfig(base_url=base_url, batch_api=args.batch_api or options.get("batch_api") or "openai",
                     api_key_env=variable, api_key=Secret(key))


def _export(args: argparse.Namespace) -> int:
    from ..runner import run_job

    flags = {field.name: getattr(args, field.name, None) for field, _ in declared(JobConfig)}
    flags["manifest"] = args.manifest
    config = load_config(flags, job_file=args.job, need_key=False)
    config = dataclasses.replace(config, batch=True, batch_api="file", batch_wait=False, dry_run=False)
    before = set(Ledger.open(local_output(config.output)).batches)
    summary = run_job(config)
    ledger = Ledger.open(local_output(config.output))
    new = [b for b in ledger.batches.values() if b.key not in before]
    written = []
    for number, batch in enumerate(new, 1):
        to = args.to if number == 1 else args.to.with_name(f"{args.to.stem}.{number}{args.to.suffix}")
        os.replace(ledger.requests_path(batch.key), to)
        written.append(f"{to} ({batch.rows:,} requests, {batch.bytes / 1e6:.1f} MB)")
    if not written:
        print(f"nothing to export: no rows left to do ({summary.skipped} already done)", file=sys.stderr)
    else:
        print("exported " + ", ".join(written), file=sys.stderr)
        print(f"run them (e.g. vLLM: python -m vllm.entrypoints.openai.run_batch -i {args.to} -o results.jsonl --model ...), then: "
              f"pipeline batch import results.jsonl -o {config.output}", file=sys.stderr)
    if summary.error:
        print(f"{summary.error} rows failed before any request (they are in {config.output}): see pipeline status {config.output}",
              file=sys.stderr)
    return summary.exit_code


def _import(args: argparse.Namespace) -> int:
    from .importing import import_results

    if not args.results.exists():
        raise ConfigError(f"no such results file: {args.results}")
    written, left, unknown = import_results(args.results, args.output, args.prices)
    print(f"imported {written:,} rows into {args.output}" + (f"; {left:,} exported rows have no result yet" if left else "")
          + (f"; {unknown:,} results match no exported row (exported for another output?)" if unknown else ""), file=sys.stderr)
    return EXIT_OK if written or not unknown else EXIT_USAGE
