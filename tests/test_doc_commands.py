"""The commands and flags that README.md and docs/*.md give are the scripts' own.

* Every command of a ```bash block that starts one of this project's programs (``python X.py``,
  ``python -m datasets.X``, through ``torch.distributed.run`` or an sbatch file of
  ``scripts/slurm/``) parses with that program's parser: a renamed flag, a wrong choice or a value
  of the wrong type in the docs fails here.
* Every ``--flag`` written in backticks anywhere in those pages is a flag of one of the programs
  (or of the launchers and tools named in ``OTHER_TOOLS``).
"""
import argparse
import contextlib
import glob
import io
import os
import re
import shlex

import pytest

from tests.test_help import _parser_of, _scripts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
PYTHONS = {"python", "python3", ".venv/bin/python", "$PYTHON"}
# flags of programs that are not this project's: torchrun, sbatch / srun, pip, pytest, make
OTHER_TOOLS = {"--nproc_per_node", "--nnodes", "--node_rank", "--master_addr", "--master_port",
               "--max-restarts", "--max_restarts", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id",
               "--shutdown-timeout", "--signal", "--requeue", "--time", "--cpus-per-task", "--ntasks-per-node",
               "--kill-on-bad-exit", "--open-mode", "--output", "--gres", "--index-url", "--full", "--batch"}


def _parsers():
    found = {}
    for script in _scripts():
        found[script] = _parser_of(script)
    return found


@pytest.fixture(scope="module")
def parsers():
    return _parsers()


def _blocks(text: str):
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def _commands(block: str):
    """The block's command lines: continuations joined, comments dropped."""
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            lines.append(current.strip())
        current = ""
    return lines


def _sbatch_script(path: str) -> str:
    return re.search(r"^SCRIPT=(\S+)", open(os.path.join(REPO, path)).read(), re.M).group(1)


def _invocation(tokens):
    """``(program, arguments)`` of a command line that starts one of this project's programs."""
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):          # VAR=value prefixes
        tokens = tokens[1:]
    if len(tokens) >= 2 and tokens[0] == "sbatch" and tokens[1].startswith("scripts/slurm/"):
        return _sbatch_script(tokens[1]), tokens[2:]
    if not tokens or tokens[0] not in PYTHONS:
        return None
    rest = tokens[1:]
    if rest[:2] == ["-m", "torch.distributed.run"]:
        rest = rest[2:]
        while rest and not rest[0].endswith(".py"):             # the launcher's own flags
            rest = rest[1:]
    if rest[:1] == ["-m"] and len(rest) > 1:
        module = rest[1].replace(".", "/") + ".py"
        return (module, rest[2:]) if os.path.isfile(os.path.join(REPO, module)) else None
    if rest and rest[0].endswith(".py"):
        return rest[0], rest[1:]
    return None


def _optional_parts(line: str) -> str:
    """``[--flag value]`` taken as given, ``[--a 1 | --b 2]`` as its first alternative."""
    return re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split("|")[0], line)


def _arguments(args):
    """Placeholders for the rest of a command line (``...``, ``flags``) dropped."""
    return [a for a in args if a not in ("...", "flags")]


def _documented_commands():
    found = []
    for page in PAGES:
        for block in _blocks(open(os.path.join(REPO, page), encoding="utf-8").read()):
            for line in _commands(block):
                call = _invocation(shlex.split(_optional_parts(line)))
                if call is not None:
                    found.append((page, line, *call))
    return found


def test_the_pages_give_commands_of_every_main_program():
    programs = {program for _, _, program, _ in _documented_commands()}
    assert {"train_final_voc.py", "train_final_coco.py", "eval_seg_voc.py", "eval_seg_coco_ddp.py",
            "eval_cam_voc.py", "convert_voc_rgb.py", "visualize_cams.py", "infer.py",
            "datasets/prepare.py"} <= programs


def test_every_documented_command_parses(parsers):
    problems = []
    for page, line, program, args in _documented_commands():
        if program not in parsers:
            problems.append(f"{page}: {line}: {program} is not a program of this repository")
            continue
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parsers[program].parse_args(_arguments(args))
        except SystemExit:
            problems.append(f"{page}: {line}: {err.getvalue().strip().splitlines()[-1]}")
    assert not problems, "\n".join(problems)


def test_every_flag_in_the_pages_belongs_to_a_program(parsers):
    known = set(OTHER_TOOLS)
    for parser in parsers.values():
        for action in parser._actions:
            known.update(action.option_strings)
            if isinstance(action, argparse.BooleanOptionalAction):
                known.update(s for s in action.option_strings)
    problems = []
    for page in PAGES:
        text = open(os.path.join(REPO, page), encoding="utf-8").read()
        for span in re.findall(r"`([^`\n]+)`", text) + _blocks(text):
            for flag in re.findall(r"(?<![\w-])(--[a-zA-Z][\w-]*)", span):
                if flag not in known:
                    problems.append(f"{page}: {flag} (in `{span[:60]}`)")
    assert not problems, "\n".join(sorted(set(problems)))


def test_the_check_catches_a_renamed_flag_and_a_wrong_choice(parsers):
    train = parsers["train_final_voc.py"]
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        train.parse_args(_arguments(shlex.split(_optional_parts("--data_folder VOC2012 [--max_iter_count 5 | --x]"))))
    evaluation = parsers["eval_seg_voc.py"]
    with pytest.raises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
        evaluation.parse_args(["--branch", "K"])
    assert _invocation(shlex.split("WORK_DIR=w sbatch scripts/slurm/train_coco.sbatch --img_folder x")) == (
        "train_final_coco.py", ["--img_folder", "x"])
    assert _invocation(shlex.split("python -m torch.distributed.run --nproc_per_node=2 eval_seg_voc.py "
                                   "--model_path C")) == ("eval_seg_voc.py", ["--model_path", "C"])
