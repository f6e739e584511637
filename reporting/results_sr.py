"""The AI results SR: a draft's findings as IHE AI Results (AIR) asks for them, a Comprehensive 3D SR rooted in
TID 1500 (Measurement Report), written with highdicom's template classes beside the narrative SR
(:mod:`predraft.reporting.sr`), which says the same in words.

Content tree::

    CONTAINER  DCM 126000 Imaging Measurement Report (TID 1500)
      HAS CONCEPT MOD  language; HAS OBS CONTEXT  observer type Device (the first section's model)
      HAS CONCEPT MOD  SCT 168537006 Plain radiography (procedure reported)
      CONTAINS CONTAINER DCM 126010 Imaging Measurements
        CONTAINS CONTAINER DCM 125007 Measurement Group (TID 1410), one per pack and side:
          Tracking Identifier ("Right hip"), Tracking Unique Identifier
          Finding: the pack's code of the class, or its indeterminate code (the finding type, which viewers show)
          Finding Site: the pack's site, with laterality
          Algorithm Name, Algorithm Version, Algorithm Parameters (the card's training data summary)
          Image Region: SCOORD POLYLINE, the rectangle of the image the model read (the hip's half of an AP
            pelvis, the implant crop, or the whole image after the collimation crop), on the side's first image
          NUM 99PREDRAFT PROB Model probability of the finding, unit UCUM "1", with the same region (OHIF loads a
            group as a measurement only when its first NUM holds one), every source image of the side (INFERRED
            FROM IMAGE) and the algorithm
          CODE 99PREDRAFT CLASS AI classification: the pack's code of the class, or its indeterminate code (a
            qualitative evaluation; TID 1410 keeps DCM 121071 Finding for the finding type above)
          TEXT DCM 121106 Comment: the finding in words, as the narrative says it (viewers label a group by it)

Flags as the narrative draft's: CompletionFlag PARTIAL, VerificationFlag UNVERIFIED; the algorithm in the
Contributing Equipment Sequence (Purpose of Reference "Processing Algorithm", a Device UID that changes with the
weights). :func:`read_results_sr` reads such an SR back into its findings, with highdicom's parsers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from predraft.models.card import ModelCard
from predraft.models.prepare import Region
from predraft.models.taxonomy import Side
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.sr import (
    COMMENT,
    LATERALITY,
    MANUFACTURER,
    device_uid,
    distinct_models,
    name_the_algorithms,
    prepared_evidence,
)
from predraft.reporting.text import DraftText, Section
from predraft.reporting.wording import CLASSIFICATION_CODE, PROBABILITY_CODE, as_code, finding_code

RESULTS_SERIES_DESCRIPTION = "AI RESULTS, UNVERIFIED (predraft)"
RESULTS_SERIES_NUMBER = 9904
PLAIN_RADIOGRAPHY = Code("168537006", "SCT", "Plain radiography")
NO_UNITS = Code("1", "UCUM", "no units")
_SIDE_OF_LATERALITY = {(code.scheme_designator, code.value): side for side, code in LATERALITY.items()}
#: What the training data summary may hold as an Algorithm Parameter (an LT? no: TEXT, which allows this much).
_PARAMETER_CHARACTERS = 1024


def _algorithm(model: ModelCard) -> hd.sr.AlgorithmIdentification:
    summary = (model.training_data or "training data not stated").strip()[:_PARAMETER_CHARACTERS]
    return hd.sr.AlgorithmIdentification(
        name=model.name[:64], version=model.version[:64], parameters=[summary], manufacturer=MANUFACTURER
    )


def _whole_image(ds: Dataset) -> Region:
    """The whole of the image ``ds``; ValueError when its size is unknown (a purged image's stand-in)."""
    if "Rows" not in ds or "Columns" not in ds:
        raise ValueError(f"image {ds.SOPInstanceUID}: no region recorded and its size unknown (its file was purged)")
    return 0, int(ds.Rows), 0, int(ds.Columns)


def _rectangle(region: Region) -> np.ndarray:
    """The closed polyline (column, row pairs, PS3.3 C.18.6.1.2) around the pixels of ``region``."""
    top, bottom, left, right = region
    return np.array(
        [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]],
        dtype=np.float32,
    )


