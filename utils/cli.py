"""Command-line conventions shared by every script.

* A list of numbers (scales, thresholds) is given either way: ``--scales 1.0 1.5`` or
  ``--scales 1.0,1.5`` (or quoted ``"1.0 1.5"``); :func:`add_numbers` parses all of them.
* ``--local-rank`` / ``--local_rank`` from ``python -m torch.distributed.launch`` is accepted
  everywhere (:func:`add_launcher_flags`); the rank itself is read from the environment.
  ``--join_timeout`` bounds the wait for the other ranks when the process group is joined.
* Bad values become one-line errors that name the flag and the rule (:func:`check`).
* ``--help`` prints each default once (:class:`utils.help_format.DefaultsHelpFormatter`).
"""
import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

from utils.errors import UserError
from utils.help_format import DefaultsHelpFormatter


def _numbers(text: str) -> list:
    values = []
    for part in text.replace(",", " ").split():
        try:
            values.append(float(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a number; give numbers separated by spaces or commas, e.g. 0.5,2.0") from None
    return values


class _NumbersAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        flat = [v for chunk in values for v in chunk]
        if not flat:
            parser.error(f"{option_string} needs at least one number")
        setattr(namespace, self.dest, tuple(flat))


def add_numbers(parser, *names: str, default: Optional[Sequence[float]], help: str, **kwargs) -> None:
    """A flag taking one or more numbers, space- or comma-separated; stored as a tuple of floats
    (``default`` None: left unset)."""
    parser.add_argument(*names, nargs="+", type=_numbers, action=_NumbersAction,
                        default=None if default is None else tuple(default), metavar="N", help=help,
                        **kwargs)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def add_launcher_flags(parser) -> None:
    from .distributed import JOIN_TIMEOUT_S
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                        help="set by python -m torch.distributed.launch; the rank is read from the "
                             "environment (LOCAL_RANK), so this value is only accepted")
    parser.add_argument("--join_timeout", type=_positive_seconds, default=JOIN_TIMEOUT_S, metavar="SECONDS",
                        help="with several processes: a rank that has not joined the process group "
                             "after this many seconds prints one line and exits (status 1), so that "
                             "torchrun can restart the workers (docs/usage.md#restarts-and-joining)")


def check(condition: bool, message: str) -> None:
    """Raise a one-line :class:`UserError` with ``message`` unless ``condition``."""
    if not condition:
        raise UserError(message)


def check_scales(name: str, values: Sequence[float], count: Optional[int] = None,
                 ordered: bool = False) -> None:
    """Every value positive; with ``count`` exactly that many; with ``ordered`` ascending."""
    check(len(values) > 0 and all(v > 0 for v in values),
          f"{name} {','.join(f'{v:g}' for v in values)}: every value must be positive")
    if count is not None:
        check(len(values) == count, f"{name} takes {count} values (got {len(values)}), "
                                    f"e.g. {name} 0.5,2.0")
    if ordered:
        check(list(values) == sorted(values), f"{name} {','.join(f'{v:g}' for v in values)}: "
                                              "give the smaller value first")


def check_range(name: str, value: float, lo: float, hi: float, lo_open: bool = False,
                hi_open: bool = False) -> None:
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    check(ok, f"{name} {value:g} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


@dataclass(frozen=True)
class Range:
    """The values a numeric flag may take: above ``lo`` (strictly with ``lo_open``) and, with
    ``hi``, below it (strictly with ``hi_open``). :meth:`check` raises the flag's one-line error."""
    lo: float
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False

    def check(self, flag: str, value: float) -> None:
        if self.hi is not None:
            check_range(flag, value, self.lo, self.hi, self.lo_open, self.hi_open)
        elif self.lo_open:
            check(value > self.lo, f"{flag} must be positive (got {value})" if self.lo == 0 else
                  f"{flag} must be > {self.lo:g} (got {value})")
        else:
            check(value >= self.lo, f"{flag} must be >= {self.lo:g} (got {value})")


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1)                                   # [0, 1]
OPEN_UNIT = Range(0, 1, lo_open=True, hi_open=True)  # (0, 1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (``error: <prog>: <message>``, exit 2) instead of the usage
    block; ``--help`` still shows everything, each default once (:class:`DefaultsHelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        import sys
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)
