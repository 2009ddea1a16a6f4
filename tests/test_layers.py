"""The layer order of the packages (docs/extending.md, "Layers"), checked on every import in the
source, function-local ones included: a package imports only from packages on lower floors,
and no chain of imports between modules comes back to where it started."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# lowest floor first; packages on one floor do not import each other
LAYERS = (
    ("mm",),
    ("vision_tools", "streaming"),
    ("evaluation", "vla"),
    ("alignment",),
    ("mmpost",),
)
FLOOR = {pkg: i for i, floor in enumerate(LAYERS) for pkg in floor}


def modules() -> dict[str, str]:
    """Dotted module name -> file, for every module of the layered packages."""
    out = {}
    for pkg in FLOOR:
        for folder, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: str, known: dict) -> set[str]:
    """The project modules ``name`` imports anywhere in its file (the module itself when a name
    is imported from it, the submodule when the name is one)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` of a module; a name imported from a package
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_packages_import_only_lower_floors():
    wrong = []
    for name, deps in graph().items():
        here = name.split(".")[0]
        for dep in sorted(deps):
            there = dep.split(".")[0]
            if there != here and FLOOR[there] >= FLOOR[here]:
                wrong.append(
                    f"{name} imports {dep} ({here}: floor {FLOOR[here]}, {there}: floor {FLOOR[there]})"
                )
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = 0
    for root in g:
        if root in index:
            continue
        work = [(root, iter(sorted(g[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(g[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(c) for c in found
    )


def test_the_checks_see_a_violation_and_a_cycle():
    """The two checks catch what they are for (a graph with an upward import and a loop)."""
    g = {"mm.a": {"alignment.b"}, "alignment.b": {"alignment.c"}, "alignment.c": {"alignment.b"}}
    assert cycles(g) == [["alignment.b", "alignment.c"]]
    here, there = "mm", "alignment"
    assert FLOOR[there] >= FLOOR[here]
    known = modules()
    assert "vision_tools.generation.cached" in known and "mmpost.train" in known
    # function-local imports count: evaluation.evaluate imports the engine inside a function
    assert any(
        d.startswith("vision_tools")
        for d in imports("evaluation.evaluate", known["evaluation.evaluate"], known)
    )
