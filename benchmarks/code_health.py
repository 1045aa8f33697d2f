"""Code-health figures of src/aldm, for reviews and closing notes (run on demand, no arguments needed).

    python benchmarks/code_health.py [--top 10]

Prints the longest functions, those with the most parameters, the import cycles, the imports against the layer
order of docs/design.md, inference modules importing training code, and public definitions without a
docstring. The analysis is tests/code_structure.py's, which tests/test_structure.py asserts on; repeated
blocks come from the ``duplicates`` tool, not from here.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tests import code_structure as structure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    trees = structure.modules()
    found = structure.functions(trees)
    print(f"longest functions (top {args.top}):")
    for name, lines, _ in sorted(found, key=lambda f: -f[1])[: args.top]:
        print(f"  {lines:4d}  {name}")
    print(f"most parameters (top {args.top}):")
    for name, _, count in sorted(found, key=lambda f: -f[2])[: args.top]:
        print(f"  {count:4d}  {name}")
    print(f"functions over 80 lines: {sum(lines > 80 for _, lines, _ in found)}; over 8 parameters: "
          f"{sum(count > 8 for _, _, count in found)} (of {len(found)})")
    sections = (("import cycles", [" <-> ".join(c) for c in structure.import_cycles(trees)]),
                ("imports against the layer order", structure.layer_violations(trees)),
                ("inference modules importing training code", structure.training_leaks(trees)))
    for title, lines in sections:
        print(f"{title}: {len(lines)}")
        for line in lines:
            print(f"  {line}")
    missing, total = structure.undocumented(trees)
    print(f"public definitions without a docstring: {len(missing)} of {total}")
    for name in missing:
        print(f"  {name}")


if __name__ == "__main__":
    main()
