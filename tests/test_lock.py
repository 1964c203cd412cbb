"""lock.py: one run per output."""

import os
import subprocess
import sys

import pytest

from pipeline.errors import OutputLocked
from pipeline.files import lock_path
from pipeline.lock import OutputLock


def test_lock_names_the_holder_and_is_released(tmp_path):
    out = tmp_path / "o.parquet"
    with OutputLock(out):
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()}"):
            OutputLock(out).acquire()
    with OutputLock(out):  # free again once released
        pass


def test_a_dead_holder_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "o.parquet"

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; from pipeline.lock import OutputLock; "
                               f"OutputLock(Path({str(out)!r})).acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLocked, match=f"pid {holder.pid}"):
        OutputLock(out).acquire()
    holder.kill()
    holder.wait()
    with OutputLock(out):  # the kernel dropped the flock with the process
        assert lock_path(out).exists()
