"""python -m hpccnn.guard: the command as users type it; its code is hpccnn.launching.guard."""

import sys

from hpccnn.launching.guard import main

if __name__ == "__main__":
    sys.exit(main())
