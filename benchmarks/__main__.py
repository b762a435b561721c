"""``python -m annotator.bench``: see :mod:`annotator.bench.benchmark`."""

import sys

from annotator.bench.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
