"""The five bench scenarios. Each runs the real CLI in a subprocess against a simulator process and returns Results.

a latency-bound   wall time / (N x latency / concurrency)
b overhead-bound  requests/s and CPU per 1,000 requests, against bench/floor.py
c rate-limited    wall time / (N / R minutes) under a sliding-window RPM or TPM limit, paced and adaptive
d memory          peak RSS of --dry-run over 10 k and 1 M rows, and of a real 10 k run
e resume          a rerun over a finished 1 M-row output: no request, and how long it takes
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

import data
from procs import PYTHON, REPO, Measured, Simulator, clean_env, machine_cpu_seconds, run_measured, stop_all, wait_for_quiet

MODEL_MAX_TOKENS = 300  # the job's default --max-tokens, which TPM limits count up front


class BenchError(Exception):
    """A run that did not do its job (wrong exit code, rows missing, requests where none were due)."""


@dataclass
class Result:
    id: str
    what: str
    unit: str
    runs: list[float]
    baseline: float | None = None
    baseline_what: str = ""
    higher_is_better: bool = False
    target: float | None = None  # bound on the ratio (on the value when there is no baseline)
    checks: dict[str, bool] = field(default_factory=dict)  # further conditions of a PASS
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    foreign_load: float = 0.0  # cores other processes kept busy during these runs, at most

    @property
    def median(self) -> float | None:
        return statistics.median(self.runs) if self.runs else None

    @property
    def ratio(self) -> float | None:
        return self.median / self.baseline if self.runs and self.baseline else None

    @property
    def target_text(self) -> str:
        parts = []
        if self.target is not None:
            sign = "≥" if self.higher_is_better else "≤"
            parts.append(f"{sign} {self.target:g}" + ("×" if self.baseline else f" {self.unit}"))
        return " & ".join(parts + list(self.checks)) or "—"

    @property
    def verdict(self) -> str:
        if self.error:
            return "ERROR"
        if self.target is None and not self.checks:
            return "info"
        value = self.ratio if self.baseline else self.median
        ok = True
        if self.target is not None:
            ok = value >= self.target if self.higher_is_better else value <= self.target
        return "PASS" if ok and all(self.checks.values()) else "MISS"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "what": self.what, "unit": self.unit, "runs": self.runs, "median": self.median,
                "baseline": self.baseline, "baseline_what": self.baseline_what, "ratio": self.ratio,
                "target": self.target_text, "checks": self.checks, "verdict": self.verdict, "notes": self.notes, "error": self.error,
                "foreign_load_cores": round(self.foreign_load, 3)}


@dataclass
class Context:
    quick: bool
    client_cpus: set[int] | None
    sim_cpus: set[int] | None
    logs: Path
    work: Path
    report: Callable[[Result], None]
    seen: dict[str, int] = field(default_factory=dict)
    foreign_load: float = 0.0  # most CPU (in cores) other processes used during a measured run of the current scenario
    cpu_bound: bool = False  # the current scenario measures time that other load on the machine would skew

    @property
    def repeats(self) -> int:
        return 1 if self.quick else 3

    def log(self, name: str) -> Path:
        self.seen[name] = self.seen.get(name, 0) + 1
        return self.logs / f"{name}-{self.seen[name]}.log"

    def simulator(self, *knobs: str, name: str) -> Simulator:
        return Simulator(knobs, cpus=self.sim_cpus, log=self.log(f"sim-{name}"))


# --- running the job ----------------------------------------------------------------


def fresh(output: Path) -> None:
    """No output and none of the files beside it: the next run starts from nothing."""
    output.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", ".journal.jsonl", ".lock", ".runs.jsonl"):
        output.with_name(output.name + suffix).unlink(missing_ok=True)


def measure(ctx: Context, sim: Simulator, cmd: list[str], name: str) -> tuple[Measured, dict[str, Any], Path]:
    """Run cmd against `sim`; the simulator's counters and CPU for just that run, and the CPU others used meanwhile."""
    sim.reset()
    if ctx.cpu_bound:  # another job's CPU would be counted as ours: give it a minute to finish
        wait_for_quiet()
    sim_cpu, machine_cpu = sim.cpu_seconds(), machine_cpu_seconds()
    log = ctx.log(name)
    measured = run_measured(cmd, cpus=ctx.client_cpus, log=log)
    stats = sim.stats()
    stats["cpu"] = sim.cpu_seconds() - sim_cpu
    # Whatever else ran on the machine meanwhile (other jobs, the hypervisor's steal), in cores.
    foreign = (machine_cpu_seconds() - machine_cpu - stats["cpu"] - measured.cpu) / measured.wall
    ctx.foreign_load = max(ctx.foreign_load, foreign)
    return measured, stats, log


