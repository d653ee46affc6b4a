"""The package's layering: module-level imports between lambdaconv's modules form no cycle."""
import ast
import pathlib

import lambdaconv as lc

SRC = pathlib.Path(lc.__file__).parent


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str) -> set:
    """lambdaconv modules imported at module level (function-level imports are deferred on purpose)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            if base.startswith("lambdaconv"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("lambdaconv"))
    return out


def test_no_import_cycles():
    mods = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {m: {i for i in _imports(p, m) if i in mods and i != m} for m, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages work: not a cycle edge back
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = "open"
        for n in graph[m]:
            if n.startswith(m + "."):
                continue
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == [], cycles
