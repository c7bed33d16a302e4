"""``--help`` that states each flag's default once and correctly (every script's parser uses it).

It belongs to the shared ground (it imports nothing of the project), so that ``python -m
datasets.prepare`` and ``python -m datasets.synthetic`` use it too; ``utils.cli.ArgumentParser``
takes it as its formatter.
"""
import argparse
import re

# what states a default in a help text: "(default: X)", "(default X ...)" or "default: X"
DEFAULT_STATEMENT = re.compile(r"\(default\b|\bdefault:", re.I)


def show_default(value) -> str:
    """A default as it is typed on the command line: lists and tuples space-separated."""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def is_switch(action: argparse.Action) -> bool:
    """``store_true`` / ``store_false`` / ``store_const``: the flag takes no value and its default
    is simply the state without the flag (``--x/--no-x`` pairs are not switches in this sense)."""
    return action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each flag's help ends with ``(default: X)``, printed once, unless

    * the help already states its default (``(default ...``, ``default:`` or ``%(default)s``),
    * the default is None (nothing is set; the help says what happens without the flag),
    * the flag is a switch (see :func:`is_switch`), whose default is the absence of the flag.

    A required flag ends with ``(required)`` instead. Descriptions keep their line breaks.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required:
            return text if re.search(r"\brequired\b", text) else f"{text} (required)".strip()
        if "%(default)" in text or DEFAULT_STATEMENT.search(text):
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS or is_switch(action):
            return text
        shown = show_default(default).replace("%", "%%")
        return f"{text} (default: {shown})".strip()
