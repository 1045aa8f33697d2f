"""The structure of src/aldm read from its syntax trees: the layer of each module (docs/design.md), the
import graph and its cycles, the length and parameters of each function, the public definitions without a
docstring. ``tests/test_structure.py`` asserts on these; ``benchmarks/code_health.py`` prints them."""

from __future__ import annotations

import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "aldm")
# The layers of docs/design.md, lowest first: a module may import its own layer and those below it.
LAYERS = (
    # metrics/sharpness.py is plain numpy (it imports nothing of aldm): the training probes use it too
    ("__init__.py", "errors.py", "modalities.py", "conditions.py", "metrics/sharpness.py"),
    ("io/",),
    ("config.py", "precision.py", "reproducibility.py", "distributed.py", "interrupt.py", "allocator.py"),
    ("artifacts/",),
    ("data/",),
    ("models/", "diffusion/"),
    ("train/",),
    ("pipeline.py", "metrics/"),
    ("generate.py", "evaluators/", "editing/"),
    ("fidelity.py", "evaluate.py", "serve/", "export.py"),
    ("experiments/",),
    ("cli/",),
)
# modules on the inference side, which must not import training code (aldm.train)
INFERENCE = ("pipeline.py", "generate.py", "editing/", "artifacts/", "metrics/", "evaluate.py", "fidelity.py", "serve/",
             "data/masks.py")


def layer_of(rel: str) -> int:
    """The layer of a module path relative to src/aldm (``data/cache.py``)."""
    for level, members in enumerate(LAYERS):
        for member in members:
            if rel == member or (member.endswith("/") and rel.startswith(member)):
                return level
    raise ValueError(f"{rel}: in no layer of LAYERS; add it")


def modules() -> dict:
    """{path relative to src/aldm: syntax tree} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as fh:
                    found[os.path.relpath(path, ROOT).replace(os.sep, "/")] = ast.parse(fh.read())
    return found


def _module_file(parts: list) -> str | None:
    """The module file of dotted ``parts`` below aldm (a package's ``__init__.py``), or None."""
    path = "/".join(parts)
    if parts and os.path.isfile(os.path.join(ROOT, path + ".py")):
        return path + ".py"
    if os.path.isfile(os.path.join(ROOT, path, "__init__.py")):
        return (path + "/" if path else "") + "__init__.py"
    return None


def imports_of(rel: str, tree) -> list[tuple[int, str]]:
    """(line, module file below aldm) of every aldm import in module ``rel``, at any depth (function-level
    imports included): ``from ..data import cache`` names ``data/cache.py``, ``from ..data.cache import x``
    the same file."""
    package = rel.split("/")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "aldm":
                parts = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                target = _module_file(parts + [alias.name]) or _module_file(parts)
                if target:
                    found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("aldm."):
                    target = _module_file(alias.name.split(".")[1:])
                    if target:
                        found.append((node.lineno, target))
    return found


def layer_violations(trees: dict) -> list[str]:
    """The imports that reach a higher layer than their module's own."""
    out = []
    for rel, tree in trees.items():
        own = layer_of(rel)
        for line, target in imports_of(rel, tree):
            if layer_of(target) > own:
                out.append(f"{rel}:{line} -> {target} (layer {layer_of(target)} above {own})")
    return out


def training_leaks(trees: dict) -> list[str]:
    """Imports of training code (aldm.train) by the inference-side modules."""
    return [f"{rel}:{line} -> {target}" for rel, tree in trees.items() if rel.startswith(INFERENCE)
            for line, target in imports_of(rel, tree) if target.startswith("train/")]


def import_cycles(trees: dict) -> list[list[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan), each sorted: a
    module that imports another which (directly or not) imports it back. A package's ``__init__`` importing
    its own sub-modules counts as an edge like any other."""
    graph = {rel: sorted({t for _, t in imports_of(rel, tree) if t != rel}) for rel, tree in trees.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def functions(trees: dict) -> list[tuple[str, int, int]]:
    """(``module:qualified name``, lines, parameters) of every function and method; ``self`` / ``cls`` and
    ``*args`` / ``**kwargs`` are not counted as parameters."""
    out = []

    def walk(rel, node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = child.args
                names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
                count = len([n for n in names if n not in ("self", "cls")])
                out.append((f"{rel}:{prefix}{child.name}", child.end_lineno - child.lineno + 1, count))
                walk(rel, child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(rel, child, f"{prefix}{child.name}.")
            else:
                walk(rel, child, prefix)

    for rel, tree in trees.items():
        walk(rel, tree, "")
    return out


def undocumented(trees: dict) -> tuple[list[str], int]:
    """(the public module-level functions and classes, and public methods of public classes, that have no
    docstring; how many public definitions there are)."""
    missing, total = [], 0
    for rel, tree in trees.items():
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name[0] == "_":
                continue
            members = [(node.name, node)]
            if isinstance(node, ast.ClassDef):
                members += [(f"{node.name}.{sub.name}", sub) for sub in node.body
                            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name[0] != "_"]
            for name, member in members:
                total += 1
                if ast.get_docstring(member) is None:
                    missing.append(f"{rel}:{name}")
    return missing, total
