"""Patient-level splits never leak and follow the labels."""

from __future__ import annotations

import pytest

from aldm.artifacts.split import load_split, save_split
from aldm.data.splits import few_shot_split, repeated_kfold
from aldm.errors import AldmError


def _rows(n=60, mutant_every=5):
    rows = []
    for i in range(n):
        idh = "mutant" if i % mutant_every == 0 else "wildtype"
        rows.append({"subject": f"P{i:03d}", "patient": f"P{i:03d}", "idh": idh})
        if i % 10 == 0:  # some patients have a follow-up scan
            rows.append({"subject": f"P{i:03d}_FU", "patient": f"P{i:03d}", "idh": idh})
    return rows


def test_few_shot_split_is_disjoint_and_stratified():
    rows = _rows()
    split = few_shot_split(rows, k=10, n_test=20, seed=3)
    patient = {r["subject"]: r["patient"] for r in rows}
    shots = {patient[s] for s in split["k_shot"]}
    test = {patient[s] for s in split["test"]}
    pool = {patient[s] for s in split["pool"]}
    assert len(shots) == 10 and len(test) == 20
    assert not (shots & test) and not (shots & pool) and not (test & pool)
    assert len(shots | test | pool) == 60
    idh = {r["subject"]: r["idh"] for r in rows}
    assert sum(idh[s] == "mutant" for s in split["k_shot"]) == 2  # 20 % of 10
    assert sum(idh[s] == "mutant" for s in split["test"]) == 4
    assert split == few_shot_split(rows, k=10, n_test=20, seed=3)
    assert split["k_shot"] != few_shot_split(rows, k=10, n_test=20, seed=4)["k_shot"]


def test_few_shot_split_bad_values():
    with pytest.raises(AldmError, match="exceed the 60 patients"):
        few_shot_split(_rows(), k=50, n_test=20)
    with pytest.raises(AldmError, match="at least 1"):
        few_shot_split(_rows(), k=0, n_test=20)


def test_repeated_kfold_covers_each_subject_once_per_repeat():
    rows = _rows()
    folds = repeated_kfold(rows, n_splits=5, n_repeats=3, seed=0)
    assert len(folds) == 15
    patient = {r["subject"]: r["patient"] for r in rows}
    for repeat in range(3):
        tested = [s for f in folds if f["repeat"] == repeat for s in f["test"]]
        assert sorted(tested) == sorted(r["subject"] for r in rows)
    for f in folds:
        assert not ({patient[s] for s in f["train"]} & {patient[s] for s in f["test"]})
    assert [f["test"] for f in folds[:5]] != [f["test"] for f in folds[5:10]]  # repeats reshuffle


def test_split_json_round_trip(tmp_path):
    split = few_shot_split(_rows(), k=4, n_test=8)
    save_split(str(tmp_path / "s.json"), split)
    assert load_split(str(tmp_path / "s.json")) == split
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(AldmError, match="bad.json: not valid JSON"):
        load_split(str(tmp_path / "bad.json"))
