"""pipeline: batch image captioning against OpenAI-compatible vision APIs, with results in Parquet.

From a notebook:

    from pipeline import load_config, run_job
    summary = run_job(load_config({"manifest": "photos/", "output": "captions.parquet"}))
"""

__version__ = "0.1.0"

from .config import JobConfig, load_config  # noqa: E402
from .runner import RunSummary, run_job  # noqa: E402

__all__ = ["JobConfig", "RunSummary", "load_config", "run_job", "__version__"]