def caption(ctx: Context, sim: Simulator, manifest: Path, output: Path, *flags: str, name: str) -> tuple[Measured, dict[str, Any], Path]:
    """One run of `python -m pipeline caption` (start-up included), with the simulator's counters for just that run."""
    return measure(ctx, sim, [PYTHON, "-m", "pipeline", "caption", str(manifest), "-o", str(output), "--base-url", sim.base_url, *flags], name)


def tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return "\n    ".join(text[-lines:])


def expect(measured: Measured, log: Path, code: int = 0) -> None:
    if measured.returncode != code:
        raise BenchError(f"exit code {measured.returncode}, expected {code} (log {log}):\n    {tail(log)}")


def expect_all_ok(measured: Measured, log: Path, output: Path, n: int) -> None:
    """Exit code 0 and an output of exactly n rows, all ok."""
    expect(measured, log)
    status = pq.read_table(output, columns=["status"]).column("status").to_pylist()
    ok = status.count("ok")
    if len(status) != n or ok != n:
        raise BenchError(f"output has {len(status)} rows, {ok} ok; expected {n} ok ({output})")


def _fmt(seconds: float) -> str:
    return f"{seconds:.1f} s"


# --- a. latency-bound -----------------------------------------------------------------


def latency_bound(ctx: Context) -> list[Result]:
    n, latency, concurrency = (2_000 if ctx.quick else 10_000), 0.2, 64
    manifest = data.tiny_set(10_000) / "manifest.csv" if n == 10_000 else data.tiny_manifest(n, of=10_000)
    output = ctx.work / "a.parquet"
    ideal = n * latency / concurrency
    runs: list[Measured] = []
    floor: list[Measured] = []
    sim_busy = []
    # Header decoding: the simulator's time must not be part of what is measured (tiny images cost little either way).
    with ctx.simulator("--latency", str(latency), "--decode", "header", name="a") as sim:
        for _ in range(ctx.repeats):
            fresh(output)
            measured, stats, log = caption(ctx, sim, manifest, output, "--concurrency", str(concurrency), name="a")
            expect_all_ok(measured, log, output, n)
            runs.append(measured)
            sim_busy.append(stats["cpu"] / measured.wall)
            floor.append(_floor(ctx, sim, manifest, concurrency, name="a-floor"))
            print(f"  a: run {len(runs)}: {_fmt(measured.wall)} (CPU {measured.cpu:.1f} s), peak in flight {stats['peak_in_flight']}; "
                  f"floor.py {_fmt(floor[-1].wall)} (CPU {floor[-1].cpu:.1f} s)", flush=True)
    what = f"{n:,} tiny PNGs, latency {latency:g} s, --concurrency {concurrency}"
    cpu = statistics.median(m.cpu for m in runs)
    return [Result("a", f"wall, {what}", "s", [m.wall for m in runs], baseline=ideal, baseline_what="N·L/C", target=1.05,
                   notes=[f"client CPU {cpu:.1f} s ({1000 * cpu / n:.2f} ms per row, busy {cpu / statistics.median(m.wall for m in runs):.0%}); "
                          f"simulator CPU busy {max(sim_busy):.0%} at most"]),
            Result("a.floor", "wall, floor.py on the same input (reference: what a minimal client gets)", "s", [m.wall for m in floor],
                   baseline=ideal, baseline_what="N·L/C",
                   notes=[f"floor.py CPU {statistics.median(m.cpu for m in floor):.1f} s"])]


def _floor(ctx: Context, sim: Simulator, manifest: Path, concurrency: int, name: str) -> Measured:
    """One run of bench/floor.py over `manifest`; every row must come back ok."""
    output = ctx.work / f"{name}.parquet"
    fresh(output)
    cmd = [PYTHON, str(REPO / "bench" / "floor.py"), str(manifest), "-o", str(output), "--base-url", sim.base_url, "--concurrency", str(concurrency)]
    measured, _, log = measure(ctx, sim, cmd, name)
    expect(measured, log)
    return measured


