"""The scripts' flags, defaults and ``--help`` texts are those of the committed baseline
(``tests/fixtures/cli_baseline.json``, captured from the parsers before the settings were declared
in one table): a restructuring of where the settings live changes none of them."""
import json
import os

import pytest

from tests.helpers.cli_capture import capture

BASELINE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "cli_baseline.json")
with open(BASELINE, encoding="utf-8") as _f:
    EXPECTED = json.load(_f)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_the_parser_of_each_script_is_unchanged(script, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    now = capture([script])[script]
    want = EXPECTED[script]
    assert [a["dest"] for a in now["actions"]] == [a["dest"] for a in want["actions"]]
    for got, expected in zip(now["actions"], want["actions"]):
        assert got == expected, got["dest"]
    assert now["help"] == want["help"]


def test_the_check_sees_a_changed_default():
    """The comparison is not vacuous: the training parser with one default changed differs."""
    from tests.helpers.cli_capture import describe
    from tests.test_help import _parser_of
    parser = _parser_of("train_final_voc.py")
    parser.set_defaults(high_thre=0.71)
    changed = describe(parser)
    assert changed["actions"] != EXPECTED["train_final_voc.py"]["actions"]
