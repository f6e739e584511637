"""Synthetic hip radiographs ("phantoms") written as DICOM.

This first version draws one demo study: an AP pelvis, a right frog-leg lateral and a right cross-table
lateral, with a total hip arthroplasty on the right and a native left hip. The anatomy is schematic
(soft tissue, pelvic ring, femoral heads, necks and shafts); the images are CR, 12-bit MONOCHROME2,
with the tags a PACS would send for those views.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import ComputedRadiographyImageStorage as CRImageStorage

from models.taxonomy import HardwareClass, Side, View
from models.views import CROSSTABLE, DANELIUS_MILLER, LAUENSTEIN

_MAX = 4095  # 12-bit


@dataclass(frozen=True)
class PhantomImage:
    path: Path
    view: View
    sides: tuple[Side, ...]
    sop_instance_uid: str


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0:height, 0:width].astype(np.float32)


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, angle: float = 0.0
             ) -> np.ndarray:
    cos, sin = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _rod(yy: np.ndarray, xx: np.ndarray, y0: float, x0: float, y1: float, x1: float, radius: float) -> np.ndarray:
    """Pixels within ``radius`` of the segment (y0, x0)-(y1, x1)."""
    vy, vx = y1 - y0, x1 - x0
    t = np.clip(((yy - y0) * vy + (xx - x0) * vx) / (vy * vy + vx * vx), 0.0, 1.0)
    return (yy - (y0 + t * vy)) ** 2 + (xx - (x0 + t * vx)) ** 2 <= radius**2


def _hip(yy: np.ndarray, xx: np.ndarray, image: np.ndarray, cx: float, cy: float, mirror: float,
         hardware: HardwareClass, abduct: float = 0.0) -> None:
    """Draw one hip joint with femoral head centre (cy, cx); ``mirror`` is -1 for the image's left hip."""
    neck_x, neck_y = cx + mirror * 40, cy + 45
    shaft_angle = 0.12 - abduct  # the shaft runs down and slightly toward the midline
    shaft_dy, shaft_dx = np.cos(shaft_angle), -mirror * np.sin(shaft_angle)
    length = 0.9 * image.shape[0]
    image[_rod(yy, xx, neck_y, neck_x, neck_y + length * shaft_dy, neck_x + length * shaft_dx, 28)] += 900
    image[_rod(yy, xx, cy, cx, neck_y, neck_x, 16)] += 800
    image[_ellipse(yy, xx, cy - 25, cx - mirror * 10, 50, 60)] += 500  # acetabular roof
    if hardware is HardwareClass.THA:
        image[_ellipse(yy, xx, cy, cx, 34, 34) & ~_ellipse(yy, xx, cy, cx, 26, 26)] = _MAX  # cup
        image[_ellipse(yy, xx, cy, cx, 20, 20)] = _MAX  # head
        image[_rod(yy, xx, cy, cx, neck_y, neck_x, 8)] = _MAX  # neck of the stem
        image[_rod(yy, xx, neck_y, neck_x, neck_y + 220 * shaft_dy, neck_x + 220 * shaft_dx, 10)] = _MAX  # stem
    else:
        image[_ellipse(yy, xx, cy, cx, 28, 28)] += 700  # native femoral head


def _radiograph(view: View, rng: np.random.Generator, right: HardwareClass, left: HardwareClass) -> np.ndarray:
    height, width = (512, 640) if view is View.AP_PELVIS else (512, 512)
    yy, xx = _grid(height, width)
    image = np.full((height, width), 150.0, dtype=np.float32)
    image[_ellipse(yy, xx, height * 0.6, width / 2, height * 0.7, width * 0.48)] += 600  # soft tissue
    if view is View.AP_PELVIS:
        image[_ellipse(yy, xx, height * 0.35, width / 2, 150, 260) & ~_ellipse(
            yy, xx, height * 0.38, width / 2, 110, 200)] += 700  # pelvic ring
        image[_rod(yy, xx, 0, width / 2, height * 0.25, width / 2, 30)] += 600  # sacrum and lumbar spine
        _hip(yy, xx, image, width * 0.26, height * 0.52, -1, right)  # patient's right on the image's left
        _hip(yy, xx, image, width * 0.74, height * 0.52, +1, left)
    elif view is View.FROG_LEG:
        _hip(yy, xx, image, width * 0.45, height * 0.4, -1, right, abduct=0.6)
    else:
        _hip(yy, xx, image, width * 0.5, height * 0.35, -1, right, abduct=-0.2)
    image += rng.normal(0, 40, image.shape).astype(np.float32)
    return np.clip(image, 0, _MAX).astype(np.uint16)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _dataset(pixels: np.ndarray, study: Dataset, series_number: int, view: View) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.update(study)
    ds.SOPClassUID = CRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Manufacturer = "predraft phantom"
    ds.BodyPartExamined = "PELVIS" if view is View.AP_PELVIS else "HIP"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = [0.7, 0.7]
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    if view is View.AP_PELVIS:
        ds.ViewPosition, ds.SeriesDescription, ds.PatientOrientation = "AP", "AP PELVIS", ["L", "F"]
    elif view is View.FROG_LEG:
        ds.ViewPosition, ds.SeriesDescription, ds.ImageLaterality = "AP", "R HIP FROG LATERAL", "R"
        ds.ProjectionEponymousNameCodeSequence = Sequence([_code(LAUENSTEIN[1], "SCT", "Lauenstein")])
    else:
        ds.ViewPosition, ds.SeriesDescription, ds.ImageLaterality = "LL", "R HIP CROSS-TABLE LATERAL", "R"
        ds.ViewModifierCodeSequence = Sequence([_code(CROSSTABLE[1], "DCM", "Crosstable")])
        ds.ProjectionEponymousNameCodeSequence = Sequence([_code(DANELIUS_MILLER[1], "SCT", "Danelius-Miller")])
    return ds


def write_demo_study(out_dir: Path, *, seed: int = 0) -> list[PhantomImage]:
    """Write the three-view demo study (right THA, native left hip) into ``out_dir``."""
    rng = np.random.default_rng(seed)
    now = datetime.now()
    study = Dataset()
    study.PatientName = "PHANTOM^DEMO"
    study.PatientID = f"PHANTOM-{seed:04d}"
    study.PatientBirthDate = "19500101"
    study.PatientSex = "O"
    study.StudyInstanceUID = generate_uid()
    study.StudyDate, study.StudyTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    study.AccessionNumber = f"DEMO{now:%H%M%S}"
    study.StudyID = "1"
    study.StudyDescription = "XR PELVIS AND RIGHT HIP 3 VIEWS"
    study.ReferringPhysicianName = ""
    out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for number, (view, sides) in enumerate(
        [(View.AP_PELVIS, (Side.RIGHT, Side.LEFT)), (View.FROG_LEG, (Side.RIGHT,)),
         (View.CROSS_TABLE_LATERAL, (Side.RIGHT,))], start=1
    ):
        ds = _dataset(_radiograph(view, rng, HardwareClass.THA, HardwareClass.NONE), study, number, view)
        path = out_dir / f"{number:02d}_{view.value}.dcm"
        ds.save_as(path, enforce_file_format=True)
        images.append(PhantomImage(path, view, sides, ds.SOPInstanceUID))
    return images
