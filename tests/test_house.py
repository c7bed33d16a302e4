"""The house rules across modules: functions of utils/ and model/ fit on a screen, the map of the
house in docs/development.md names every module of datasets/, model/ and utils/ and only modules
that exist, and the tests' support code stays in tests/."""
import ast
import os
import re

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
