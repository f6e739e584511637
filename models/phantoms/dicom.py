"""DICOM for the phantoms: a rendered image, its study and its view become a CR or DX instance.

Contract: ``image_dataset`` builds one instance of CR Image Storage or Digital X-Ray Image Storage -
For Presentation from display values in [0, 1] (bone bright), with the tags a PACS sends: patient,
study (UID, accession, date, description), series (one series per image, as CR and DX modalities
send), equipment, view (ViewPosition, codes of PS3.16 CID 4010/4011/4012, laterality, body part,
PatientOrientation), pixel spacing, VOI windows (one or two), rescale (DX always, CR sometimes),
PresentationLUTShape, MONOCHROME1 or MONOCHROME2, BitsStored 10 to 16 in 16 allocated bits. Which
tags are present varies as in real data: some view tags are dropped or are free text, yet what is left
always lets predraft.models.views.classify_view decide the true view and side (every dataset is checked; a
profile that would mislead it falls back to the full, canonical tag set, and ``TagProfile.fallback``
says so). ``write_dataset`` writes explicit VR little endian with a conformant file meta header.

Checked with dciodvfy (dicom3tools): with the canonical profile there are no errors. A dropped Type 2
attribute (CR's BodyPartExamined, ViewPosition, Laterality; PatientOrientation) is usually sent empty,
which is conformant, and sometimes left out, which is not but is what real devices do; likewise an empty
AnatomicRegionSequence beside a BodyPartExamined. Those are the only errors it reports, on purpose.
ProjectionEponymousNameCodeSequence and ViewModifierCodeSequence at the top level of a CR instance are
outside the CR IOD (dciodvfy warns) but are sent by real CR devices and read by the view rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from predraft.models.taxonomy import Side, View
from predraft.models.views import ANTERO_POSTERIOR, CROSSTABLE, DANELIUS_MILLER, LAUENSTEIN, classify_view

SOP_CLASSES = {"CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
_LATERAL_VIEW = ("SCT", "399067008")
_ANATOMY = {"PELVIS": ("SCT", "816092008", "Pelvis"), "HIP": ("SCT", "29836001", "Hip")}
_SIDE_WORDS = {Side.RIGHT: ("RIGHT", "Right", "RT", "Rt", "R"), Side.LEFT: ("LEFT", "Left", "LT", "Lt", "L")}


@dataclass(frozen=True)
class Study:
    """What every image of one study shares."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_uid: str
    accession: str
    study_id: str
    date: str
    time: str
    description: str
    modality: str  # CR or DX

    def __post_init__(self) -> None:
        if self.modality not in SOP_CLASSES:
            raise ValueError(f"modality must be CR or DX, got {self.modality!r}")


@dataclass(frozen=True)
class Encoding:
    """How display values become stored values."""

    bits_stored: int = 12
    photometric: str = "MONOCHROME2"
    low: float = 0.0  # fraction of the stored range used for display 0 ...
    high: float = 1.0  # ... and for display 1
    rescale: tuple[float, float] | None = None  # slope, intercept
    windows: int = 1  # 0: none (CR only), 1 or 2
    window: tuple[float, float] = (0.0, 1.0)  # the display values the first window spans (it clips outside)
    voi_function: str | None = None  # None (LINEAR by default), LINEAR_EXACT or SIGMOID
    presentation_lut: str | None = None

    def __post_init__(self) -> None:
        if not 10 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be 10 to 16, got {self.bits_stored}")
        if self.photometric not in {"MONOCHROME1", "MONOCHROME2"}:
            raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {self.photometric!r}")
        if self.presentation_lut == "INVERSE" and self.photometric != "MONOCHROME1":
            raise ValueError("PresentationLUTShape INVERSE is only written with MONOCHROME1")
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"low and high must satisfy 0 <= low < high <= 1, got {self.low} and {self.high}")
        if self.windows not in {0, 1, 2}:
            raise ValueError(f"windows must be 0, 1 or 2, got {self.windows}")
        if not self.window[0] < self.window[1]:
            raise ValueError(f"window must run from a lower to a higher display value, got {self.window}")


