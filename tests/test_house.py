"""The house rules across modules: functions of utils/ and model/ fit on a screen, the map of the
house in docs/development.md names every module of datasets/, model/ and utils/ and only modules
that exist, and the tests' support code stays in tests/."""
import ast
import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FUNCTION_LINES = 90
MAPPED_PACKAGES = ("datasets", "model", "utils", "engine")
CODE_PACKAGES = ("datasets", "model", "utils", "engine", "benchmarks")


def _python_files(package):
    folder = os.path.join(REPO, package)
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".py")]


def _is_parser_builder(name: str) -> bool:
    return name == "get_args_parser" or (name.startswith("add_") and name.endswith("_flags"))


def test_no_function_of_utils_or_model_is_over_90_lines():
    """Every function and method of utils/*.py and model/*.py, nested ones included, is at most
    90 lines long, counted from its ``def`` line to the last line of its body (docstring, comments,
    blank lines and nested functions included; decorators not). Exempt are the argument-parser
    builders, whose body is one flag declaration after another: functions named
    ``get_args_parser``, or named ``add_<something>_flags``."""
    too_long = []
    for package in ("utils", "model", "engine"):
        for path in _python_files(package):
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and not _is_parser_builder(node.name):
                    too_long.append(f"{os.path.relpath(path, REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not too_long, too_long


def _house_map() -> str:
    """The "Layout and layers" section of docs/development.md, up to the next section."""
    text = open(os.path.join(REPO, "docs", "development.md"), encoding="utf-8").read()
    found = re.search(r"^## Layout and layers\n(.*?)(?=^## )", text, re.M | re.S)
    assert found, "docs/development.md has no 'Layout and layers' section"
    return found.group(1)


def test_the_map_of_the_house_names_only_files_that_exist():
    named = set(re.findall(r"`([\w./-]+\.py)`", _house_map()))
    assert named
    missing = sorted(p for p in named if not os.path.isfile(os.path.join(REPO, p)))
    assert not missing, f"docs/development.md's map names files that do not exist: {missing}"


def test_the_map_of_the_house_has_one_line_for_every_module_of_datasets_model_and_utils():
    entries = re.findall(r"^\* `([\w./-]+\.py)` ", _house_map(), re.M)
    problems = []
    for package in MAPPED_PACKAGES:
        for path in _python_files(package):
            rel = os.path.relpath(path, REPO).replace(os.sep, "/")
            if os.path.basename(path) == "__init__.py" and not open(path, encoding="utf-8").read().strip():
                continue  # an empty package marker owns nothing
            count = entries.count(rel)
            if count != 1:
                problems.append(f"{rel}: {count} lines in the map, not 1")
    assert not problems, problems


def _imports(path: str):
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module


def test_nothing_outside_tests_imports_from_tests():
    """Test support (the hard synthetic style, the slow reference implementations) lives under
    tests/; the project's packages and scripts never reach into it."""
    files = [os.path.join(REPO, f) for f in sorted(os.listdir(REPO)) if f.endswith(".py")]
    files += [p for package in CODE_PACKAGES for p in _python_files(package)]
    bad = [f"{os.path.relpath(p, REPO)} imports {name}" for p in files for name in _imports(p)
           if name == "tests" or name.startswith("tests.")]
    assert not bad, bad


# ---- the paper's settings are written once: in model/settings.py
SETTINGS_HOME = "model/settings.py"
# where a literal equal to a paper value is something else: the synthetic data's own design numbers,
# the ImageNet tags of the paper's two encoders (keys of model/backbone.py's PRETRAINED_TAGS) and
# the tensor budget of a weights file (utils/safe_io.py's MAX_WEIGHT_TENSORS)
LITERAL_EXCEPTIONS = {"datasets/synthetic.py": None, "model/backbone.py": {"deit_base_patch16_224"},
                      "utils/safe_io.py": {20000}}
# settings whose values no other number of the code shares by chance (0.05, 1e-6 or 2000 would)
DISTINCT_FLOATS = ("high_thre", "bkg_thre", "gamma")
DISTINCT_INTS = ("max_iters", "gmm_iters", "warmup_iters")


def _paper_literals():
    from model.settings import BY_NAME, DATASETS, SETTINGS
    values = set()
    for s in SETTINGS:
        for d in DATASETS:
            v = s.value(d)
            if isinstance(v, tuple) and 1 < len(v) < 5:
                values.add(tuple(float(x) for x in v))             # CAM, evaluation and rescale scales
            elif s.name == "backbone":
                values.add(v)
            elif s.name in DISTINCT_FLOATS + DISTINCT_INTS and v not in (0.1, 0.5):
                values.add(v)
    assert {(1.0, 0.5, 1.5), (1.0, 1.5, 1.25), (1.0, 1.25, 1.5), 0.45, 0.65, 80000, 1500,
            "deit_base_patch16_224"} <= values
    return values, BY_NAME


def _literals(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and node.elts and all(
                isinstance(e, ast.Constant) and type(e.value) in (int, float) for e in node.elts):
            yield node.lineno, tuple(float(e.value) for e in node.elts)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
            yield node.lineno, node.value


def _tracked_code():
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=True)
    return [f for f in out.stdout.split() if not f.startswith("tests/")]


def test_no_paper_setting_is_written_outside_the_table_of_settings():
    values, _ = _paper_literals()
    found = []
    for f in _tracked_code():
        if f == SETTINGS_HOME or (f in LITERAL_EXCEPTIONS and LITERAL_EXCEPTIONS[f] is None):
            continue
        allowed = LITERAL_EXCEPTIONS.get(f) or set()
        tree = ast.parse(open(os.path.join(REPO, f), encoding="utf-8").read())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if id(node) in docstrings:
                continue
            for line, v in _literals(node) if isinstance(node, (ast.Tuple, ast.Constant)) else ():
                if v in values and v not in allowed and not isinstance(v, bool):
                    found.append(f"{f}:{line} {v!r}")
    assert not found, sorted(set(found))


def test_the_literal_check_finds_a_paper_value_written_again(tmp_path):
    values, _ = _paper_literals()
    tree = ast.parse("SCALES = (1.0, 0.5, 1.5)\nBKG = 0.45\nNAME = 'deit_base_patch16_224'\n")
    assert {v for _, v in _literals(tree) if v in values} == {(1.0, 0.5, 1.5), 0.45, "deit_base_patch16_224"}
