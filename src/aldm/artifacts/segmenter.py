"""A trained tumour segmenter: a kind of run (``stage`` "segmenter"), written by ``aldm segmenter train``.

Its ``run.json`` holds, besides the run fields, ``segmenter`` (the SegmenterConfig as a dict, without the
device), ``subjects`` (who it was trained on: never a held-out test patient) and ``caches``; while it
trains it has the trainer's ``checkpoint.pt`` and ``metrics.csv`` (so ``--resume`` continues it), and
``weights.pt`` (``{"segmenter": state dict}``) once it has finished. Segmenter folders of 0.2
(``segmenter.json`` + ``segmenter.pt``, no run.json) are still read.
"""

from __future__ import annotations

import json
import os

from ..errors import AldmError
from ..io.checkpoint import load_checkpoint
from .run import RUN_INFO, WEIGHTS, Run

LEGACY_INFO = "segmenter.json"
LEGACY_WEIGHTS = "segmenter.pt"


class SegmenterRun(Run):
    """One segmenter folder (see the module docstring)."""

    @property
    def legacy(self) -> bool:
        """Whether the folder was written by 0.2 (``segmenter.json`` and no ``run.json``)."""
        return not os.path.exists(self.file(RUN_INFO)) and os.path.exists(self.file(LEGACY_INFO))

    @property
    def exists(self) -> bool:
        """Whether the folder holds a segmenter (finished or not)."""
        return self.legacy or super().exists

    @property
    def finished(self) -> bool:
        """Whether its training finished."""
        return os.path.exists(self.file(LEGACY_WEIGHTS)) if self.legacy else super().finished

    def description(self) -> dict:
        """{"config": SegmenterConfig fields, "subjects": [...], "caches": [...]} (an AldmError naming the
        folder when it is not a segmenter or its description is damaged)."""
        if self.legacy:
            path = self.file(LEGACY_INFO)
            try:
                with open(path, encoding="utf-8") as fh:
                    info = json.load(fh)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AldmError(f"{path}: damaged segmenter description ({type(exc).__name__})") from exc
            config = info.get("config") if isinstance(info, dict) else None
        else:
            if not super().exists:
                raise AldmError(f"{self.path}: not a segmenter folder (no {RUN_INFO}); train one with "
                                "aldm segmenter train")
            info, path = self.info, self.file(RUN_INFO)
            if self.stage != "segmenter":
                raise AldmError(f"{self.path}: a {self.stage} run, not a segmenter")
            config = info.get("segmenter")
        if not isinstance(config, dict) or not isinstance(info.get("subjects"), list):
            raise AldmError(f"{path}: damaged segmenter description (no config or subjects)")
        return {"config": config, "subjects": info["subjects"], "caches": info.get("caches", [])}

    def state_dict(self) -> dict:
        """The trained network's weights (an AldmError saying how to finish it when there are none)."""
        if self.legacy:
            return load_checkpoint(self.file(LEGACY_WEIGHTS))
        weights = self.weights()
        if not isinstance(weights, dict) or "segmenter" not in weights:
            raise AldmError(f"{self.file(WEIGHTS)}: not a segmenter's weights (no 'segmenter')")
        return weights["segmenter"]
