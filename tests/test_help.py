"""Every script's ``--help`` prints each flag's default once and correctly.

The scripts are found, not listed: every tracked ``.py`` file outside tests/ that runs as a program
(``if __name__ == "__main__"``) is started with ``--help`` and the parser that prints the help is
caught, so a flag added to any script later is checked too.
"""
import argparse
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys

import pytest

from utils.help_format import DefaultsHelpFormatter, is_switch, show_default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATED = re.compile(r"\(default\b|\bdefault:", re.I)       # "(default: X)", "(default X ...)", "default: X"


def _scripts():
    try:
        out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = [os.path.relpath(os.path.join(d, f), REPO) for d, _, fs in os.walk(REPO) for f in fs
               if f.endswith(".py") and ".venv" not in d]
    found = []
    for f in sorted(out):
        if f.startswith(("tests/", ".")) or not os.path.isfile(os.path.join(REPO, f)):
            continue
        text = open(os.path.join(REPO, f), encoding="utf-8").read()
        if re.search(r"""__name__ == ["']__main__["']""", text):
            found.append(f)
    return found


class _Caught(Exception):
    def __init__(self, parser):
        self.parser = parser


def _parser_of(script: str) -> argparse.ArgumentParser:
    """The parser that answers ``script --help`` (run in this process)."""
    real = argparse.ArgumentParser.print_help

    def catch(self, file=None):
        raise _Caught(self)

    argv, path = sys.argv, list(sys.path)
    sys.argv = [script, "--help"]
    sys.path.insert(0, REPO)
    argparse.ArgumentParser.print_help = catch
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if script.startswith("datasets/"):              # package modules: python -m datasets.x
                runpy.run_module(script[:-3].replace("/", "."), run_name="__main__")
            else:
                runpy.run_path(os.path.join(REPO, script), run_name="__main__")
    except _Caught as caught:
        return caught.parser
    finally:
        argparse.ArgumentParser.print_help = real
        sys.argv, sys.path[:] = argv, path
    pytest.fail(f"{script} --help did not print a parser's help")


def _rendered(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of ``action`` exactly as ``--help`` prints it, on one line."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split())


def _problems(parser: argparse.ArgumentParser):
    problems = []
    if not issubclass(parser.formatter_class, DefaultsHelpFormatter):
        problems.append(f"formatter {parser.formatter_class.__name__} is not DefaultsHelpFormatter")
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.help == argparse.SUPPRESS:
            continue
        name = "/".join(action.option_strings) or action.dest
        default = action.default
        has_value = default is not None and default is not argparse.SUPPRESS and not is_switch(action)
        if action.help is None:
            if has_value or action.required:
                problems.append(f"{name}: no help, so its default or requirement is not printed")
            continue
        text = _rendered(parser, action)
        if len(STATED.findall(text)) > 1:
            problems.append(f"{name}: more than one default in {text!r}")
        if re.search(r"default:? None\b", text):
            problems.append(f"{name}: prints default None in {text!r}")
        if action.required and not re.search(r"\brequired\b", text):
            problems.append(f"{name}: required but its help does not say so: {text!r}")
        if is_switch(action) and re.search(r"default:? (True|False)\b", text):
            problems.append(f"{name}: a switch printing its destination's default: {text!r}")
        if has_value and not action.required:
            if not STATED.search(text):
                problems.append(f"{name}: default {default!r} not printed: {text!r}")
            elif show_default(default) not in text and str(default) not in text:
                problems.append(f"{name}: printed default differs from the real one {default!r}: {text!r}")
    return problems


SCRIPTS = _scripts()


def test_the_scripts_are_found():
    for expected in ("train_final_voc.py", "eval_seg_voc.py", "infer.py", "demo.py", "convert_voc_rgb.py",
                     "visualize_cams.py", "datasets/prepare.py", "benchmarks/bench_train.py"):
        assert expected in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_each_default_once_and_correctly(script):
    parser = _parser_of(script)
    problems = _problems(parser)
    assert not problems, f"{script} --help:\n" + "\n".join(problems)


def test_the_rule_catches_what_it_is_meant_to():
    """The checks fail on the mistakes they exist for (a parser written the old way)."""
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--work_dir", help="run folder (default: work_dirs/<time>)")
    p.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True, help="dense CRF")
    p.add_argument("--no_crf", dest="crf", action="store_false", help="alias of --no-crf")
    p.add_argument("--data", help="the data folder")
    p.add_argument("--size", type=int, default=448)
    found = "\n".join(_problems(p))
    for expected in ("not DefaultsHelpFormatter", "--work_dir: more than one default",
                     "--data: prints default None", "--no_crf: a switch", "--size: no help"):
        assert expected in found, found

    q = argparse.ArgumentParser(formatter_class=DefaultsHelpFormatter)
    q.add_argument("--work_dir", help="run folder (default: work_dirs/<time>)")
    q.add_argument("--crf", action=argparse.BooleanOptionalAction, default=True, help="dense CRF")
    q.add_argument("--no_crf", dest="crf", action="store_false", help="alias of --no-crf")
    q.add_argument("--model_path", required=True, help="checkpoint")
    q.add_argument("--scales", nargs="+", type=float, default=(1.0, 1.5), help="scales")
    q.add_argument("--lr", type=float, default=6e-5, help="learning rate (default: 1e-4)")
    q.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                   help="weights of the tag, else the family's default")
    assert _problems(q) == ["--lr: printed default differs from the real one 6e-05: "
                            "'learning rate (default: 1e-4)'"]
    text = " ".join(q.format_help().split())
    assert "dense CRF (default: True)" in text and "alias of --no-crf --model_path" in text
    assert "checkpoint (required)" in text and "scales (default: 1.0 1.5)" in text
    assert "else the family's default (default: True)" in text
