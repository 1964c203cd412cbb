"""`python -m pipeline` and the `pipeline` command."""

import sys


def run() -> int:
    from . import nopandas

    nopandas.install()
    from .cli import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