def sample_encoding(modality: str, rng: np.random.Generator) -> Encoding:
    """Bit depth, photometric, rescale, windows and presentation LUT as CR and DX devices vary them."""
    bits = int(rng.choice([10, 12, 12, 12, 14, 15, 16]))
    photometric = "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2"
    if modality == "DX":
        rescale: tuple[float, float] | None = (1.0, 0.0)  # the DX Image module allows no other
        presentation: str | None = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        windows = 1 if rng.random() < 0.7 else 2
    else:
        roll = rng.random()
        rescale = None if roll < 0.5 else (1.0, 0.0) if roll < 0.85 else (0.5, -100.0)
        if photometric == "MONOCHROME1":
            presentation = "INVERSE" if rng.random() < 0.5 else None
        else:
            presentation = "IDENTITY" if rng.random() < 0.15 else None
        windows = int(rng.choice([0, 1, 1, 1, 1, 1, 2, 2]))
    roll = rng.random()
    function = None if roll < 0.85 else "LINEAR_EXACT" if roll < 0.95 else "SIGMOID"
    return Encoding(
        bits_stored=bits,
        photometric=photometric,
        low=float(rng.uniform(0.0, 0.06)),
        high=float(rng.uniform(0.85, 1.0)),
        rescale=rescale,
        windows=windows,
        window=(float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.92, 1.02))),
        voi_function=function if windows else None,
        presentation_lut=presentation,
    )


@dataclass(frozen=True)
class TagProfile:
    """Which optional view tags an image keeps, and its free-text descriptions."""

    body_part: bool = True
    view_position: bool = True
    series_description: bool = True
    orientation: bool = True
    codes: bool = True  # ViewModifier / ProjectionEponymousName (and ViewCode, AnatomicRegion on DX)
    laterality: bool = True
    protocol: bool = False
    blank: bool = True  # a dropped Type 2 attribute is sent empty (conformant); else it is left out
    side_word: int = 0  # index into the side's words (RIGHT, Right, RT, Rt, R)
    wording: int = 0  # which free-text pattern the descriptions follow
    fallback: bool = False  # True when the sampled profile would have misled the view rules

    @classmethod
    def canonical(cls) -> TagProfile:
        return cls()


def sample_profile(rng: np.random.Generator) -> TagProfile:
    return TagProfile(
        body_part=rng.random() > 0.15,
        view_position=rng.random() > 0.15,
        series_description=rng.random() > 0.1,
        orientation=rng.random() > 0.3,
        codes=rng.random() > 0.3,
        laterality=rng.random() > 0.15,
        protocol=rng.random() < 0.4,
        blank=rng.random() < 0.7,
        side_word=int(rng.integers(0, 5)),
        wording=int(rng.integers(0, 6)),
    )


