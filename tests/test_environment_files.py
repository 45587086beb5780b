"""pyproject.toml declares what emprl imports, and environment.yml (conda) lists the same packages."""

import ast
import functools
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    """The normalized distribution name of a requirement (PEP 503)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", req.strip(), maxsplit=1)[0]).lower()


def _project(root: Path = ROOT) -> dict:
    return tomllib.loads((root / "pyproject.toml").read_text())["project"]


def _conda_pip_list(root: Path = ROOT) -> list[str]:
    """The entries under ``- pip:`` in environment.yml (a flat list; PyYAML is not a dependency)."""
    entries, inside = [], False
    for line in (root / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if not stripped:
            continue
        if stripped.strip() == "- pip:":
            inside, indent = True, None
            continue
        if inside:
            depth = len(stripped) - len(stripped.lstrip())
            indent = depth if indent is None else indent
            if depth < indent or not stripped.strip().startswith("- "):
                break
            entries.append(stripped.strip()[2:].strip())
    return entries


def environment_drift(root: Path = ROOT) -> list[str]:
    """What environment.yml's pip list must gain or lose to be pyproject.toml's dependencies, its test
    extra and ``-e .``, each with the same version specifier; empty when the two files agree."""
    project = _project(root)
    wanted = [r.replace(" ", "") for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    wanted.append("-e .")
    listed = [r if r.startswith("-e") else r.replace(" ", "") for r in _conda_pip_list(root)]
    problems = [f"add `{r}`" for r in wanted if r not in listed]
    problems += [f"remove `{r}`" for r in listed if r not in wanted]
    problems += [f"`{r}` is listed twice" for r in sorted(set(listed)) if listed.count(r) > 1]
    python = re.search(r"^\s*- python=(\S+)", (root / "environment.yml").read_text(), re.M)
    floor = re.fullmatch(r">=\s*(\S+)", project["requires-python"])
    if python is None or floor is None or python.group(1) != floor.group(1):
        problems.append(f"environment.yml's `python=` must be the floor of requires-python "
                        f"({project['requires-python']})")
    return problems


def test_conda_and_pip_dependencies_agree():
    problems = environment_drift()
    assert not problems, ("environment.yml's pip list differs from pyproject.toml (dependencies + the test "
                          "extra + `-e .`): " + "; ".join(problems))


def test_drift_is_caught(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    text = (ROOT / "environment.yml").read_text()
    (tmp_path / "environment.yml").write_text(text.replace("- scipy>=1.11\n", "- scipy>=1.10\n")
                                              .replace("- nltk>=3.9\n", ""))
    assert environment_drift(tmp_path) == ["add `scipy>=1.11`", "add `nltk>=3.9`", "remove `scipy>=1.10`"]


def _third_party_imports(paths) -> dict[str, set[str]]:
    """Top-level module -> the files importing it, for every absolute import (also those inside functions)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "emprl":
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _undeclared(paths, declared: set[str]) -> list[str]:
    distributions = _distributions()
    missing = []
    for module, files in sorted(_third_party_imports(paths).items()):
        names = {_name(d) for d in distributions.get(module, [])}
        if not names & declared:
            installed_as = "/".join(sorted(names)) or "not installed"
            missing.append(f"{module} ({installed_as}; imported by {sorted(files)[0]})")
    return missing


def test_every_import_of_emprl_is_a_dependency():
    declared = {_name(r) for r in _project()["dependencies"]}
    missing = _undeclared(sorted((ROOT / "emprl").rglob("*.py")), declared)
    assert not missing, f"declare in pyproject.toml's dependencies (and environment.yml): {missing}"


def test_every_import_of_the_tests_is_declared():
    # tests/browser and tests/llm have their own extras (browser, llm); test modules import each other
    project = _project()
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]}
    tests = sorted((ROOT / "tests").glob("*.py"))
    local = {p.stem for p in tests}
    missing = [m for m in _undeclared(tests, declared) if m.split(" ")[0] not in local]
    assert not missing, f"declare in pyproject.toml's test extra (and environment.yml): {missing}"


@functools.cache
def _imported_by_emprl() -> set[str]:
    """The distributions whose modules emprl imports."""
    modules = _third_party_imports(sorted((ROOT / "emprl").rglob("*.py")))
    return {_name(d) for module in modules for d in _distributions().get(module, [])}


@pytest.mark.parametrize("requirement", _project()["dependencies"])
def test_a_dependency_emprl_does_not_import_says_why(requirement):
    """A dependency is imported by emprl, or its line in pyproject.toml says what needs it."""
    if _name(requirement) in _imported_by_emprl():
        return
    line = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines()
                if line.strip().startswith(f'"{requirement}"'))
    assert "#" in line, (f"emprl does not import {requirement}: move it to an extra with a comment saying "
                         "why, or say on its line in pyproject.toml what needs it")


def lock_problems(root: Path = ROOT) -> list[str]:
    """What is wrong with requirements-lock.txt, make's constraints: every declared dependency and test
    requirement but torch (the Makefile's TORCH) pinned with ``==`` at a version its specifier in
    pyproject.toml allows, each once, and no editable or local entry; empty when it is right."""
    from packaging.requirements import Requirement

    pins: dict[str, str] = {}
    problems = []
    for number, line in enumerate((root / "requirements-lock.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.!+\-]+)", line)
        if match is None:
            problems.append(f"line {number} `{line}` is not `name==version`")
            continue
        name = _name(match.group(1))
        if name in pins:
            problems.append(f"{name} is pinned twice")
        pins[name] = match.group(2)
    project = _project(root)
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        requirement, name = Requirement(req), _name(req)
        if name == "torch":
            if name in pins:
                problems.append("torch is pinned by the Makefile's TORCH, not by the lock")
        elif name not in pins:
            problems.append(f"{name} is not pinned")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{name}=={pins[name]} is outside pyproject.toml's `{req}`")
    return problems


def test_the_lock_pins_every_dependency_within_its_specifier():
    problems = lock_problems()
    assert not problems, "requirements-lock.txt: " + "; ".join(problems)


def test_lock_problems_are_caught(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text()
                                             .replace('"scipy>=1.11"', '"scipy>=99"'))
    lines = [line for line in (ROOT / "requirements-lock.txt").read_text().splitlines()
             if not line.startswith(("nltk==", "pandas=="))]
    (tmp_path / "requirements-lock.txt").write_text("\n".join(lines + ["pandas>=2", "torch==2.13.0"]) + "\n")
    problems = lock_problems(tmp_path)
    assert sorted(problems) == sorted([f"line {len(lines) + 1} `pandas>=2` is not `name==version`",
                                       "nltk is not pinned", "pandas is not pinned",
                                       "torch is pinned by the Makefile's TORCH, not by the lock",
                                       f"scipy=={dict(l.split('==') for l in lines if '==' in l)['scipy']} "
                                       "is outside pyproject.toml's `scipy>=99`"])
