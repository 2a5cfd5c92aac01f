"""python -m hpccnn.grids: the command as users type it; its code is hpccnn.models.grids."""

import sys

from hpccnn.models.grids import main

if __name__ == "__main__":
    sys.exit(main())
