"""Errors a user can cause, reported as one line and exit status 2."""

import argparse
import contextvars
import functools
import os
import sys


# how a command is named in its usage line and errors: python -m hpccnn.train, or hpccnn train when the console
# command (hpccnn.cli) runs it
COMMAND_FORM = contextvars.ContextVar("COMMAND_FORM", default="python -m hpccnn.{}")


def command_prog(command: str) -> str:
    """The command as the user typed it, for its parser's prog."""
    return COMMAND_FORM.get().format(command)


class UserError(Exception):
    """Bad input from the user: the message says what was wrong and what to do."""


class Parser(argparse.ArgumentParser):
    """argparse for every hpccnn command: a usage error is a UserError, so one line and exit 2."""

    def __init__(self, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(**kwargs)

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def cli(main):
    """Wraps a command-line entry point so that a UserError prints one line and exits 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        try:
            return main(argv)
        except UserCodeError as err:  # the user's traceback, then what to do
            print(err, file=sys.stderr)
            sys.exit(2)
        except UserError as err:
            print(f"hpccnn: error: {err}", file=sys.stderr)
            sys.exit(2)
        except BrokenPipeError:  # output piped into head, say, which has stopped reading: not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            sys.exit(141)  # as a shell reports a process ended by SIGPIPE

    return wrapper


class UserCodeError(UserError):
    """An exception raised inside the user's own code (their model function): the message is their traceback
    (their frames only) and a last line saying so; printed whole, exit status 2."""
