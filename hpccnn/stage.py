"""python -m hpccnn.stage: the command as users type it; its code is hpccnn.data.stage."""

import sys

from hpccnn.data.stage import main

if __name__ == "__main__":
    sys.exit(main())