def _code(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _description(view: View, side: Side | None, profile: TagProfile) -> tuple[str, str]:
    """(SeriesDescription, ProtocolName) in one of several free-text wordings."""
    if view is View.AP_PELVIS:
        words = ("AP PELVIS", "PELVIS AP", "Pelvis AP", "XR PELVIS AP", "AP Pelvis supine", "PELVIS 1V")
        return words[profile.wording % len(words)], "PELVIS"
    if side is None:
        raise ValueError(f"a {view.label} shows one hip: its side is needed")
    w = _SIDE_WORDS[side][profile.side_word]
    patterns = {
        View.AP_HIP: (f"{w} HIP AP", f"AP {w} HIP", f"Hip {w} AP", f"HIP AP {w}", f"{w} hip ap", f"AP HIP {w}"),
        View.FROG_LEG: (
            f"{w} HIP FROG LATERAL",
            f"{w} hip frog lat",
            f"FROG LEG LAT {w}",
            f"Hip Lauenstein {w}",
            f"{w} HIP FROGLEG",
            f"Frog lateral {w} hip",
        ),
        View.CROSS_TABLE_LATERAL: (
            f"{w} HIP CROSS-TABLE LATERAL",
            f"{w} hip cross table lat",
            f"CROSS TABLE LAT {w} HIP",
            f"Hip Danelius-Miller {w}",
            f"XTABLE LAT HIP {w}",
            f"{w} HIP LATERAL",
        ),
    }[view]
    return patterns[profile.wording % len(patterns)], "HIP 2+ VIEWS"


def _view_tags(
    ds: Dataset, view: View, side: Side | None, modality: str, orientation: list[str], profile: TagProfile
) -> None:
    """The view, side and body-part tags of ``profile`` (removes the ones it drops)."""
    for keyword in (
        "BodyPartExamined",
        "ViewPosition",
        "SeriesDescription",
        "ProtocolName",
        "PatientOrientation",
        "ViewCodeSequence",
        "ViewModifierCodeSequence",
        "ProjectionEponymousNameCodeSequence",
        "AnatomicRegionSequence",
        "Laterality",
        "ImageLaterality",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    body_part = "PELVIS" if view is View.AP_PELVIS else "HIP"
    letter = "B" if side is None else {Side.RIGHT: "R", Side.LEFT: "L"}[side]
    series, protocol = _description(view, side, profile)
    # Type 2 attributes of the CR IOD (and PatientOrientation, 2C) are sent empty or left out when dropped;
    # DX's BodyPartExamined and ViewPosition are Type 3 (left out), its PatientOrientation 1C (always sent)
    type_2 = modality == "CR" and profile.blank
    position = ("RL" if side is Side.RIGHT else "LL") if view is View.CROSS_TABLE_LATERAL else "AP"
    if profile.body_part or type_2:
        ds.BodyPartExamined = body_part if profile.body_part else ""
    if profile.series_description:
        ds.SeriesDescription = series
    if profile.protocol:
        ds.ProtocolName = protocol
    if profile.orientation or modality == "DX":
        ds.PatientOrientation = orientation
    elif profile.blank:
        ds.PatientOrientation = ""
    if profile.view_position or type_2:
        ds.ViewPosition = position if profile.view_position else ""
    if modality == "DX":
        ds.ImageLaterality = letter  # Type 1
    elif view is not View.AP_PELVIS and (profile.laterality or type_2):
        ds.Laterality = letter if profile.laterality else ""
    if not profile.codes:
        if modality == "DX":
            ds.AnatomicRegionSequence = Sequence()  # Type 2: present, empty
        return
    if view is View.FROG_LEG:
        ds.ProjectionEponymousNameCodeSequence = Sequence([_code(*LAUENSTEIN, "Lauenstein")])
    if view is View.CROSS_TABLE_LATERAL:
        modifier = _code(*CROSSTABLE, "Crosstable")
        ds.ProjectionEponymousNameCodeSequence = Sequence([_code(*DANELIUS_MILLER, "Danelius-Miller")])
        if modality == "DX":
            lateral = _code(*_LATERAL_VIEW, "lateral")
            lateral.ViewModifierCodeSequence = Sequence([modifier])
            ds.ViewCodeSequence = Sequence([lateral])
        else:
            ds.ViewModifierCodeSequence = Sequence([modifier])
    elif modality == "DX":
        ds.ViewCodeSequence = Sequence([_code(*ANTERO_POSTERIOR, "antero-posterior")])
    if modality == "DX":
        ds.AnatomicRegionSequence = Sequence([_code(*_ANATOMY[body_part])])


def _decides(ds: Dataset, view: View, sides: tuple[Side, ...]) -> bool:
    result = classify_view(ds)
    return (result.view, result.sides, result.in_scope) == (view, sides, True)


def image_dataset(
    image: np.ndarray,
    *,
    study: Study,
    view: View,
    side: Side | None,
    orientation: list[str],
    pixel_spacing: float,
    series_number: int,
    series_uid: str,
    sop_uid: str,
    encoding: Encoding,
    profile: TagProfile,
    acquisition_time: str,
    exposure: tuple[float, float, float] = (75.0, 20.0, 250.0),
) -> tuple[Dataset, TagProfile]:
    """One radiograph instance of ``image`` (display values in [0, 1], standard orientation).

    ``orientation`` is the true PatientOrientation of ``image`` as stored (["L", "F"] for a frontal image
    in the standard orientation). ``exposure`` = (kVp, mAs, ms). Returns the dataset and the profile it
    finally carries (``fallback`` set when the sampled one had to be replaced by the canonical one).
    """
    if view is View.AP_PELVIS:
        sides: tuple[Side, ...] = (Side.RIGHT, Side.LEFT)
    elif side in (Side.RIGHT, Side.LEFT):
        sides = (side,)
    else:
        raise ValueError(f"a one-hip view needs side right or left, got {side!r}")
    modality = study.modality
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = acquisition_time
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = "PREDRAFT PHANTOM"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = f"{modality}ROOM{series_number % 3 + 1}"
    ds.StudyDescription = study.description
    ds.ManufacturerModelName = "Synthetic " + ("CR reader" if modality == "CR" else "flat panel")
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.KVP = f"{exposure[0]:.0f}"
    ds.ExposureTime = f"{exposure[2]:.0f}"
    ds.Exposure = f"{exposure[1]:.0f}"
    ds.DistanceSourceToDetector = "1150" if view is not View.CROSS_TABLE_LATERAL else "1000"
    ds.SoftwareVersions = "predraft-phantoms 1"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    spacing = f"{pixel_spacing:.6f}"[:16]
    ds.PixelSpacing = [spacing, spacing]
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.PositionerType = "COLUMN"
        ds.AcquisitionContextSequence = Sequence()
        detector = f"{pixel_spacing * 1.1:.6f}"[:16]
        ds.ImagerPixelSpacing = [detector, detector]
        ds.EstimatedRadiographicMagnificationFactor = "1.1"
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "estimated radiographic magnification"
    _view_tags(ds, view, side, modality, orientation, profile)
    if not _decides(ds, view, sides):
        profile = TagProfile(side_word=0, wording=0, fallback=True)
        _view_tags(ds, view, side, modality, orientation, profile)
        if not _decides(ds, view, sides):  # pragma: no cover - the canonical tags are the view rules' own
            raise RuntimeError(f"canonical tags of a {view.label} do not decide it: {classify_view(ds)}")
    _pixels(ds, image, encoding)
    return ds, profile


def _pixels(ds: Dataset, image: np.ndarray, encoding: Encoding) -> None:
    maximum = 2**encoding.bits_stored - 1
    low, high = encoding.low * maximum, encoding.high * maximum
    stored = image * np.float32(high - low)
    stored += np.float32(low)
    # the stored values at the two ends of the first window
    low, high = (low + d * (high - low) for d in encoding.window)
    if encoding.photometric == "MONOCHROME1":
        np.subtract(np.float32(maximum), stored, out=stored)
        low, high = maximum - high, maximum - low
    np.rint(stored, out=stored)
    np.clip(stored, 0, maximum, out=stored)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = encoding.photometric
    ds.Rows, ds.Columns = image.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (
        16,
        encoding.bits_stored,
        encoding.bits_stored - 1,
        0,
    )
    slope, intercept = encoding.rescale or (1.0, 0.0)
    if encoding.rescale is not None:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{intercept:g}", f"{slope:g}", "US"
    if encoding.windows:
        lo, hi = low * slope + intercept, high * slope + intercept
        centre, width = (lo + hi) / 2.0, max(hi - lo, 2.0)
        centres, widths, names = [centre], [width], ["NORMAL"]
        if encoding.windows == 2:  # a harder window over the bright (bone) end
            bright = hi if encoding.photometric == "MONOCHROME2" else lo
            centres.append(centre + (bright - centre) * 0.35)
            widths.append(width * 0.6)
            names.append("BONE")
        ds.WindowCenter = [f"{c:.1f}" for c in centres] if len(centres) > 1 else f"{centres[0]:.1f}"
        ds.WindowWidth = [f"{w:.1f}" for w in widths] if len(widths) > 1 else f"{widths[0]:.1f}"
        ds.WindowCenterWidthExplanation = names if len(names) > 1 else names[0]
        if encoding.voi_function:
            ds.VOILUTFunction = encoding.voi_function
    if encoding.presentation_lut:
        ds.PresentationLUTShape = encoding.presentation_lut
    ds.PixelData = stored.astype("<u2").tobytes()


def write_dataset(ds: Dataset, path: Path) -> None:
    """Write ``ds`` as a DICOM file (preamble, file meta, explicit VR little endian)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
