"""python -m hpccnn.submit: the command as users type it; its code is hpccnn.launching.submit."""

import sys

from hpccnn.launching.submit import main

if __name__ == "__main__":
    sys.exit(main())
