"""`make bench`: the pipeline's speed, measured against baselines taken in the same run.

    python bench/run.py [--quick] [--only a,b,...] [--out bench/results/latest.json]

Scenarios (see scenarios.py): a latency-bound, b overhead-bound (against bench/floor.py),
c rate-limited, d memory, e resume, f the yardstick (the job and the floor against
bench/cheap_server.py, which costs far less per request than any client: yardstick.py),
g a dataset output that grows (append.py), h the Ray engine against the local one (engines.py). Each runs the real CLI in a subprocess against
`python -m pipeline simulate` in another, 3 times (once with --quick, which also uses
smaller inputs), and ends in one table of medians, baselines, ratios and targets, also
written as JSON. Inputs are generated once into bench/.cache/. The client runs on the
first core and the simulator on the last, when there are two or more. Only 127.0.0.1 is
ever contacted; every process started is stopped on exit, Ctrl-C or failure.
Exit code: 0 every target met, 1 a target missed or a scenario failed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import data  # noqa: E402
from procs import REPO, cores, stop_all  # noqa: E402
from scenarios import CPU_BOUND, SCENARIOS, BenchError, Context, Result  # noqa: E402
from yardstick import yardstick  # noqa: E402
from append import append  # noqa: E402
from engines import engines  # noqa: E402

SCENARIOS["f"] = yardstick  # against bench/cheap_server.py: a yardstick not tuned to the job
SCENARIOS["g"] = append  # a dataset output that grows (issue 14)
SCENARIOS["h"] = engines  # the Ray engine against the local one (issue 15)
CPU_BOUND.update({"f", "g"})

RESULTS = REPO / "bench" / "results"
NOISY = 0.1  # cores of CPU used by other processes during a run, above which a result is flagged


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, object]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version(), "implementation": platform.python_implementation(),
            "kernel": platform.release(), "commit": commit()}


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{digits}f}" + (f" {unit}" if unit else "")


def line(result: Result) -> str:
    """What one result says, in a line: the measure, median, baseline, ratio, target and verdict."""
    if result.error:
        return f"{result.id}: ERROR: {result.error}"
    ratio = f", ratio {result.ratio:.3f}" if result.ratio is not None else ""
    base = f" vs {result.baseline_what} {fmt(result.baseline, result.unit)}" if result.baseline else ""
    return f"{result.id}: {result.what}: median {fmt(result.median, result.unit)}{base}{ratio}; target {result.target_text}: {result.verdict}"


def _noisy(result: Result) -> bool:
    return result.foreign_load > NOISY


def table(results: list[Result], header: str) -> str:
    rows = [("id", "measured", "runs", "median", "baseline", "ratio", "target", "result")]
    for r in results:
        rows.append((r.id, r.what, str(len(r.runs)), fmt(r.median, r.unit),
                     f"{fmt(r.baseline, r.unit)} ({r.baseline_what})" if r.baseline else "—",
                     f"{r.ratio:.3f}" if r.ratio is not None else "—", r.target_text, r.verdict + ("*" if _noisy(r) else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    widths[1] = min(widths[1], 70)
    out = [header]
    for n, row in enumerate(rows):
        cells = [(cell if len(cell) <= widths[i] else cell[: widths[i] - 1] + "…").ljust(widths[i]) for i, cell in enumerate(row)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    notes = [f"  {r.id}: {note}" for r in results for note in r.notes] + [f"  {r.id}: {r.what}" for r in results if len(r.what) > 70]
    notes += [f"  {r.id}: * other processes kept {r.foreign_load:.2f} cores busy during a run: the machine was not quiet, "
              "rerun to trust this figure" for r in results if _noisy(r)]
    errors = [f"  {r.id}: {r.error}" for r in results if r.error]
    return "\n".join(out + (["notes:"] + notes if notes else []) + (["errors:"] + errors if errors else []))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="smaller inputs and one run each: a smoke run of a few minutes")
    parser.add_argument("--only", metavar="a,b,...", help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json", help="where to write the results as JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")

    # SIGTERM takes the same way out as Ctrl-C: through the finally that stops every child.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background, where SIGINT is ignored
    client_cpus, sim_cpus = cores()
    info = machine()
    pinning = f"client on core {min(client_cpus)}, simulator on core {min(sim_cpus)}" if client_cpus else "no pinning (one core)"
    mode = "quick (smaller inputs, one run each)" if args.quick else "full (median of 3 runs)"
    header = f"bench, {mode}: {info['cpu']}, nproc {info['nproc']}, Python {info['python']}, {pinning}, commit {info['commit']}"
    print(header, flush=True)

    logs = RESULTS / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    work = data.CACHE / "work"
    results: list[Result] = []
    ctx = Context(args.quick, client_cpus, sim_cpus, logs, work, report=lambda r: print(line(r), flush=True))
    started = time.time()
    interrupted = False
    try:
        print("preparing inputs in bench/.cache/ (first time only: about a minute)", flush=True)
        data.tiny_set(10_000)
        if "b" in chosen:
            data.photo_set(2_000)
        for name in chosen:
            print(f"[{name}] {SCENARIOS[name].__name__.replace('_', '-')}", flush=True)
            ctx.cpu_bound = name in CPU_BOUND
            try:
                found = SCENARIOS[name](ctx)
            except Exception as e:  # one scenario failing must not lose the others' results
                message = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
                found = [Result(name, SCENARIOS[name].__name__, "", [], error=message)]
            now = commit()
            for result in found:
                result.foreign_load = ctx.foreign_load if ctx.cpu_bound else 0.0
                if now != info["commit"]:  # someone committed while the bench ran: say which code this row measured
                    result.notes.append(f"measured at commit {now}, not {info['commit']}")
                ctx.report(result)
            ctx.foreign_load = 0.0
            results.extend(found)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything the bench started", flush=True)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(table(results, header + (" (INTERRUPTED)" if interrupted else "")))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "mode": "quick" if args.quick else "full", "pinning": pinning, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
              "seconds": round(time.time() - started, 1), "interrupted": interrupted, "results": [r.as_dict() for r in results]}
    args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwritten to {args.out}; per-run logs in {logs}")
    if interrupted:
        return 130
    return 0 if all(r.verdict in ("PASS", "info") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
