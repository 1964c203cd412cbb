"""Scenario f: the job against a yardstick we do not tune for it (issue 13).

bench/cheap_server.py costs the machine far less per request than any client, so what is measured
is the client; bench/floor.py is the loop a person writes in a few dozen lines. Both run in the same
scenario as the job, interleaved, medians of 3.

f.rps / f.cpu  overhead-bound: 2,000 photos of 100-300 KB, latency 0, concurrency 64
f.latency      latency-bound: 10,000 rows at 200 ms, concurrency 64, against N·L/C and the floor
f.rpm-*        600 requests a minute enforced per second (10 in any 1 s), concurrency 64, told and not told
"""

from __future__ import annotations

import statistics
from pathlib import Path

import data
from procs import CheapServer, Measured
from scenarios import Context, Result, _floor, _fmt, _photo_manifest, caption, expect_all_ok, fresh

CONCURRENCY = 64


def yardstick(ctx: Context) -> list[Result]:
    return overhead(ctx) + latency(ctx) + per_second_limit(ctx)


def _server(ctx: Context, *knobs: str, name: str) -> CheapServer:
    return CheapServer(knobs, cpus=ctx.sim_cpus, log=ctx.log(f"cheap-{name}"))


def _job_and_floor(ctx: Context, manifest: Path, n: int, *knobs: str, name: str) -> tuple[list[Measured], list[Measured]]:
    """The job and the floor, interleaved (a slow minute of the machine hits both alike), `repeats` times each."""
    output = ctx.work / f"{name}.parquet"
    job, floor = [], []
    with _server(ctx, *knobs, name=name) as server:
        for _ in range(ctx.repeats):
            fresh(output)
            measured, _, log = caption(ctx, server, manifest, output, "--concurrency", str(CONCURRENCY), name=name)
            expect_all_ok(measured, log, output, n)
            job.append(measured)
            floor.append(_floor(ctx, server, manifest, CONCURRENCY, name=f"{name}-floor"))
            j, f = job[-1], floor[-1]
            print(f"  {name}: run {len(job)}: job {_fmt(j.wall)}, {n / j.wall:.0f} req/s, {1000 * j.cpu / n:.2f} ms CPU each; "
                  f"floor {_fmt(f.wall)}, {n / f.wall:.0f} req/s, {1000 * f.cpu / n:.2f} ms", flush=True)
    return job, floor


def overhead(ctx: Context) -> list[Result]:
    n = 500 if ctx.quick else 2_000
    photos = data.photo_set(2_000)
    manifest = photos / "manifest.csv" if n == 2_000 else _photo_manifest(photos, n)
    job, floor = _job_and_floor(ctx, manifest, n, name="f-rps")
    what = f"{n:,} photos, latency 0, --concurrency {CONCURRENCY}, cheap server"
    return [
        Result("f.rps", f"requests/s, {what}", "req/s", [n / m.wall for m in job], baseline=statistics.median(n / m.wall for m in floor),
               baseline_what="floor.py req/s", higher_is_better=True, target=0.9,
               notes=[f"peak RSS: job {statistics.median(m.max_rss_mb for m in job):.0f} MB, floor {statistics.median(m.max_rss_mb for m in floor):.0f} MB"]),
        Result("f.cpu", "client CPU ms per request (user+sys, start-up included)", "ms", [1000 * m.cpu / n for m in job],
               baseline=statistics.median(1000 * m.cpu / n for m in floor), baseline_what="floor.py ms", target=1.2),
    ]


def latency(ctx: Context) -> list[Result]:
    n, seconds = (2_000 if ctx.quick else 10_000), 0.2
    manifest = data.tiny_set(10_000) / "manifest.csv" if n == 10_000 else data.tiny_manifest(n, of=10_000)
    job, floor = _job_and_floor(ctx, manifest, n, "--latency", str(seconds), name="f-latency")
    ideal = n * seconds / CONCURRENCY
    walls = [m.wall for m in job]
    floor_wall = statistics.median(m.wall for m in floor)
    return [
        Result("f.latency", f"wall, {n:,} rows, latency {seconds:g} s, --concurrency {CONCURRENCY}, cheap server", "s", walls,
               baseline=ideal, baseline_what="N·L/C", target=1.05,
               checks={"within 1 % of the floor": statistics.median(walls) <= 1.01 * floor_wall},
               notes=[f"floor.py {floor_wall:.1f} s; CPU job {statistics.median(m.cpu for m in job):.1f} s, "
                      f"floor {statistics.median(m.cpu for m in floor):.1f} s"]),
    ]


def per_second_limit(ctx: Context) -> list[Result]:
    rpm, n = 600, (150 if ctx.quick else 300)
    photos = data.photo_set(2_000)
    manifest = _photo_manifest(photos, n)
    results = []
    for told, target, max_429 in ((True, 1.05, 0.01), (False, 1.1, 0.02)):
        label = f"f.rpm-{'paced' if told else 'adaptive'}"
        output = ctx.work / f"{label}.parquet"
        walls, shares = [], []
        with _server(ctx, "--rpm", str(rpm), "--window", "1", name=label) as server:
            for _ in range(ctx.repeats):
                fresh(output)
                flags = ("--rpm", str(rpm)) if told else ()
                measured, stats, log = caption(ctx, server, manifest, output, "--concurrency", str(CONCURRENCY), *flags, name=label)
                expect_all_ok(measured, log, output, n)
                walls.append(measured.wall)
                shares.append(stats["rate_limited"] / max(stats["requests"], 1))
                print(f"  {label}: run {len(walls)}: {_fmt(measured.wall)}, {stats['rate_limited']} of {stats['requests']} answered 429", flush=True)
        results.append(Result(label, f"wall, {n} photos, {rpm} RPM enforced per 1 s, --concurrency {CONCURRENCY}, "
                                     f"{'--rpm ' + str(rpm) if told else 'no limit given'}", "s", walls,
                              baseline=60 * n / rpm, baseline_what="N/R", target=target,
                              checks={f"429s ≤ {max_429:.0%}": max(shares) <= max_429},
                              notes=[f"429s: {', '.join(f'{s:.1%}' for s in shares)} of requests"]))
    return results
