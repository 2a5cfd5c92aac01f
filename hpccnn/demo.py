"""python -m hpccnn.demo: the command as users type it; its code is hpccnn.launching.demo."""

import sys

from hpccnn.launching.demo import main

if __name__ == "__main__":
    sys.exit(main())
