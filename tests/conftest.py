import pytest

import helpers
from pipeline.simulator import serve_in_thread


@pytest.fixture
def simulator():
    """A fresh simulator on 127.0.0.1:<free port>, stopped after the test."""
    with serve_in_thread() as handle:
        yield handle


@pytest.fixture
def images(tmp_path):
    """images(n, size=(40, 30)) -> n distinct PNGs under tmp_path/img."""
    return lambda n, size=(40, 30): helpers.make_images(tmp_path / "img", n, size)


@pytest.fixture
def caption(simulator, tmp_path):
    """caption(manifest, **flags) -> (summary, {id: row}): the job in-process against this test's simulator."""

    def run(manifest, **flags):
        flags.setdefault("output", tmp_path / "out.parquet")
        return helpers.caption(manifest, flags.pop("output"), flags.pop("base_url", simulator.base_url), "sk-fixture-key-0123", **flags)

    return run
