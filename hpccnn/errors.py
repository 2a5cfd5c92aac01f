"""Errors a user can cause, reported as one line and exit status 2."""

import functools
import sys


class UserError(Exception):
    """Bad input from the user: the message says what was wrong and what to do."""


def cli(main):
    """Wraps a command-line entry point so that a UserError prints one line and exits 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserError as err:
            print(f"hpccnn: error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
