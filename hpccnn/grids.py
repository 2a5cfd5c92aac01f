"""python -m hpccnn.grids: the command as users type it; its code is hpccnn.launching.grid_task."""

import sys

from hpccnn.launching.grid_task import main

if __name__ == "__main__":
    sys.exit(main())
