"""The documentation covers the code and points only at things that exist: every flag of every
script appears in README.md or docs/, every relative link and docs anchor resolves, and the
import layers that docs/development.md describes hold."""
import ast
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["train_final_voc.py", "train_final_coco.py", "eval_seg_voc.py", "eval_seg_coco_ddp.py",
           "eval_cam_voc.py", "eval_cam_coco.py", "convert_voc_rgb.py", "visualize_cams.py", "infer.py",
           "demo.py", "datasets/prepare.py", "datasets/synthetic.py", "benchmarks/bench_train.py",
           "benchmarks/bench_eval.py", "benchmarks/bench_crf.py", "benchmarks/bench_data.py"]


def _docs():
    pages = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(REPO, "docs")))
                             if f.endswith(".md")]
    return {p: open(os.path.join(REPO, p), encoding="utf-8").read() for p in pages}


def _help(script: str) -> str:
    """``script --help`` run in this process (the modules are imported once for all scripts)."""
    out = io.StringIO()
    argv, path = sys.argv, list(sys.path)
    sys.argv = [script, "--help"]
    sys.path.insert(0, REPO)
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            if script.startswith("datasets/"):       # package modules: python -m datasets.x
                runpy.run_module(script[:-3].replace("/", "."), run_name="__main__")
            else:
                runpy.run_path(os.path.join(REPO, script), run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
    return out.getvalue()


def _flags(help_text: str):
    flags = set()
    for line in help_text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-"):
            head = re.split(r"\s{2,}", stripped)[0]            # the option strings, not the help
            flags.update(re.findall(r"--[A-Za-z][\w-]*", head))
    return flags - {"--help"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_flag_is_documented(script):
    text = "\n".join(_docs().values())
    flags = _flags(_help(script))
    assert flags, f"no flags found in {script} --help"
    missing = []
    for flag in sorted(flags):
        names = {flag} | ({"--" + flag[5:]} if flag.startswith("--no-") else set())
        if not any(re.search(re.escape(n) + r"(?![\w-])", text) for n in names):
            missing.append(flag)
    assert not missing, f"{script}: flags not in README.md or docs/: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def _anchors(page_text: str):
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", page_text, re.M)}


def _check_target(source_dir: str, target: str, where: str, problems: list) -> None:
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(REPO, source_dir, path)) if path else None
    if path and not os.path.exists(full):
        problems.append(f"{where}: {target} does not exist")
        return
    if anchor:
        page = full if path else None
        if page and page.endswith(".md"):
            if anchor not in _anchors(open(page, encoding="utf-8").read()):
                problems.append(f"{where}: no heading for #{anchor} in {path}")


def test_relative_links_and_anchors_resolve():
    problems = []
    for page, text in _docs().items():
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m.group(1)
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            if target.startswith("#"):
                if target[1:] not in _anchors(text):
                    problems.append(f"{page}: no heading for {target}")
                continue
            _check_target(os.path.dirname(page), target, page, problems)
    assert not problems, problems


def _tracked(*patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.split() if os.path.exists(os.path.join(REPO, f))]


def test_code_points_only_to_documents_that_exist():
    problems = []
    for f in _tracked("*.py"):
        if f == "tests/test_docs.py":      # this file names the word it looks for
            continue
        text = open(os.path.join(REPO, f), encoding="utf-8").read()
        for m in re.finditer(r"\b(docs/[\w/.-]+\.md)(#[\w-]+)?", text):
            _check_target("", m.group(1) + (m.group(2) or ""), f, problems)
        if re.search(r"\bSPEC\b", text):
            problems.append(f"{f}: cites a SPEC document the repository does not contain")
    for page, text in _docs().items():
        if re.search(r"\bSPEC\b", text):
            problems.append(f"{page}: cites a SPEC document the repository does not contain")
    assert not problems, problems


PACKAGES = ("datasets", "model", "utils", "engine", "benchmarks")
# the floor: utils/ imports nothing of the project but itself (the folder is the layer)
FLOOR = "utils"
SCRIPTS_CANNOT_IMPORT = "another script"


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
    return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _project_modules():
    """Every module of the project's packages and the top-level scripts: name -> path."""
    out = {}
    for name in sorted(os.listdir(REPO)):
        if name.endswith(".py"):
            out[name[:-3]] = os.path.join(REPO, name)
    for package in PACKAGES:
        for f in sorted(os.listdir(os.path.join(REPO, package))):
            if f.endswith(".py"):
                path = os.path.join(REPO, package, f)
                out[_module_name(path)] = path
    return out


def _imported_modules(path: str, modules) -> set:
    """The project modules ``path`` imports, anywhere in the file (a deferred import counts too),
    relative imports resolved; ``from package import module`` names the module."""
    me = _module_name(path)
    package = me.rsplit(".", 1)[0] if "." in me else ""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            while name and name not in modules:
                name = name.rsplit(".", 1)[0] if "." in name else ""
            if name and name != me:
                found.add(name)
    return found


def _import_graph():
    modules = _project_modules()
    return {m: _imported_modules(p, modules) for m, p in modules.items()}


def _allowed(module: str, imported: str) -> bool:
    """The layers of docs/development.md#layout-and-layers: utils/ (the floor) <- datasets/,
    model/ <- engine/ <- the scripts and benchmarks/; a script imports no other script."""
    top, other = module.split(".")[0], imported.split(".")[0]
    if other == "tests":
        return False
    if top == FLOOR:
        return other == FLOOR
    if top in ("datasets", "model"):
        return other in (top, FLOOR)
    if top == "engine":
        return other in ("engine", "model", "datasets", FLOOR)
    scripts_module = "." not in imported and other not in PACKAGES      # a top-level script
    return not (scripts_module and "." not in module)                  # benchmarks may run scripts


def test_lower_layers_never_import_upper_ones():
    graph = _import_graph()
    bad = [f"{m} imports {i}" for m, deps in sorted(graph.items()) for i in sorted(deps) if not _allowed(m, i)]
    assert not bad, bad


def test_the_rule_refuses_what_it_is_meant_to():
    assert not _allowed("utils.cli", "engine.train_args")
    assert not _allowed("utils.checkpoint", "model.network")
    assert not _allowed("model.network", "datasets.transforms")
    assert not _allowed("model.dupl", "engine.train_step")
    assert not _allowed("datasets.prepare", "model.network")
    assert not _allowed("engine.evaluation", "infer")
    assert not _allowed("visualize_cams", "infer")
    assert _allowed("engine.evaluation", "model.network") and _allowed("infer", "engine.inference")


def test_model_and_utils_import_only_data_from_datasets():
    data = {"datasets.classes", "datasets.layout", "datasets.lists", "datasets.prepare", "datasets.readers",
            "datasets.segmentation", "datasets.transforms", "datasets.synthetic"}
    graph = _import_graph()
    bad = [f"{m} imports {i}" for m, deps in sorted(graph.items()) if m.split(".")[0] in ("model", "utils", "engine")
           for i in sorted(deps) if i.startswith("datasets") and i not in data]
    assert not bad, bad
    assert set(m for m in _project_modules() if m.startswith("datasets.")) <= data | {"datasets", "datasets.__init__"}


def test_no_import_cycle():
    graph = _import_graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_readme_stays_short_and_has_the_two_commands():
    text = _docs()["README.md"]
    assert len(text.splitlines()) <= 200
    assert "make demo" in text and "make test" in text
    assert "pytest -q -m \"not slow\"" in open(os.path.join(REPO, "Makefile")).read()


# ---- "Changing the method": every recipe's files and names exist, and it stays within three files
RECIPES = ("A new loss term", "A new hyperparameter", "Another pseudo-label threshold rule",
           "Another encoder family", "Another dataset")
NUMBER_WORDS = {"one": 1, "two": 2, "three": 3}
TIMM_NAMES = {"VisionTransformer", "Eva"}          # timm's classes a recipe names


def _recipes():
    text = open(os.path.join(REPO, "docs", "development.md"), encoding="utf-8").read()
    start = text.index("## Changing the method\n")
    section = text[start:text.index("\n## ", start + 1)]
    section = re.sub(r"```.*?```", "", section, flags=re.S)     # commands are checked elsewhere
    return {m.group(1): m.group(3) for m in
            re.finditer(r"^\*\*(.+?)\*\* \((\w+) files?[^)]*\)(.*?)(?=^\*\*|\Z)", section, re.M | re.S)}, \
        {m.group(1): NUMBER_WORDS[m.group(2)] for m in
         re.finditer(r"^\*\*(.+?)\*\* \((\w+) files?", section, re.M)}


def _project_sources():
    files = [f for f in _tracked("*.py") if not f.startswith(("tests/", "benchmarks/"))]
    return {f: open(os.path.join(REPO, f), encoding="utf-8").read() for f in files}


def _defines(source: str, name: str) -> bool:
    n = re.escape(name)
    return bool(re.search(rf"^\s*(def|class) {n}\b|^\s*{n}\s*(:[^=\n]+)?=|^\s+{n}:|S\(\"{n}\"|"
                          rf"def {n}\(", source, re.M))


def test_each_recipe_of_changing_the_method_touches_at_most_three_files():
    bodies, counts = _recipes()
    assert set(bodies) == set(RECIPES) == set(counts)
    for title, body in bodies.items():
        steps = re.findall(r"^\d+\. (?:[^`\n]*?)`([^`]+\.py)[`:]", body, re.M)
        files = [s for s in steps if not s.startswith("tests/")]
        assert len(files) == len(set(files)) == counts[title] <= 3, (title, files)


def test_the_recipes_name_only_files_and_names_that_exist():
    bodies, _ = _recipes()
    sources = _project_sources()
    problems = []
    for title, body in bodies.items():
        for code in re.findall(r"`([^`]+)`", body):
            if "<" in code or "new" in code or "NAME" in code:
                continue                                     # the recipe's placeholders
            path, _, name = code.partition("::")
            if re.fullmatch(r"[\w/]+\.py", path):
                if path not in sources and not path.startswith("tests/"):
                    problems.append(f"{title}: {path} is not a project file")
                elif name and not _defines(sources.get(path, ""), name.split(".")[-1]):
                    problems.append(f"{title}: {path} defines no {name}")
            elif re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", code) and not code.endswith((".log", ".py")):
                if code in TIMM_NAMES:
                    continue
                owner, _, attr = code.rpartition(".")
                where = [f for f, s in sources.items() if _defines(s, owner or attr)]
                if not where or (owner and not any(_defines(sources[f], attr) for f in where)):
                    problems.append(f"{title}: no project module defines {code}")
    assert not problems, problems


def test_the_recipe_check_refuses_a_name_that_does_not_exist():
    assert _defines("def cosine_descent(step):\n", "cosine_descent")
    assert _defines("    layout: str\n", "layout")
    assert not _defines("def cosine_descent(step):\n", "linear_descent")
    assert not _defines("x = cosine_descent(1)\n", "cosine_descent")


def test_the_timm_classes_a_recipe_names_exist():
    from timm.models import Eva, VisionTransformer    # noqa: F401
