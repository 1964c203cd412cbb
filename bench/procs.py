"""Processes the bench starts: the simulator, and measured runs of a command.

Every child is registered and stopped by `stop_all()` (run.py calls it in a
`finally`, and turns SIGTERM into the same path as Ctrl-C), so nothing outlives
the bench. The only address ever contacted is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
LOOPBACK = "127.0.0.1"

_children: dict[int, subprocess.Popen] = {}
# No proxy, ever: a proxy variable in the environment must not route loopback traffic elsewhere.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def cores() -> tuple[set[int] | None, set[int] | None]:
    """(client cores, simulator cores): the first core for the client, the last for the simulator; None = no pinning."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return {available[0]}, {available[-1]}


def machine_cpu_seconds() -> float:
    """CPU time every process on the machine has used since boot, stolen time included (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(limit: float = 0.1, patience: float = 60.0) -> float:
    """Wait until the rest of the machine uses under `limit` cores (over 0.5 s), `patience` seconds at most; the last load seen."""
    deadline = time.monotonic() + patience
    while True:
        before = machine_cpu_seconds()
        time.sleep(0.5)
        load = (machine_cpu_seconds() - before) / 0.5
        if load < limit or time.monotonic() > deadline:
            return load


def clean_env(**extra: str) -> dict[str, str]:
    """The bench's environment for children: nothing that could point the job elsewhere, a dummy key.

    Bytecode is cached as in a normal install, so start-up is not inflated by compiling every module each time.
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CAPTION_") and k not in ("OPENAI_API_KEY", "ANYFAST_API_KEY", "PIPELINE_DEBUG", "PYTHONDONTWRITEBYTECODE")
           and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update({"ANYFAST_API_KEY": "bench", "PYTHONPATH": str(REPO), "CAPTION_LOG_FORMAT": "json"})
    env.update(extra)
    return env


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Every child is a session leader: signal its whole group (a measured run's launcher and the job under it)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_all() -> None:
    """Terminate every child still running (SIGTERM, then SIGKILL after 5 s)."""
    for proc in list(_children.values()):
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + 5
    for pid, proc in list(_children.items()):
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        _children.pop(pid, None)


# --- the simulator --------------------------------------------------------------


class Simulator:
    """`python -m pipeline simulate --port 0 ...` in its own process, pinned to `cpus`."""

    def __init__(self, knobs: Sequence[str] = (), cpus: set[int] | None = None, log: Path | None = None):
        self.knobs = list(knobs)
        self.cpus = cpus
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def command(self) -> list[str]:
        return [PYTHON, "-m", "pipeline", "simulate", "--host", LOOPBACK, "--port", "0", *self.knobs]

    def __enter__(self) -> "Simulator":
        cmd = self.command()
        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=stderr,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        if self.cpus:  # before it starts any thread (threads inherit it); no preexec_fn, which is unsafe with threads
            os.sched_setaffinity(self.proc.pid, self.cpus)
        if self.log:
            stderr.close()
        _children[self.proc.pid] = self.proc
        line = self.proc.stdout.readline().decode().strip()  # blocks until ready, or EOF if it died
        prefix = "simulator listening on "
        if not line.startswith(prefix):
            self.__exit__()
            raise RuntimeError(f"simulator did not start ({' '.join(cmd)}): {line or 'no output'}")
        self.base_url = line[len(prefix):]
        if urlsplit(self.base_url).hostname != LOOPBACK:
            self.__exit__()
            raise RuntimeError(f"simulator is not on {LOOPBACK}: {self.base_url}")
        self.root = self.base_url.removesuffix("/v1")
        return self

    def __exit__(self, *exc: Any) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()
        _children.pop(proc.pid, None)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.root + path, data=data, method=method, headers={"Content-Type": "application/json"})
        with _http.open(request, timeout=60) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        """Counters without the recorded bodies and per-image table (large, and not needed here)."""
        stats = self._call("GET", "/_sim/stats")
        stats.pop("bodies", None)
        stats["images"] = len(stats.get("images", {}))
        return stats

    def cpu_seconds(self) -> float:
        """User + system CPU the simulator has used so far (from /proc), to show it is not the bottleneck."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        """Zero the counters and empty the rate-limit windows."""
        self._call("POST", "/_sim/reset")


class CheapServer(Simulator):
    """bench/cheap_server.py: far cheaper per request than the client, so an overhead-bound run measures the client."""

    def command(self) -> list[str]:
        return [PYTHON, str(REPO / "bench" / "cheap_server.py"), "--port", "0", *self.knobs]


# --- measured runs ----------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    wall: float  # seconds, from spawn to exit (start-up included)
    cpu: float  # user + system seconds of the child (its threads included)
    user: float
    system: float
    max_rss_mb: float  # peak resident set, MiB
    returncode: int


# Peak RSS cannot be read from the bench's own wait4: a child's ru_maxrss starts at the high-water mark
# of the process it was forked from (the kernel carries it across exec), and the bench holds hundreds of
# MB at times. So a minimal interpreter (`python -S`, ~10 MB) spawns the job, waits for it and reports.
_LAUNCHER = """
import json, os, signal, sys, time
report, cpus, argv = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
if cpus:
    os.sched_setaffinity(0, cpus)
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda signum, frame: os.kill(pid, signum))
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(report, "w") as f:
    json.dump({"wall": wall, "user": usage.ru_utime, "system": usage.ru_stime, "max_rss_kb": usage.ru_maxrss,
               "returncode": os.waitstatus_to_exitcode(status)}, f)
"""


def run_measured(cmd: Sequence[str], *, cpus: set[int] | None, log: Path, env: dict[str, str] | None = None,
                 timeout: float = 3600) -> Measured:
    """Run cmd to the end, pinned to `cpus`: wall clock from spawn to exit, CPU and peak RSS from wait4. Output goes to `log`."""
    report = log.with_suffix(".rusage.json")
    report.unlink(missing_ok=True)
    launcher = [PYTHON, "-S", "-c", _LAUNCHER, str(report), json.dumps(sorted(cpus or ())), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(launcher, cwd=REPO, env=env or clean_env(), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _children[proc.pid] = proc
    try:
        proc.wait(timeout)  # Ctrl-C interrupts this; stop_all() then ends the run
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        raise TimeoutError(f"{' '.join(cmd[:6])} ... killed after {timeout:g} s (log: {log})") from None
    finally:
        if proc.returncode is not None:
            _children.pop(proc.pid, None)
    if proc.returncode != 0 or not report.exists():
        raise RuntimeError(f"the launcher failed (exit {proc.returncode}) for {' '.join(cmd[:6])} ... (log: {log})")
    r = json.loads(report.read_text())
    report.unlink()
    return Measured(r["wall"], r["user"] + r["system"], r["user"], r["system"], r["max_rss_kb"] / 1024, r["returncode"])
