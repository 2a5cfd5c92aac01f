"""python -m hpccnn.train: the command as users type it; its code is hpccnn.training.train."""

import sys

from hpccnn.training.train import main

if __name__ == "__main__":
    sys.exit(main())
