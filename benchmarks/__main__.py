"""``python -m benchmarks``: see :mod:`benchmarks.benchmark`."""

import sys

from benchmarks.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
