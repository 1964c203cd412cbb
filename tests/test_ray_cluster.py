"""--engine ray through the `pipeline` command on a two-node Ray cluster started on this machine
(`ray start --head`, `ray start --address`): the driver on the head, which has no CPU for actors, so
every answer comes from the second node. Then the driver is killed mid-run and a rerun finishes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pyarrow.dataset as pads
import pytest

import helpers
from pipeline.files import journal_path
from test_durability import make_manifest

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "ANYFAST_API_KEY": "sk-two-nodes-0123456789"}


@pytest.fixture(scope="module")
def two_nodes():
    temp = Path(f"/tmp/rayt-{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths live under it
    address = f"127.0.0.1:{helpers.free_port()}"
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp), "--disable-usage-stats"]
    try:
        subprocess.run([str(RAY), "start", "--head", "--port", address.split(":")[1], "--num-cpus", "0",
                        "--include-dashboard=false", *common], env=ENV, check=True, capture_output=True, timeout=120)
        subprocess.run([str(RAY), "start", "--address", address, "--num-cpus", "2", *common],
                       env=ENV, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        _stop(temp)


def _stop(temp: Path) -> None:
    """Stop this cluster's processes only (`ray stop` would stop every cluster on the machine)."""
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(temp) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(entry.name), 9)
        except (OSError, ValueError):
            continue
    shutil.rmtree(temp, ignore_errors=True)


def _start(manifest, out, base_url, address, *args):
    return subprocess.Popen([sys.executable, "-m", "pipeline", "caption", str(manifest), "-o", str(out), "--base-url", base_url,
                             "--engine", "ray", "--ray-address", address, "--concurrency", "4", *args],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_rows(driver, out, n, timeout=120):
    """Until the running driver has journaled n rows."""
    journal, deadline = journal_path(out), time.monotonic() + timeout
    while not (journal.exists() and journal.read_text().count("\n") >= n):
        assert driver.poll() is None, driver.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"the run never journaled {n} rows"
        time.sleep(0.1)


def test_a_killed_driver_on_a_two_node_cluster_then_a_rerun_gives_one_row_per_id(simulator, tmp_path, two_nodes):
    simulator.configure(latency=0.3)
    manifest = make_manifest(tmp_path, 40)
    out = tmp_path / "captions"  # a dataset output: each run adds a part
    driver = _start(manifest, out, simulator.base_url, two_nodes)
    _wait_for_rows(driver, out, 6)
    driver.kill()  # kill -9: the driver's journal is all that is left of its rows
    driver.wait()

    rerun = _start(manifest, out, simulator.base_url, two_nodes)
    _, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr[-2000:]
    summary = json.loads([line for line in stderr.splitlines() if '"summary"' in line][-1])["summary"]
    assert summary["skipped"] >= 6 and summary["ok"] == 40 - summary["skipped"]

    compact = subprocess.run([sys.executable, "-m", "pipeline", "compact", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert compact.returncode == 0, compact.stderr
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert sorted(r["id"] for r in rows) == sorted(f"r{i}" for i in range(40)) and all(r["status"] == "ok" for r in rows)
    assert max(c["requests"] for c in simulator.stats()["images"].values()) <= 2  # no id answered more than twice


def test_sigterm_stops_every_actor_taking_rows_and_keeps_what_was_answered(simulator, tmp_path, two_nodes):
    simulator.configure(latency=0.3)
    manifest = make_manifest(tmp_path, 60)
    out = tmp_path / "captions"
    driver = _start(manifest, out, simulator.base_url, two_nodes)
    _wait_for_rows(driver, out, 4)
    driver.send_signal(signal.SIGTERM)
    _, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 143, stderr[-2000:]
    summary = json.loads([line for line in stderr.splitlines() if '"summary"' in line][-1])["summary"]
    rows = pads.dataset(out, format="parquet").to_table().to_pylist()
    assert summary["stopped_by"] == "SIGTERM" and 4 <= len(rows) < 60
    assert len(rows) == simulator.stats()["requests"]  # every answer paid for was written
