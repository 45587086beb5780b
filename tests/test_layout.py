"""The package's layout is its architecture: stages stacked in layers, each module importing only its own
layer or those below, and no two modules importing each other (directly or round a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "emprl"
# bottom to top; the foundation is emprl's top-level modules (data, profiles, run, checkpoint, ...)
LAYERS = ("", "models", "eval", "rl", "llm", "ops")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else 0


def imports() -> dict[str, set[str]]:
    """{module: the emprl modules it imports}, from the source (function-level imports included)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name, found = module_name(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "emprl":
                for alias in node.names:  # "from emprl.models import scoring" names a module
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split(".")[0] == "emprl"}
        graph[name] = found - {name}
    return graph


def test_every_module_has_a_layer_and_imports_none_above_it():
    graph = imports()
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} <= set(LAYERS), "a package outside LAYERS"
    upward = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
                    if d != "emprl" and layer(d) > layer(m) and not m.endswith("__init__"))
    assert upward == [], "\n".join(upward)


def test_no_import_cycles():
    found = imports()
    # the package itself ("from emprl import setup") is left out: its __init__ only re-exports run.setup
    graph = {m: {d for d in deps if d in found and d != "emprl"} for m, deps in found.items() if m != "emprl"}
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m, path):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """An upward import and a cycle planted in a copy of the package are caught."""
    import shutil

    copy = tmp_path / "emprl"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "data.py").write_text((copy / "data.py").read_text() + "\nfrom emprl.rl import ppo  # noqa\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", copy)
    try:
        test_every_module_has_a_layer_and_imports_none_above_it()
    except AssertionError as e:
        assert "emprl.data imports emprl.rl.ppo" in str(e)
    else:
        raise AssertionError("the upward import was not caught")
    try:
        test_no_import_cycles()
    except AssertionError as e:
        assert "import cycle" in str(e)
    else:
        raise AssertionError("the cycle was not caught")
