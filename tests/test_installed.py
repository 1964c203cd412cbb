"""The package works installed, not only from a clone: a wheel in a fresh venv, `pipeline demo` from an empty folder."""

import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_installed_in_a_fresh_venv_runs_the_demo_from_an_empty_folder(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, ROOT],
                   check=True, cwd=tmp_path, capture_output=True)
    [wheel] = wheels.glob("pipeline-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], check=True,
                   capture_output=True)
    # The dependencies come from this test's own environment (no network), but not this clone's
    # editable install: a .pth line adds a folder to sys.path without running the .pth files inside it.
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps-from-the-test-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    empty = tmp_path / "empty"
    empty.mkdir()
    where = subprocess.run([python, "-c", "import pipeline; print(pipeline.__file__)"], cwd=empty, capture_output=True, text=True)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # the installed copy, not the clone

    demo = subprocess.run([venv / "bin" / "pipeline", "demo"], cwd=empty, capture_output=True, text=True, timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "job file not found" not in demo.stderr
    rows = pq.read_table(empty / "output" / "demo.parquet").to_pylist()
    assert len(rows) == 10
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 9 and all(r["cost_usd"] for r in ok)  # the shipped prices were found
    assert (empty / "output" / "demo.parquet.html").exists()
