"""aldm experiment edit on the tiny few-shot run: every part runs and its numbers are what they claim."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # the tiny stages (session fixture)


def test_the_edit_experiment_scores_fills_and_edits(tiny_runs, phantom_root, tmp_path):
    from aldm.diffusion.settings import GenerationSettings
    from aldm.editing.editor import EditSettings
    from aldm.experiments.editing import FILLS, EditExperiment, run_edit_experiment

    exp = EditExperiment(model=tiny_runs["fewshot"], out=str(tmp_path / "edit"), subjects=2,
                         settings=GenerationSettings(steps=2), edit=EditSettings(6.0),
                         twins=str(phantom_root / "healthy-twins"))
    results = run_edit_experiment(exp, log=lambda line: None)
    fill = results["healthy_fill"]
    assert fill["n"] == 2 and set(fill["fills"]) == set(FILLS)
    for scores in fill["fills"].values():
        assert 0 < scores["ssim"]["mean"] <= 1 and scores["mse"]["mean"] > 0
    removal = results["removal"]  # scored against each subject's healthy twin
    assert removal["n"] == 2 and all(0 < v["ssim"]["mean"] <= 1 for v in removal["fills"].values())
    assert set(results["edits"]) >= {"transplant", "grow", "shrink", "remove", "insert into twin"}
    for part in results["edits"].values():
        assert part["n"] == 2 and np.isfinite(part["seam"]["mean"]) and part["sharpness_over_input"]["mean"] > 0
    written = json.loads((tmp_path / "edit" / "edit.json").read_text())
    assert written["healthy_fill"]["fills"]["edit"] == fill["fills"]["edit"]
    assert "| edit |" in (tmp_path / "edit" / "edit.md").read_text()
    assert (tmp_path / "edit" / "edit-figure.png").stat().st_size > 10_000
