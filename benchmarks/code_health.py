"""Code-health figures of src/aldm, for reviews and closing notes (run on demand, no arguments needed).

    python benchmarks/code_health.py [--top 10]

Prints: the longest functions (lines), public definitions without a docstring, the imports that run
against the layer order of docs/design.md (:data:`LAYERS`; function-level imports included), and the
modules on the inference side (pipeline, generate, metrics, evaluate, serve, masks, artifacts) that
import training code (``aldm.train``). Repeated blocks come from the ``duplicates`` tool, not from here.
"""

from __future__ import annotations

import argparse
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "aldm")
INFERENCE = ("pipeline.py", "generate.py", "artifacts/", "metrics/", "evaluate.py", "serve/", "data/masks.py")
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
    ("generate.py", "evaluators/"),
    ("evaluate.py", "serve/", "export.py"),
    ("experiments/",),
    ("cli.py",),
)


def layer_of(rel: str) -> int:
    """The layer of a module path relative to src/aldm (``data/cache.py``) or a dotted name below aldm."""
    rel = rel if rel.endswith(".py") else rel.replace(".", "/") + ".py"
    for level, members in enumerate(LAYERS):
        for member in members:
            if rel == member or (member.endswith("/") and (rel.startswith(member) or rel == member[:-1] + ".py")):
                return level
    raise ValueError(f"{rel}: in no layer of LAYERS; add it")


def imported_modules(rel: str, tree) -> list[tuple[int, str]]:
    """(line, module path below aldm) of every aldm import in a module, at any depth."""
    package = rel.split("/")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                parts = base + (node.module.split(".") if node.module else [])
            elif (node.module or "").startswith("aldm"):
                parts = node.module.split(".")[1:]
            else:
                continue
            names = [a.name for a in node.names]
            for name in (names if not parts or not os.path.isfile(os.path.join(ROOT, *parts) + ".py") else [None]):
                full = parts + ([name] if name else [])
                path = os.path.join(*full) if full else "__init__"
                if not os.path.isfile(os.path.join(ROOT, path + ".py")) and not os.path.isdir(os.path.join(ROOT, path)):
                    full = parts  # a name imported from a package's __init__ or a module
                found.append((node.lineno, "/".join(full) if full else "__init__"))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".", 1)[1].replace(".", "/")) for a in node.names
                      if a.name.startswith("aldm.")]
    return found


def layer_violations(rel: str, tree) -> list[str]:
    """The imports of module ``rel`` that reach a higher layer than its own."""
    own = layer_of(rel)
    out = []
    for line, target in imported_modules(rel, tree):
        target_rel = target if os.path.isdir(os.path.join(ROOT, target)) and not target.endswith(".py") else target
        level = layer_of(target_rel + ("/" if os.path.isdir(os.path.join(ROOT, target_rel)) else ".py"))
        if level > own:
            out.append(f"{rel}:{line} -> {target} (layer {level} above {own})")
    return out


def modules():
    for folder, _, files in os.walk(ROOT):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                yield os.path.relpath(path, ROOT), ast.parse(open(path, encoding="utf-8").read())


def public_definitions(tree):
    """Module-level functions and classes, and public methods of public classes, not starting with '_'."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        yield f"{node.name}.{sub.name}", sub


def imports_training(rel: str, tree) -> list[str]:
    depth = rel.count("/")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            absolute = module if node.level == 0 else "aldm." + ".".join(
                rel.split("/")[: max(0, depth - node.level + 1)] + ([module] if module else []))
            if absolute.startswith(("aldm.train", "train")):
                found.append(absolute)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    lengths, undocumented, total, leaks, against = [], [], 0, [], []
    for rel, tree in modules():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
        for name, node in public_definitions(tree):
            total += 1
            if ast.get_docstring(node) is None:
                undocumented.append(f"{rel}:{name}")
        if rel.startswith(INFERENCE) or rel in INFERENCE:
            leaks += [f"{rel} -> {m}" for m in imports_training(rel, tree)]
        against += layer_violations(rel, tree)
    print(f"longest functions (top {args.top}):")
    for n, name in sorted(lengths, reverse=True)[: args.top]:
        print(f"  {n:4d}  {name}")
    print(f"public definitions without a docstring: {len(undocumented)} of {total}")
    for name in undocumented:
        print(f"  {name}")
    print(f"imports against the layer order: {len(against)}")
    for line in against:
        print(f"  {line}")
    print(f"inference modules importing training code: {len(leaks)}")
    for line in leaks:
        print(f"  {line}")


if __name__ == "__main__":
    main()
