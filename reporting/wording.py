"""Report wording and SR codes for each hardware class (docs/clinical.md, "Hardware classes").

Classes without a standard code use the private coding scheme ``99PREDRAFT``:

| code | meaning |
|---|---|
| 99PREDRAFT NONE | No orthopedic hardware |
| 99PREDRAFT CANNSCREWS | Cannulated screw fixation of the femoral neck |
| 99PREDRAFT THAFIX | Total hip arthroplasty with additional femoral fixation |
| 99PREDRAFT POSTINF | Post-infectious hip (e.g. antibiotic cement spacer) |
| 99PREDRAFT INDET | Indeterminate, review |
| 99PREDRAFT PROB | Model probability of the finding |
"""

from __future__ import annotations

from pydicom.sr.coding import Code

from predraft.models.taxonomy import HardwareClass

PRIVATE_SCHEME = "99PREDRAFT"

SENTENCES: dict[HardwareClass, str] = {
    HardwareClass.NONE: "No orthopedic hardware.",
    HardwareClass.THA: "Total hip arthroplasty.",
    HardwareClass.HEMI: "Hemiarthroplasty.",
    HardwareClass.IMN: "Intramedullary nail fixation of the proximal femur.",
    HardwareClass.CANNULATED_SCREWS: "Cannulated screw fixation of the femoral neck.",
    HardwareClass.DHS: "Sliding (dynamic) hip screw fixation.",
    HardwareClass.PLATE: "Lateral blade or plate fixation of the proximal femur.",
    HardwareClass.THA_PLUS_FIXATION: "Total hip arthroplasty with additional femoral fixation (plate and/or cerclage).",
    HardwareClass.POST_INFECTIOUS: "Post-infectious hip (e.g. antibiotic cement spacer).",
}

CODES: dict[HardwareClass, Code] = {
    HardwareClass.NONE: Code("NONE", PRIVATE_SCHEME, "No orthopedic hardware"),
    HardwareClass.THA: Code("304120007", "SCT", "Total hip replacement prosthesis"),
    HardwareClass.HEMI: Code("304121006", "SCT", "Femoral head prosthesis"),
    HardwareClass.IMN: Code("63289001", "SCT", "Bone nail"),
    HardwareClass.CANNULATED_SCREWS: Code("CANNSCREWS", PRIVATE_SCHEME, "Cannulated screw fixation of femoral neck"),
    HardwareClass.DHS: Code("257327003", "SCT", "Dynamic hip screw plate"),
    HardwareClass.PLATE: Code("271003", "SCT", "Bone plate"),
    HardwareClass.THA_PLUS_FIXATION: Code("THAFIX", PRIVATE_SCHEME, "Total hip arthroplasty with femoral fixation"),
    HardwareClass.POST_INFECTIOUS: Code("POSTINF", PRIVATE_SCHEME, "Post-infectious hip"),
}

INDETERMINATE_CODE = Code("INDET", PRIVATE_SCHEME, "Indeterminate, review")
PROBABILITY_CODE = Code("PROB", PRIVATE_SCHEME, "Model probability of the finding")
INDETERMINATE_SENTENCE = "Indeterminate, review."
