"""A short soak of the web server (benchmarks/soak.py): concurrent clients submitting, polling,
downloading and cancelling; no 5xx, every accepted job ends done or cancelled, memory bounded."""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = pytest.mark.slow  # a server subprocess driven for 12 seconds; see pyproject.toml


def _soak_module():
    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "soak.py")
    spec = importlib.util.spec_from_file_location("soak", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_clients_for_twelve_seconds(tiny_runs):
    report = _soak_module().run_soak(tiny_runs["fewshot"], seconds=12, clients=3)
    assert report["server_errors"] == 0, report["requests"]
    assert report["jobs_accepted"] >= 4
    assert set(report["jobs_by_status"]) <= {"done", "cancelled"}, report["jobs_by_status"]
    assert report["jobs_by_status"].get("cancelled", 0) >= 1 and report["jobs_by_status"].get("done", 0) >= 1
    # memory: the second half never grows far past the first half's peak (model loaded in the first half)
    assert report["rss_mb_max_second_half"] <= 1.25 * report["rss_mb_max_first_half"] + 32
    # SIGTERM: uvicorn drains, then re-raises the signal (exit -15); no traceback on the way
    assert report["server_exit"] in (0, -15) and not report["server_traceback"]