# --- b. overhead-bound ------------------------------------------------------------------


def overhead_bound(ctx: Context) -> list[Result]:
    n, concurrency = (500 if ctx.quick else 2_000), 16
    photos = data.photo_set(2_000)
    manifest = photos / "manifest.csv" if n == 2_000 else _photo_manifest(photos, n)
    product_out = ctx.work / "b.parquet"
    product, floor, sim_ms = [], [], []
    with ctx.simulator("--decode", "header", name="b") as sim:
        for _ in range(ctx.repeats):  # interleaved, so that a slow minute of the machine hits both alike
            fresh(product_out)
            measured, stats, log = caption(ctx, sim, manifest, product_out, "--concurrency", str(concurrency), name="b")
            expect_all_ok(measured, log, product_out, n)
            product.append(measured)
            sim_ms.append(1000 * stats["cpu"] / stats["requests"])
            floor.append(_floor(ctx, sim, manifest, concurrency, name="b-floor"))
            print(f"  b: run {len(floor)}: pipeline {n / product[-1].wall:.0f} req/s, floor {n / floor[-1].wall:.0f} req/s", flush=True)
    sizes = [p.stat().st_size for p in (photos / "img").iterdir()]
    what = f"{n:,} JPEGs 1200×900 {min(sizes) // 1024}-{max(sizes) // 1024} KB, latency 0, --concurrency {concurrency}"
    rps = [n / m.wall for m in product]
    floor_rps = statistics.median(n / m.wall for m in floor)
    busiest = max(r * ms / 1000 for r, ms in zip(rps, sim_ms))
    return [
        Result("b.rps", f"requests/s, {what}", "req/s", rps, baseline=floor_rps, baseline_what="floor.py req/s",
               higher_is_better=True, target=0.9,
               checks={"simulator < 80 % busy": busiest < 0.8},
               notes=[f"simulator: {statistics.median(sim_ms):.2f} ms CPU per request (capacity ≈ {1000 / statistics.median(sim_ms):.0f} req/s), "
                      f"busy {busiest:.0%} at most during the pipeline's runs"]),
        Result("b.cpu", "client CPU s per 1,000 requests (user+sys, start-up included)", "s", [1000 * m.cpu / n for m in product],
               baseline=statistics.median(1000 * m.cpu / n for m in floor), baseline_what="floor.py CPU s/1k",
               notes=[f"peak RSS: pipeline {statistics.median(m.max_rss_mb for m in product):.0f} MB, "
                      f"floor {statistics.median(m.max_rss_mb for m in floor):.0f} MB"]),
    ]


def _photo_manifest(photos: Path, n: int) -> Path:
    path = photos / f"manifest-{n}.csv"
    if not path.exists():
        lines = (photos / "manifest.csv").read_text().splitlines()
        path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


# --- c. rate-limited ------------------------------------------------------------------------


@dataclass(frozen=True)
class Limited:
    name: str  # "rpm" | "tpm"
    paced: bool  # the client is told the limit (--rpm / --tpm); else it finds it
    target: float
    max_429: float


VARIANTS = (Limited("rpm", True, 1.05, 0.01), Limited("rpm", False, 1.25, 0.05),
            Limited("tpm", True, 1.05, 0.01), Limited("tpm", False, 1.25, 0.05))


