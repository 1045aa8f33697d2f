"""Clinical labels parsed from the datasets' metadata, with their real value spellings.

Every parser returns a canonical value or ``None`` for missing:

* IDH: ``"mutant"`` / ``"wildtype"``. UCSF-PDGM writes ``wildtype`` or a mutant form
  (``mutated (NOS)``, ``IDH1 p.R132H``, ``IDH2 p.R172K``...): anything but wildtype is mutant,
  ``unknown`` / empty is missing. UPENN-GBM's ``IDH1`` column: ``Wildtype``, ``Mutated``;
  ``NOS`` (not otherwise specified) and ``NEC`` (not elsewhere classified) are missing.
* WHO grade: 2, 3 or 4 (UCSF ``WHO CNS Grade``; UPENN-GBM is all grade 4 glioblastoma).
* 1p/19q: ``"codeleted"`` (``co-deletion``, ``relative co-deletion``) / ``"intact"``.
"""

from __future__ import annotations

import math

MISSING = {"", "unknown", "nan", "na", "n/a", "not available", "nos", "nec", "indeterminate", "none"}


def _clean(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def parse_idh(value) -> str | None:
    """Canonical IDH status from any of the datasets' spellings."""
    text = _clean(value).lower()
    if text in MISSING:
        return None
    if text in {"wildtype", "wild-type", "wild type", "wt", "negative"}:
        return "wildtype"
    return "mutant"  # 'mutated', 'mutated (nos)', 'idh1 p.r132h', 'idh2 p.r172k', ...


def parse_grade(value) -> int | None:
    """WHO CNS grade 2, 3 or 4 from ``4``, ``4.0``, ``IV``, ``grade 4``..."""
    text = _clean(value).lower().replace("grade", "").replace("who", "").strip()
    if text in MISSING:
        return None
    roman = {"ii": 2, "iii": 3, "iv": 4}
    if text in roman:
        return roman[text]
    try:
        grade = int(float(text))
    except ValueError:
        return None
    return grade if grade in (1, 2, 3, 4) else None


def parse_codeletion(value) -> str | None:
    """Canonical 1p/19q status."""
    text = _clean(value).lower()
    if text in MISSING:
        return None
    if "co-del" in text or "codel" in text:
        return "codeleted"
    if "intact" in text or "non" in text:
        return "intact"
    return None
