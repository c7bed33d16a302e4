"""User-facing errors: one line that names the file or flag and the fix, exit code 2, no traceback."""
import functools
import sys


class UserError(Exception):
    """A mistake in a path, flag or data file that the user can fix.

    Programming errors raise ordinary exceptions; only this one is turned into a one-line message.
    """


def message(exc: UserError) -> str:
    """The one line of a :class:`UserError`, also when a data-loader worker raised it: PyTorch
    re-raises a worker's exception as the same type with "Caught UserError in DataLoader worker
    process N" and the worker's traceback as its message, whose last line holds the original."""
    text = str(exc).strip()
    if "Traceback" in text or "\n" in text:
        last = text.splitlines()[-1]
        text = last.split("UserError: ", 1)[-1] if "UserError: " in last else last
    return text


def exit_on_user_error(main):
    """Decorate a script's ``main`` so a :class:`UserError` prints ``error: <message>`` and exits 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {message(exc)}", file=sys.stderr, flush=True)
            sys.exit(2)

    return wrapper


class Refused(Exception):
    """A file outside its budget (a pickle, a zip, a loaded object); the message says why and the
    caller, which knows the file, turns it into a :class:`UserError`."""