def rate_limited(ctx: Context) -> list[Result]:
    rpm, n = (120, 150) if ctx.quick else (600, 1_200)
    manifest = data.tiny_manifest(n, of=10_000)
    from pipeline.config import JobConfig
    from pipeline.simulator.vision import count_usage

    prompt = JobConfig().prompt
    per_request = count_usage(data.TINY_SIDE, data.TINY_SIDE, [prompt], "")["prompt_tokens"] + MODEL_MAX_TOKENS
    tpm = rpm * per_request  # the same pace as the RPM limit, in tokens

    def variant(v: Limited) -> Result:
        limit = rpm if v.name == "rpm" else tpm
        label = f"c.{v.name}-{'paced' if v.paced else 'adaptive'}"
        flags = (f"--{v.name}", str(limit)) if v.paced else ()
        output = ctx.work / f"{label}.parquet"
        walls, shares = [], []
        with ctx.simulator(f"--{v.name}-limit", str(limit), name=label) as sim:
            for _ in range(ctx.repeats):
                fresh(output)
                measured, stats, log = caption(ctx, sim, manifest, output, *flags, name=label)
                expect_all_ok(measured, log, output, n)
                walls.append(measured.wall)
                shares.append(stats["rate_limited"] / max(stats["requests"], 1))
                print(f"  {label}: run {len(walls)}: {_fmt(measured.wall)}, {stats['rate_limited']} of {stats['requests']} "
                      f"requests answered 429 ({stats['by_status']})", flush=True)
        ideal = 60 * n / rpm
        floor = 60 * (n - rpm) / rpm
        told = f"--{v.name} {limit}" if v.paced else "no limit given (adaptive)"
        unit = f"{limit:,} {v.name.upper()}" + (f" = {rpm} requests of {per_request} tokens" if v.name == "tpm" else "")
        return Result(label, f"wall, {n:,} rows, simulator {unit} (sliding 60 s), client {told}", "s", walls,
                      baseline=ideal, baseline_what="N/R", target=v.target,
                      checks={f"429s ≤ {v.max_429:.0%}": max(shares) <= v.max_429, "all rows ok": True},
                      notes=[f"429s: {', '.join(f'{s:.1%}' for s in shares)} of requests; against the sliding-window floor "
                             f"(N−R)/R = {floor:.0f} s the ratio is {statistics.median(walls) / floor:.2f}"])

    if ctx.quick:  # the runs are limit-bound, not CPU-bound: run the four at once, each with its own simulator
        print(f"  c (quick): R={rpm}/min, N={n}, one run of each variant, all four at the same time", flush=True)
        pool = ThreadPoolExecutor(len(VARIANTS))
        try:
            return list(pool.map(_guarded(variant), VARIANTS))
        finally:  # on Ctrl-C, end the runs first: the threads are waiting for them
            stop_all()
            pool.shutdown()
    return [_guarded(variant)(v) for v in VARIANTS]


def _guarded(variant: Callable[[Limited], Result]) -> Callable[[Limited], Result]:
    """One variant failing must not lose the others' results."""

    def run(v: Limited) -> Result:
        try:
            return variant(v)
        except Exception as e:
            message = str(e) if isinstance(e, BenchError) else f"{type(e).__name__}: {e}"
            return Result(f"c.{v.name}-{'paced' if v.paced else 'adaptive'}", "rate-limited run", "s", [], error=message)

    return run


# --- d. memory ---------------------------------------------------------------------------------


def memory(ctx: Context) -> list[Result]:
    small, large = 10_000, (200_000 if ctx.quick else 1_000_000)
    output = ctx.work / "d.parquet"
    results = []
    with ctx.simulator("--decode", "header", name="d") as sim:
        rss: dict[int, list[float]] = {small: [], large: []}
        walls: dict[int, list[float]] = {small: [], large: []}
        for _ in range(ctx.repeats):
            for n in (small, large):
                fresh(output)
                measured, stats, log = caption(ctx, sim, data.url_manifest(n), output, "--dry-run", name=f"d-dry-{n}")
                expect(measured, log)
                if stats["requests"]:
                    raise BenchError(f"--dry-run sent {stats['requests']} requests")
                rss[n].append(measured.max_rss_mb)
                walls[n].append(measured.wall)
                print(f"  d: --dry-run {n:,} URL rows: peak RSS {measured.max_rss_mb:.0f} MB in {_fmt(measured.wall)}", flush=True)
        results.append(Result(f"d.dry-{small // 1000}k", f"peak RSS, --dry-run, {small:,} URL rows", "MB", rss[small]))
        results.append(Result(f"d.dry-{large // 1000}k", f"peak RSS, --dry-run, {large:,} URL rows", "MB", rss[large],
                              baseline=statistics.median(rss[small]), baseline_what=f"RSS {small // 1000}k rows", target=1.3,
                              checks={"≤ 200 MB": statistics.median(rss[large]) <= 200},
                              notes=[f"--dry-run wall: {statistics.median(walls[small]):.1f} s for {small:,} rows, "
                                     f"{statistics.median(walls[large]):.1f} s for {large:,}"]))
        real = []
        manifest = data.tiny_set(10_000) / "manifest.csv"
        for _ in range(ctx.repeats):
            fresh(output)
            measured, stats, log = caption(ctx, sim, manifest, output, name="d-real")
            expect_all_ok(measured, log, output, 10_000)
            real.append(measured.max_rss_mb)
            print(f"  d: real run, 10,000 tiny PNGs: peak RSS {measured.max_rss_mb:.0f} MB in {_fmt(measured.wall)}", flush=True)
        results.append(Result("d.real-10k", "peak RSS, real run, 10,000 tiny PNGs, latency 0 (reference)", "MB", real))
    return results


