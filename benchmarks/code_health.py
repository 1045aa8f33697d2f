"""Code-health figures of src/aldm, for reviews and closing notes (run on demand, no arguments needed).

    python benchmarks/code_health.py [--top 10]

Prints: the longest functions (lines), public definitions without a docstring, and the modules on
the inference side (pipeline, generate, evaluation, experiment, serve, masks, runs) that import
training code (``aldm.train``). Repeated blocks come from the ``duplicates`` tool, not from here.
"""

from __future__ import annotations

import argparse
import ast
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "aldm")
INFERENCE = ("pipeline.py", "generate.py", "runs.py", "eval/", "serve/", "data/masks.py", "io/samples.py")


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
    lengths, undocumented, total, leaks = [], [], 0, []
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
    print(f"longest functions (top {args.top}):")
    for n, name in sorted(lengths, reverse=True)[: args.top]:
        print(f"  {n:4d}  {name}")
    print(f"public definitions without a docstring: {len(undocumented)} of {total}")
    for name in undocumented:
        print(f"  {name}")
    print(f"inference modules importing training code: {len(leaks)}")
    for line in leaks:
        print(f"  {line}")


if __name__ == "__main__":
    main()
