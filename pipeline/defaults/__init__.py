"""Files the package ships and reads with importlib.resources: prices, the demo job, the sample images."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def default_file(name: str) -> Path:
    """A shipped file as a path (the package is installed as files, never zipped: see pyproject.toml)."""
    return Path(str(files(__name__).joinpath(name)))