# --- e. resume ------------------------------------------------------------------------------------


def resume(ctx: Context) -> list[Result]:
    n = 100_000 if ctx.quick else 1_000_000
    manifest = data.url_manifest(n, with_ids=True)
    output = ctx.work / "e.parquet"
    walls, rss = [], []
    with ctx.simulator(name="e") as sim:
        started = time.perf_counter()
        fingerprint = finished_output(manifest, output, sim.base_url, n)
        print(f"  e: built a finished {n:,}-row output in {_fmt(time.perf_counter() - started)} (fingerprint {fingerprint})", flush=True)
        for _ in range(ctx.repeats):
            output.with_name(output.name + ".runs.jsonl").unlink(missing_ok=True)
            measured, stats, log = caption(ctx, sim, manifest, output, name="e")
            expect(measured, log)
            if stats["requests"]:
                raise BenchError(f"the rerun sent {stats['requests']} requests; expected none (log {log})")
            if "nothing to do" not in log.read_text():
                raise BenchError(f"the rerun did not say 'nothing to do' (log {log}):\n    {tail(log)}")
            walls.append(measured.wall)
            rss.append(measured.max_rss_mb)
            print(f"  e: rerun over {n:,} finished rows: {_fmt(measured.wall)}, 0 requests, peak RSS {measured.max_rss_mb:.0f} MB", flush=True)
    return [Result("e", f"wall, rerun of a finished {n:,}-row output (0 requests sent)", "s", walls, target=10,
                   notes=[f"peak RSS {statistics.median(rss):.0f} MB"])]


def finished_output(manifest: Path, output: Path, base_url: str, n: int) -> str:
    """Write the Parquet output a complete run over `manifest` leaves (every row ok), as the CLI will see it."""
    table, fingerprint = finished_table(manifest, output, base_url, n)
    fresh(output)
    pq.write_table(table, output, compression="zstd")
    return fingerprint


def finished_table(manifest: Path, output: Path, base_url: str, n: int) -> tuple[pa.Table, str]:
    """The rows a complete run over url_manifest(n, with_ids=True) leaves, every one ok, and their fingerprint."""
    from pipeline.config import load_config
    from pipeline.resume import fingerprinter
    from pipeline.results import OUTPUT_SCHEMA

    config = load_config({"manifest": str(manifest), "output": str(output), "base_url": base_url}, environ=clean_env())
    fingerprint = fingerprinter(config)(config.prompt)
    ids, images = data.url_ids(n)
    usage = {"prompt_tokens": 2104, "completion_tokens": 14, "total_tokens": 2118}
    values: dict[str, Any] = {
        "id": ids, "image": images, "status": ["ok"] * n, "caption": ["A 1568×1176 landscape image, mostly gray, medium overall."] * n,
        "model": [config.model] * n, "finish_reason": ["stop"] * n, "prompt_tokens": [usage["prompt_tokens"]] * n,
        "completion_tokens": [usage["completion_tokens"]] * n, "total_tokens": [usage["total_tokens"]] * n,
        "attempts": [1] * n, "latency_ms": [12.5] * n, "response_id": [f"chatcmpl-sim-{i}" for i in range(n)],
        "completed_at": [int(time.time() * 1000)] * n, "fingerprint": [fingerprint] * n,
        "usage": [json.dumps(usage, separators=(",", ":"))] * n,
    }
    # Columns not filled above (errors, image facts of local files, usage details) are null, as for URL rows.
    columns = [pa.array(values[f.name], type=f.type) if f.name in values else pa.nulls(n, f.type) for f in OUTPUT_SCHEMA]
    return pa.Table.from_arrays(columns, schema=OUTPUT_SCHEMA), fingerprint


CPU_BOUND = {"a", "b", "e"}  # the scenarios whose figures other load on the machine would skew
SCENARIOS: dict[str, Callable[[Context], list[Result]]] = {
    "a": latency_bound, "b": overhead_bound, "c": rate_limited, "d": memory, "e": resume,
}