def _group(
    section: Section,
    finding: SideFinding,
    sentence: str,
    evidence: Mapping[str, Dataset],
    regions: Mapping[tuple[str, Side], Region],
    study_uid: str,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    pack, model = section.pack, section.model
    first = next((uid for uid in finding.sop_instance_uids if (uid, finding.side) in regions), None)
    # With no region recorded, the whole of an image whose size is known (a purged image's stand-in has none).
    sized = next((uid for uid in finding.sop_instance_uids if "Rows" in evidence[uid]), None)
    region_uid = first or sized or finding.sop_instance_uids[0]
    region = regions.get((region_uid, finding.side)) or _whole_image(evidence[region_uid])
    rectangle, region_class = _rectangle(region), str(evidence[region_uid].SOPClassUID)
    algorithm = _algorithm(model)
    code = finding_code(pack, finding.hardware)
    laterality = LATERALITY.get(finding.side)
    sites = [] if pack.site is None else [hd.sr.FindingSite(as_code(pack.site), laterality=laterality)]
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=[study_uid, pack.name, finding.side.value, model.weights_sha256]),
            identifier=pack.sides[finding.side],
        ),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle,
            source_image=hd.sr.SourceImageForRegion(region_class, region_uid),
        ),
        finding_type=code,
        algorithm_id=algorithm,
        finding_sites=sites or None,
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY_CODE,
                value=round(finding.probability, 4),
                unit=NO_UNITS,
                algorithm_id=algorithm,
                referenced_images=[
                    hd.sr.SourceImageForMeasurement(str(evidence[uid].SOPClassUID), uid)
                    for uid in finding.sop_instance_uids
                ],
            )
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=CLASSIFICATION_CODE, value=code)],
    )
    container = group[0]
    # OHIF loads a group as a measurement only when its first NUM holds a SCOORD (TID 300 allows it: INFERRED FROM);
    # highdicom's TID 1410 class does not take one there, so it is added to the built item.
    (probability,) = [item for item in container.ContentSequence if item.ValueType == "NUM"]
    probability.ContentSequence.append(
        hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle,
            source_image=hd.sr.SourceImageForRegion(region_class, region_uid),
            purpose=codes.DCM.ImageRegion,
        )
    )
    container.ContentSequence.append(
        hd.sr.TextContentItem(
            name=COMMENT,
            value=sentence,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def build_results_sr(
    *,
    evidence: Sequence[Dataset],
    sections: Sequence[Section],
    text: DraftText,
    regions: Mapping[tuple[str, Side], Region],
    series_instance_uid: str,
    sop_instance_uid: str,
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The AI results SR of a draft: one measurement group per section and side finding (see the module).

    ``evidence``, ``sections`` and ``text`` as :func:`predraft.reporting.sr.build_draft_sr` takes them;
    ``regions`` maps (SOP instance UID, side) to the rectangle of that image the model read for that side
    (images without one: the whole image). ``previous_versions``: the results SRs of earlier drafts it supersedes.
    """
    if not evidence:
        raise ValueError("build_results_sr needs at least one evidence dataset")
    findings = [(section, finding) for section in sections for finding in section.findings]
    if not findings:
        raise ValueError("build_results_sr needs at least one finding")
    study_uids = {str(ds.StudyInstanceUID) for ds in evidence}
    if len(study_uids) != 1:
        raise ValueError(f"evidence spans {len(study_uids)} studies; a result belongs to exactly one")
    prepared = prepared_evidence(evidence)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in prepared}
    missing = {uid for _, f in findings for uid in f.sop_instance_uids} - set(by_uid)
    if missing:
        raise ValueError(f"findings reference images not in the evidence: {sorted(missing)}")
    (study_uid,) = study_uids
    groups = [
        _group(section, finding, text.side_sentences[(section.pack.name, finding.side)], by_uid, regions, study_uid)
        for section, finding in findings
    ]
    first_model = sections[0].model
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(first_model),
            name=first_model.name,
            manufacturer_name=MANUFACTURER,
            model_name=first_model.display_name,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PLAIN_RADIOGRAPHY,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=prepared,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=RESULTS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=False,
        is_final=False,
        is_verified=False,
        previous_versions=list(previous_versions) or None,
        series_description=RESULTS_SERIES_DESCRIPTION,
    )
    name_the_algorithms(sr, distinct_models(sections))
    return sr


# --- Reading it back -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultFinding:
    """One measurement group of an AI results SR, as :func:`read_results_sr` reads it."""

    tracking_identifier: str
    side: Side
    finding: Code
    probability: float
    comment: str
    source_images: tuple[str, ...]
    region_image: str
    region: tuple[tuple[float, float], ...]
    algorithm: str
    algorithm_version: str


def _code(concept: hd.sr.CodedConcept) -> Code:
    return Code(concept.value, concept.scheme_designator, concept.meaning)


def _texts(items: Sequence[Dataset], concept: Code) -> list[str]:
    """The values of the TEXT items among ``items`` whose concept name is ``concept``."""
    found = []
    for item in items:
        name = item.ConceptNameCodeSequence[0]
        if item.ValueType == "TEXT" and (name.CodeValue, name.CodingSchemeDesignator) == (
            concept.value,
            concept.scheme_designator,
        ):
            found.append(str(item.TextValue))
    return found


def read_results_sr(dataset: Dataset) -> list[ResultFinding]:
    """The findings of an AI results SR, read with highdicom's TID 1500 parsers (ValueError when ``dataset`` is no
    TID 1500 SR)."""
    sr = hd.sr.Comprehensive3DSR.from_dataset(dataset, copy=True)
    content = sr.content
    if not isinstance(content, hd.sr.MeasurementReport):
        raise ValueError("not a TID 1500 Measurement Report")
    groups = content.get_planar_roi_measurement_groups()
    found = []
    for group in groups:
        sites = group.finding_sites
        laterality = sites[0].laterality if sites else None
        side = (
            Side.UNKNOWN
            if laterality is None
            else _SIDE_OF_LATERALITY.get((laterality.scheme_designator, laterality.value), Side.UNKNOWN)
        )
        (evaluation,) = group.get_qualitative_evaluations(name=CLASSIFICATION_CODE)
        (measurement,) = group.get_measurements(name=PROBABILITY_CODE)
        children = list(group[0].ContentSequence)
        comments = _texts(children, COMMENT)
        region = group.roi
        region_image = region.ContentSequence[0].ReferencedSOPSequence[0] if region is not None else None
        found.append(
            ResultFinding(
                tracking_identifier=group.tracking_identifier or "",
                side=side,
                finding=_code(cast(hd.sr.CodedConcept, evaluation.value)),
                probability=float(measurement.value),
                comment=next(iter(comments), ""),
                source_images=tuple(image.referenced_sop_instance_uid for image in measurement.referenced_images),
                region_image="" if region_image is None else str(region_image.ReferencedSOPInstanceUID),
                region=() if region is None else tuple((float(x), float(y)) for x, y in region.value),
                algorithm=next(iter(_texts(children, codes.DCM.AlgorithmName)), ""),
                algorithm_version=next(iter(_texts(children, codes.DCM.AlgorithmVersion)), ""),
            )
        )
    return found
