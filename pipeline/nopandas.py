"""An import hook that makes pandas look absent, for the `pipeline` command only.

pyarrow imports pandas (0.5-1 s) on its first array whenever pandas is installed, only to
check whether it was handed a DataFrame; the command never hands it one, and pyarrow works
on without pandas when the import fails. Installed by __main__, not by cli.main: a notebook
or a test that calls main() may want pandas afterwards. Ray Data needs pandas, so
`--engine ray` takes the hook out again before it imports Ray.
"""

import sys


class _WithoutPandas:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (the pipeline command does not use it)", name=name)
        return None


def install() -> None:
    if "pandas" not in sys.modules and _WithoutPandas not in sys.meta_path:
        sys.meta_path.insert(0, _WithoutPandas)


def remove() -> None:
    while _WithoutPandas in sys.meta_path:
        sys.meta_path.remove(_WithoutPandas)
