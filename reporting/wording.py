"""SR codes: a pack's codes (models/pack.py) as pydicom codes, and the project's own codes beside them.

Each class's report sentence and SR code is its pack's (``pack.toml``, ``[[classes]]``). Classes without a
standard code use the private coding scheme ``99PREDRAFT``; the hip pack's are:

| code | meaning |
|---|---|
| 99PREDRAFT NONE | No orthopedic hardware |
| 99PREDRAFT CANNSCREWS | Cannulated screw fixation of the femoral neck |
| 99PREDRAFT THAFIX | Total hip arthroplasty with additional femoral fixation |
| 99PREDRAFT POSTINF | Post-infectious hip (e.g. antibiotic cement spacer) |
| 99PREDRAFT INDET | Indeterminate, review (every pack's default) |
| 99PREDRAFT PROB | Model probability of the finding (every pack) |
| 99PREDRAFT CLASS | AI classification (every pack: the concept of the AI results SR's qualitative evaluation) |
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from predraft.models.pack import PRIVATE_SCHEME, Pack, PackCode

__all__ = ["CLASSIFICATION_CODE", "PRIVATE_SCHEME", "PROBABILITY_CODE", "as_code", "finding_code"]

PROBABILITY_CODE = Code("PROB", PRIVATE_SCHEME, "Model probability of the finding")
CLASSIFICATION_CODE = Code("CLASS", PRIVATE_SCHEME, "AI classification")


def as_code(code: PackCode) -> Code:
    return Code(code.value, code.scheme, code.meaning)


def finding_code(pack: Pack, name: str | None) -> Code:
    """The SR code of class ``name`` of ``pack``; the pack's indeterminate code for None."""
    return as_code(pack.code(name))
