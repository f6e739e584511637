"""QIDO-RS: search for studies, the series of a study and the instances of a series, answered from the
database (the drafted SRs, Modality SR, included) as DICOM JSON."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, Request, Response
from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, exists, or_, select

from predraft.core.db import session_scope
from predraft.core.schema import Draft, Series, Study
from predraft.listener.dicomweb.common import dicom_json, path_uid, settings_of, studies_url_of
from predraft.listener.dicomweb.holdings import InstanceEntry, SeriesEntry, find_study, study_series
from predraft.listener.dicomweb.query import Match, Query, parse_query

router = APIRouter()

STUDY_KEYS = {
    "StudyInstanceUID": Study.study_uid,
    "PatientID": Study.patient_id,
    "PatientName": Study.patient_name,
    "AccessionNumber": Study.accession_number,
    "StudyDate": Study.study_date,
    "StudyDescription": Study.study_description,
}
SERIES_KEYS = frozenset({"SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined"})
INSTANCE_KEYS = frozenset({"SOPInstanceUID", "SOPClassUID"})


def _modality_condition(match: Match) -> ColumnElement[bool]:
    received = exists(select(Series.id).where(Series.study_id == Study.id, match.condition(Series.modality)))
    if not match.test("SR"):
        return received
    return or_(received, exists(select(Draft.id).where(Draft.study_id == Study.id)))


def _study_json(study: Study, series: list[SeriesEntry], studies_url: str) -> dict[str, Any]:
    ds = Dataset()
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


def _series_json(study_uid: str, series: SeriesEntry, studies_url: str) -> dict[str, Any]:
    ds = Dataset()
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
    studies_url = studies_url_of(request)
    with session_scope(settings_of(request).database_url) as session:
        results = [
            _study_json(study, study_series(session, study), studies_url) for study in session.scalars(statement).all()
        ]
    return _search_answer(results, query)


@router.get("/studies/{study}/series", summary="QIDO-RS: search for the series of a study")
def search_series(study: str, request: Request) -> Response:
    study_uid = path_uid(study, "StudyInstanceUID")
    query = parse_query(request, SERIES_KEYS)
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        series = study_series(session, row) if row is not None else []
    attributes = {
        "SeriesInstanceUID": lambda s: s.series_uid,
        "Modality": lambda s: s.modality,
        "SeriesDescription": lambda s: s.description,
        "BodyPartExamined": lambda s: s.body_part,
    }
    matching = [s for s in series if all(m.test(attributes[k](s)) for k, m in query.matches.items())]
    studies_url = studies_url_of(request)
    return _search_answer([_series_json(study_uid, s, studies_url) for s in query.page(matching)], query)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for the instances of a series")
def search_instances(study: str, series: str, request: Request) -> Response:
    study_uid, series_uid = path_uid(study, "StudyInstanceUID"), path_uid(series, "SeriesInstanceUID")
    query = parse_query(request, INSTANCE_KEYS)
    with session_scope(settings_of(request).database_url) as session:
        row = find_study(session, study_uid)
        entries = study_series(session, row) if row is not None else []
    instances = [i for s in entries if s.series_uid == series_uid for i in s.instances]
    attributes = {"SOPInstanceUID": lambda i: i.sop_instance_uid, "SOPClassUID": lambda i: i.sop_class_uid}
    matching = [i for i in instances if all(m.test(attributes[k](i)) for k, m in query.matches.items())]
    studies_url = studies_url_of(request)
    return _search_answer([_instance_json(study_uid, series_uid, i, studies_url) for i in query.page(matching)], query)
