"""python -m hpccnn.report: the command as users type it; its code is hpccnn.reports.report."""

import sys

from hpccnn.reports.report import main

if __name__ == "__main__":
    sys.exit(main())
