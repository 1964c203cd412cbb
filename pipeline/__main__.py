"""`python -m pipeline` and the `pipeline` command."""

import sys


class _WithoutPandas:
    """An import hook that makes pandas look absent.

    pyarrow imports pandas (0.5-1 s) on its first array whenever pandas is installed, only to
    check whether it was handed a DataFrame; this process never hands it one, and pyarrow works
    on without pandas when the import fails. Installed here, not in cli.main: a notebook or a
    test that calls main() may want pandas afterwards.
    """

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (the pipeline command does not use it)", name=name)
        return None


def run() -> int:
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas)
    from .cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
