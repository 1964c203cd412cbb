"""Start-up: what a run may not need is imported only when it is needed (issue 13: a one-row run's wall time)."""

import subprocess
import sys

from PIL import Image

LOADED = "import sys; print(sorted(m for m in ('tqdm', 'tenacity', 'pipeline.dryrun', 'pyarrow.compute', 'ray', 'fsspec') if m in sys.modules))"


def test_importing_the_job_loads_no_bar_no_retry_library_and_no_dry_run():
    result = subprocess.run([sys.executable, "-c", f"import pipeline.cli, pipeline.runner; {LOADED}"], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_a_cron_run_without_retries_never_imports_tqdm_or_tenacity(simulator, tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    (tmp_path / "m.txt").write_text("a.png\n")
    # As the `pipeline` command runs it (pipeline.__main__.run: pandas kept out, as pyarrow would import it).
    code = (f"import sys; sys.argv = ['pipeline', 'caption', {str(tmp_path / 'm.txt')!r}, '-o', {str(tmp_path / 'o.parquet')!r}, "
            f"'--base-url', {simulator.base_url!r}]; from pipeline.__main__ import run; code = run(); "
            + LOADED.replace("import sys; ", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"ANYFAST_API_KEY": "sk-startup-0123456789", "PATH": ""})
    assert result.returncode == 0, result.stderr
    loaded = eval(result.stdout.strip().splitlines()[-1])
    assert "tqdm" not in loaded and "tenacity" not in loaded and "pipeline.dryrun" not in loaded  # stderr is not a terminal
    assert "pyarrow.compute" not in loaded  # a first run into a new output has no old rows to filter (~45 ms to import)
    assert "ray" not in loaded and "fsspec" not in loaded  # the local engine over local files needs neither
