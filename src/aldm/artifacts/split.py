"""A split file: the JSON of a patient-level split (K shots, held-out test, pool, CV folds).

How splits are drawn is :mod:`aldm.data.splits`; this module only writes and reads the file.
"""

from __future__ import annotations

import json
import os

from ..errors import AldmError
from ..io.atomic import atomic_write_text


def save_split(path: str, split) -> None:
    """Write a split (dict or list of folds) as JSON, atomically."""
    atomic_write_text(path, json.dumps(split, indent=2) + "\n")


def load_split(path: str):
    """A split written by :func:`save_split` (an AldmError naming the file when missing or damaged)."""
    if not os.path.isfile(path):
        raise AldmError(f"{path}: split file not found")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise AldmError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
