"""Every script's parser as data: its ``--help`` text at 100 columns and each action's declaration
(dest, option strings, default, type, choices, nargs, help). ``tests/fixtures/cli_baseline.json``
holds this capture as the scripts' parsers were before the settings became one table;
``tests/test_cli_unchanged.py`` compares the scripts of today with it.

Regenerate (only when a flag is meant to change): ``python -m tests.helpers.cli_capture OUT.json``.
"""
import json
import os
import sys


def describe(parser) -> dict:
    actions = [{"dest": a.dest, "options": list(a.option_strings), "default": repr(a.default),
                "type": getattr(a.type, "__name__", repr(a.type)), "choices": repr(a.choices),
                "nargs": repr(a.nargs), "help": a.help, "required": a.required,
                "action": type(a).__name__}
               for a in parser._actions]
    return {"help": parser.format_help(), "actions": actions}


def capture(scripts) -> dict:
    from tests.test_help import _parser_of
    os.environ["COLUMNS"] = "100"
    return {s: describe(_parser_of(s)) for s in scripts}


if __name__ == "__main__":
    from tests.test_help import SCRIPTS
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(capture(SCRIPTS), f, indent=1, sort_keys=True)
