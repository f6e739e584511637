"""QIDO-RS: search for studies, the series of a study and the instances of a series, answered from the
database (the drafted SRs, Modality SR, included) as DICOM JSON.

A few attributes of a study's or series' answer are in no database column (:data:`STUDY_HEADER_KEYWORDS`,
:data:`SERIES_HEADER_KEYWORDS`): they are taken from the header of the first instance of the study or series
whose file can be read within the bounds of a received one (as ``.../metadata`` reads it; a file that crosses
them counts in ``predraft_inputs_refused{transport="qido"}``), and are left out when none can. StudyTime,
ReferringPhysicianName, StudyID and SeriesNumber are also held in columns as received (since revision 0015): they
are matched there, and answered from there when held (so an answer carries the value it matched on), from the
header otherwise; PatientBirthDate, PatientSex, SeriesDate and SeriesTime are answered, not matched on: a query key
naming one is ignored, as the Warning header says."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request, Response
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, exists, or_, select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Series, Study
from predraft.listener.bounds import Bounds
from predraft.listener.dicomweb.common import bounds_of, dicom_json, path_uid, settings_of, studies_url_of
from predraft.listener.dicomweb.holdings import InstanceEntry, SeriesEntry, find_study, study_series
from predraft.listener.dicomweb.query import Match, Query, parse_query
from predraft.listener.dicomweb.wado import LeftOut, read_header

log = logging.getLogger(__name__)
router = APIRouter()

STUDY_KEYS = {
    "StudyInstanceUID": Study.study_uid,
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "AccessionNumber": Study.accession_number,
    "StudyDate": Study.study_date,
    "StudyDescription": Study.study_description,
    "StudyTime": Study.study_time,
    "ReferringPhysicianName": Study.referring_physician_name,
    "StudyID": Study.study_identifier,
}
#: What a series and an instance are matched on (with ModalitiesInStudy, the keys PS3.18 Table 10.6.1-5 requires).
SERIES_ATTRIBUTES: dict[str, Callable[[SeriesEntry], str]] = {
    "SeriesInstanceUID": lambda s: s.series_uid,
    "Modality": lambda s: s.modality,
    "SeriesDescription": lambda s: s.description,
    "BodyPartExamined": lambda s: s.body_part,
    "SeriesNumber": lambda s: s.number,
}
INSTANCE_ATTRIBUTES: dict[str, Callable[[InstanceEntry], str]] = {
    "SOPInstanceUID": lambda i: i.sop_instance_uid,
    "SOPClassUID": lambda i: i.sop_class_uid,
    "InstanceNumber": lambda i: i.number,
}
#: Attributes of a study's answer held in no database column, read from an instance's header: default attributes
#: of a study (PS3.18 Table 10.6.3-3); OHIF's study list asks for ReferringPhysicianName and PatientBirthDate.
STUDY_HEADER_KEYWORDS = ["StudyTime", "ReferringPhysicianName", "PatientBirthDate", "PatientSex", "StudyID"]
#: The same for a series: SeriesNumber (a default attribute, PS3.18 Table 10.6.3-5), SeriesDate and SeriesTime
#: (OHIF asks for them, and sorts series by number).
SERIES_HEADER_KEYWORDS = ["SeriesNumber", "SeriesDate", "SeriesTime"]


def _modality_condition(match: Match) -> ColumnElement[bool]:
    received = exists(select(Series.id).where(Series.study_id == Study.id, match.condition(Series.modality)))
    if not match.test("SR"):
        return received
    return or_(received, exists(select(Draft.id).where(Draft.study_id == Study.id)))


def header_attributes(instances: Iterable[InstanceEntry], keywords: list[str], bounds: Bounds) -> Dataset:
    """Those of ``keywords`` the header of the first of ``instances`` whose file can be read within ``bounds``
    holds, as a data set that renders as DICOM JSON; an empty one when no header can be read (each file that
    cannot is logged by UID and reason)."""
    for instance in instances:
        try:
            header = read_header(instance, bounds, transport="qido", specific_tags=keywords)
            found = Dataset()
            for keyword in keywords:
                if keyword in header:
                    found[keyword] = header[keyword]
            found.to_json_dict()  # a value pydicom cannot render leaves the instance out here, not the answer
            return found
        except LeftOut as unreadable:
            reason = unreadable.reason
        except Exception as exc:  # pydicom's conversion of a hostile value may raise anything: never a 500
            reason = f"a value cannot be rendered ({type(exc).__name__})"
        log.warning(
            "QIDO-RS: the header of instance %s is left out of the answer: %s", instance.sop_instance_uid, reason
        )
    return Dataset()


def _study_json(study: Study, series: list[SeriesEntry], studies_url: str, bounds: Bounds) -> dict[str, Any]:
    ds = header_attributes((i for s in series for i in s.instances), STUDY_HEADER_KEYWORDS, bounds)
    for keyword, held in (
        ("StudyTime", study.study_time),
        ("ReferringPhysicianName", study.referring_physician_name),
        ("StudyID", study.study_identifier),
    ):
        if held:  # the value it is matched on (a study recorded before revision 0015 holds none: the header's)
            setattr(ds, keyword, held)
    ds.StudyDate = study.study_date
    ds.AccessionNumber = study.accession_number
    ds.ModalitiesInStudy = sorted({s.modality for s in series if s.modality})
    ds.StudyDescription = study.study_description
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.StudyInstanceUID = study.study_uid
    ds.NumberOfStudyRelatedSeries = len(series)
    ds.NumberOfStudyRelatedInstances = sum(len(s.instances) for s in series)
    ds.RetrieveURL = f"{studies_url}/{study.study_uid}"
    return ds.to_json_dict()


def _series_json(study_uid: str, series: SeriesEntry, studies_url: str, bounds: Bounds) -> dict[str, Any]:
    ds = header_attributes(series.instances, SERIES_HEADER_KEYWORDS, bounds)
    if series.number:  # the value it is matched on, as for a study
        ds.SeriesNumber = series.number
    ds.Modality = series.modality
    ds.SeriesDescription = series.description
    ds.BodyPartExamined = series.body_part
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series.series_uid
    ds.NumberOfSeriesRelatedInstances = len(series.instances)
    ds.RetrieveURL = f"{studies_url}/{study_uid}/series/{series.series_uid}"
    return ds.to_json_dict()


def _instance_json(study_uid: str, series_uid: str, instance: InstanceEntry, studies_url: str) -> dict[str, Any]:
    ds = Dataset()
    ds.SOPClassUID = instance.sop_class_uid
    ds.SOPInstanceUID = instance.sop_instance_uid
    if instance.number:
        ds.InstanceNumber = instance.number
    ds.AvailableTransferSyntaxUID = instance.transfer_syntax_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.RetrieveURL = f"{studies_url}/{study_uid}/series/{series_uid}/instances/{instance.sop_instance_uid}"
    return ds.to_json_dict()


def _search_answer(results: list[dict[str, Any]], query: Query) -> Response:
    if not results:
        return Response(status_code=HTTPStatus.NO_CONTENT, headers=query.warning_header())
    return dicom_json(results, headers=query.warning_header())


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request) -> Response:
    query = parse_query(request, frozenset({*STUDY_KEYS, "ModalitiesInStudy"}))
    conditions = [
        match.condition(STUDY_KEYS[keyword]) for keyword, match in query.matches.items() if keyword in STUDY_KEYS
    ]
    if (modality := query.matches.get("ModalitiesInStudy")) is not None:
        conditions.append(_modality_condition(modality))
    statement = select(Study).where(*conditions).order_by(Study.id).offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    studies_url, bounds = studies_url_of(request), bounds_of(request)
    with session_scope(settings_of(request).database_url) as session:
        results = [
            _study_json(study, study_series(session, study), studies_url, bounds)
            for study in session.scalars(statement).all()
        ]
    return _search_answer(results, query)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for the series of a study")
def search_series(study: str, request: Request) -> Response:
    study_uid = path_uid(study, "StudyInstanceUID")
    query = parse_query(request, frozenset(SERIES_ATTRIBUTES))
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        series = study_series(session, row) if row is not None else []
    matching = [s for s in series if all(m.test(SERIES_ATTRIBUTES[k](s)) for k, m in query.matches.items())]
    studies_url, bounds = studies_url_of(request), bounds_of(request)
    return _search_answer([_series_json(study_uid, s, studies_url, bounds) for s in query.page(matching)], query)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for the instances of a series")
def search_instances(study: str, series: str, request: Request) -> Response:
    study_uid, series_uid = path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID")
    query = parse_query(request, frozenset(INSTANCE_ATTRIBUTES))
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    instances = [i for s in entries if s.series_uid == series_uid for i in s.instances]
    matching = [i for i in instances if all(m.test(INSTANCE_ATTRIBUTES[k](i)) for k, m in query.matches.items())]
    studies_url = studies_url_of(request)
    return _search_answer([_instance_json(study_uid, series_uid, i, studies_url) for i in query.page(matching)], query)
