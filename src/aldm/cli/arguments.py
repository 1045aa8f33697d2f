"""Argument types of the ``aldm`` command line: each refuses a bad value with argparse's one-line error."""

from __future__ import annotations

import argparse
import math


def _parsed(text: str, kind: type, what: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _refuse_unless(ok: bool, message: str) -> None:
    if not ok:
        raise argparse.ArgumentTypeError(message)


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _parsed(text, int, "a whole number")
    _refuse_unless(value >= 1, f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _parsed(text, int, "a whole number")
    _refuse_unless(value >= 0, f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _parsed(text, float, "a number")
    _refuse_unless(value > 0 and value != float("inf"), f"must be a number > 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """A finite number."""
    value = _parsed(text, float, "a number")
    _refuse_unless(math.isfinite(value), f"must be a finite number, got {text}")
    return value


def port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    value = positive_int(text)
    _refuse_unless(value <= 65535, f"a port is 1..65535, got {value}")
    return value
