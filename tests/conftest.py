import pytest

from pipeline.simulator import serve_in_thread


@pytest.fixture
def simulator():
    """A fresh simulator on 127.0.0.1:<free port>, stopped after the test."""
    with serve_in_thread() as handle:
        yield handle
