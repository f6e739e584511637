"""The vocabulary every stage shares: views, sides and SOP classes; and the hip pack's classes as an enum.

Classes are a pack's (``models/packs/<name>/pack.toml``, :mod:`predraft.models.pack`), passed as their names.
:class:`HardwareClass` names the hip pack's nine, for the code that is about hips only (the phantom generator,
the hip's defaults of training and evaluation); ``tests/unit/test_packs.py`` holds it to the pack. Accept a
string or an enum at the edges (``View("frog_leg")``) and pass enums inward.
"""

from __future__ import annotations

from enum import StrEnum


class HardwareClass(StrEnum):
    """The hip pack's nine hardware categories, in its model's output order (docs/clinical.md)."""

    NONE = "none"
    THA = "tha"
    HEMI = "hemi"
    IMN = "imn"
    CANNULATED_SCREWS = "cannulated_screws"
    DHS = "dhs"
    PLATE = "plate"
    THA_PLUS_FIXATION = "tha_plus_fixation"
    POST_INFECTIOUS = "post_infectious"


#: The model's output order.
CLASS_ORDER: tuple[HardwareClass, ...] = tuple(HardwareClass)


class View(StrEnum):
    AP_PELVIS = "ap_pelvis"
    AP_HIP = "ap_hip"
    FROG_LEG = "frog_leg"
    CROSS_TABLE_LATERAL = "cross_table_lateral"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        return _VIEW_LABELS[self]


_VIEW_LABELS = {
    View.AP_PELVIS: "AP pelvis",
    View.AP_HIP: "AP hip",
    View.FROG_LEG: "frog-leg lateral",
    View.CROSS_TABLE_LATERAL: "cross-table lateral",
    View.UNKNOWN: "unlabelled view",
}


class Side(StrEnum):
    """The patient's side of a hip. ``UNKNOWN`` when no tag or rule says which."""

    RIGHT = "right"
    LEFT = "left"
    UNKNOWN = "unknown"


#: SOP classes of the radiographs that are classified: CR Image Storage and Digital X-Ray Image
#: Storage - For Presentation. (DX For Processing is raw detector data and is never classified.)
RADIOGRAPH_SOP_CLASSES: tuple[str, ...] = ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")

#: Secondary Capture Image Storage: radiographs digitised or re-captured; classified when in scope.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The multi-frame Secondary Capture classes a converter writes a picture as (dcmtk's img2dcm --new-sc: Grayscale
#: Byte for a grey JPEG, True Color for a colour one; Grayscale Word for 16 bits): classified when they hold one
#: frame (an instance of more frames is refused by its preparation, alone).
MULTIFRAME_SECONDARY_CAPTURES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3",
    "1.2.840.10008.5.1.4.1.1.7.4",
)
#: Structured reports (Basic Text, Enhanced, Comprehensive, Comprehensive 3D: predraft's own AI results SR, which a
#: PACS may send back with its study): stored with their study, never classified.
STRUCTURED_REPORT_SOP_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
)
#: Digital X-Ray Image Storage - For Processing: raw detector data, refused.
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
#: Images predraft classifies when they show a hip or pelvis.
CLASSIFIABLE_SOP_CLASSES: tuple[str, ...] = (*RADIOGRAPH_SOP_CLASSES, SECONDARY_CAPTURE, *MULTIFRAME_SECONDARY_CAPTURES)
#: Everything predraft stores.
STORABLE_SOP_CLASSES: tuple[str, ...] = (*CLASSIFIABLE_SOP_CLASSES, *STRUCTURED_REPORT_SOP_CLASSES)
