"""python -m hpccnn.bench: the command as users type it; its code is hpccnn.benchmark.bench."""

import sys

from hpccnn.benchmark.bench import main

if __name__ == "__main__":
    sys.exit(main())
