"""`make demo`: the real job, end to end, on sample_data/ against the bundled simulator on loopback.

The simulator runs as its own process on a free port, with some latency and a
few injected 429s and 5xx so the demo shows retries at work; the job runs
through the real CLI, exactly as a user would run it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from .defaults import default_file
from .report import default_html_path, write_report

DEMO_JOB = default_file("demo.toml")
SIMULATOR_ARGS = ["--latency", "0.3", "--jitter", "0.2", "--rate-429", "0.15", "--rate-5xx", "0.05", "--retry-after", "0.5", "--seed", "7"]


def run_demo(output: str) -> int:
    simulator = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "simulate", "--port", "0", *SIMULATOR_ARGS],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,
    )
    try:
        ready = simulator.stdout.readline().strip()
        if not ready.startswith("simulator listening on "):
            print(f"error: the simulator did not start ({ready or 'no output'})", file=sys.stderr)
            return 2
        base_url = ready.rsplit(" ", 1)[-1]
        print(f"demo: simulator on {base_url}; captioning sample_data/ ...", file=sys.stderr)
        env = {**os.environ, "ANYFAST_API_KEY": "demo-key-for-the-local-simulator"}
        code = subprocess.call(
            [sys.executable, "-m", "pipeline", "caption", "--job", str(DEMO_JOB), "--base-url", base_url, "--output", output, "--redo"],
            env=env,
        )
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)
    if not Path(output).exists():
        print(f"demo: the job wrote no output (exit code {code})", file=sys.stderr)
        return code or 1
    _show(Path(output))
    report = write_report(Path(output), default_html_path(Path(output)))
    print(f"\ndemo: exit code {code} (1 = some rows failed: sample_data/broken.jpg is broken on purpose)")
    print(f"demo: output written to {output}")
    print(f"demo: review page: {report.line()}; open it in a browser")
    return 0 if code in (0, 1) else code


def _die_with_parent() -> None:
    """Linux: the simulator gets SIGTERM if the demo is killed, instead of lingering on its port."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _show(output: Path) -> None:
    table = pq.read_table(output, columns=["id", "status", "total_tokens", "attempts", "caption", "error"])
    print()
    for row in table.to_pylist():
        text = row["caption"] if row["status"] == "ok" else f"[{row['error']}]"
        print(f"  {row['id']:<18} {row['status']:<5} {row['total_tokens'] or 0:>5} tok  {row['attempts']} try  {text[:90]}")
