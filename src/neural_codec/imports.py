"""The project's import graph, read statically: what each stage imports, and whether any cycle exists.

Used by the tests to hold two promises of the layout: no import cycle anywhere in `src/`
(function-level imports included), and each `dvc.yaml` stage's code deps are exactly the project
modules its script imports, transitively (so editing a module re-runs the stages that use it and
no others). `python -m neural_codec.imports stages/squeeze.py` prints one stage's code deps.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

PACKAGE = "neural_codec"


def module_path(src: Path, module: str) -> Path | None:
    """The file of a project module (`neural_codec.a.b` -> src/neural_codec/a/b.py or its package)."""
    base = src.joinpath(*module.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def _module_name(src: Path, path: Path) -> str:
    rel = path.relative_to(src).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(src: Path, path: Path) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions). `from pkg import
    name` counts `pkg.name` when that is a module, else `pkg`; a submodule import also imports
    its parent packages (Python runs their `__init__`)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE and module_path(src, name) is not None:
                found.add(name)
    with_parents = set(found)
    for name in found:
        parts = name.split(".")
        with_parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return with_parents


def graph(src: Path) -> dict[str, set[str]]:
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        name = _module_name(src, path)
        out[name] = imported_modules(src, path) - {name}
    return out


def cycles(src: Path) -> list[list[str]]:
    """Every import cycle between project modules (a package importing its own submodule through
    `__init__` counts too), as lists of module names."""
    g = graph(src)
    found, state, stack = [], dict.fromkeys(g, 0), []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if d not in g:
                continue
            if state[d] == 1:
                found.append(stack[stack.index(d) :] + [d])
            elif state[d] == 0:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in g:
        if state[m] == 0:
            visit(m)
    return found


def code_deps(src: Path, script: Path) -> set[Path]:
    """The project source files a script needs, transitively (what its dvc.yaml deps should be)."""
    todo = list(imported_modules(src, script))
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        p = module_path(src, m)
        if p is not None:
            todo.extend(imported_modules(src, p) - seen)
    found = (module_path(src, m) for m in seen if m != PACKAGE)
    return {p for p in found if p is not None}


def sync_dvc_yaml(root: Path) -> list[str]:
    """Rewrite each stage's `src/` deps in dvc.yaml (text-level: comments and order kept) to the
    stage script's code deps; returns the stages whose deps changed."""
    path = root / "dvc.yaml"
    out: list[str] = []
    changed: list[str] = []
    stage: str | None = None
    in_deps = False
    for line in path.read_text().split("\n"):
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            stage = m.group(1)
        if re.match(r"^    deps:\s*$", line):
            in_deps = True
            out.append(line)
            script = root / "stages" / f"{stage}.py"
            new = (
                sorted(str(p.relative_to(root)) for p in code_deps(root / "src", script))
                if script.exists()
                else []
            )
            old: list[str] = []
            continue
        if in_deps and line.startswith("      - "):
            if line.strip().startswith("- src/") and new:
                old.append(line.strip()[2:])
                if len(old) == 1:
                    out.extend(f"      - {p}" for p in new)
                continue
            out.append(line)
            continue
        if in_deps:
            in_deps = False
            if new and sorted(old) != new and stage is not None:
                changed.append(stage)
        out.append(line)
    path.write_text("\n".join(out))
    return changed


if __name__ == "__main__":
    root = Path.cwd()
    if sys.argv[1:] == ["--sync"]:
        print("dvc.yaml deps updated:", ", ".join(sync_dvc_yaml(root)) or "none")
        sys.exit(0)
    for script in sys.argv[1:]:
        for p in sorted(code_deps(root / "src", Path(script))):
            print(p.relative_to(root))
