"""Scenario h: the Ray engine against the local engine, on this one machine (issue 15, point 7).

h.latency  10,000 tiny PNGs at 200 ms, --concurrency 64: requests/s of `--engine ray` against `--engine local`
h.rps      2,000 tiny PNGs at latency 0, --concurrency 64: the same, where the client's CPU is the limit

Both engines run the real CLI; the Ray one starts its own local cluster in each run (`ray.init()`,
no address), so the ~5 s that costs is in its time, as it is for a person who runs it. Ray's
processes inherit the client's core. Interleaved, medians of 3.
"""

from __future__ import annotations

import statistics

import data
from scenarios import BenchError, Context, Result, _fmt, caption, expect_all_ok, fresh

CONCURRENCY = 64


def engines(ctx: Context) -> list[Result]:
    import importlib.util

    if importlib.util.find_spec("ray") is None:  # the runs import it themselves
        raise BenchError("scenario h needs Ray: pip install -e '.[ray]'")
    n_latency = 2_000 if ctx.quick else 10_000
    latency_manifest = data.tiny_set(10_000) / "manifest.csv" if n_latency == 10_000 else data.tiny_manifest(n_latency, of=10_000)
    return [_compare(ctx, "h.latency", latency_manifest, n_latency, 0.2),
            _compare(ctx, "h.rps", data.tiny_manifest(2_000, of=10_000), 2_000, 0.0)]


def _compare(ctx: Context, name: str, manifest, n: int, latency: float) -> Result:
    output = ctx.work / f"{name}.parquet"
    rates: dict[str, list[float]] = {"local": [], "ray": []}
    cpu: dict[str, list[float]] = {"local": [], "ray": []}
    with ctx.simulator("--latency", str(latency), "--decode", "header", name=name) as sim:
        for _ in range(ctx.repeats):
            for engine in ("local", "ray"):
                fresh(output)
                measured, _, log = caption(ctx, sim, manifest, output, "--concurrency", str(CONCURRENCY), "--engine", engine,
                                           name=f"{name}-{engine}")
                expect_all_ok(measured, log, output, n)
                rates[engine].append(n / measured.wall)
                cpu[engine].append(measured.cpu)
            print(f"  {name}: run {len(rates['ray'])}: local {rates['local'][-1]:.0f} req/s, ray {rates['ray'][-1]:.0f} req/s "
                  f"({_fmt(n / rates['ray'][-1])})", flush=True)
    ideal = f"; ideal N·L/C {n * latency / CONCURRENCY:.1f} s" if latency else ""
    return Result(name, f"requests/s, --engine ray, {n:,} tiny PNGs, latency {latency:g} s, --concurrency {CONCURRENCY}", "req/s",
                  rates["ray"], baseline=statistics.median(rates["local"]), baseline_what="--engine local req/s",
                  higher_is_better=True, target=0.7,
                  notes=[f"CPU: ray {statistics.median(cpu['ray']):.1f} s, local {statistics.median(cpu['local']):.1f} s "
                         f"(Ray's start-up included){ideal}"])
