"""The query string of a QIDO-RS request (PS3.18 8.3.4): matching keys, paging and the keys ignored;
each key's matching (PS3.4 C.2.2.2) both in Python and as an SQL condition.

A key that names a DICOM attribute predraft does not search on is ignored and named in a Warning header;
a key that is no DICOM attribute at all, a value holding a control character, or a limit/offset that is not
a number from 0 to :data:`MAX_COUNT` is refused with 400 and counted in
``predraft_inputs_refused{transport="qido", bound="query"}``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException, Request
from pydicom.datadict import dictionary_VR, keyword_for_tag
from sqlalchemy import ColumnElement, and_

from predraft.core import metrics
from predraft.listener.ingest import normal_integer

#: Query parameters of PS3.18 that are no attribute match: paging, fields, fuzzy matching, and the accept and
#: charset parameters (8.3.3.1-2) that stand for the request's headers (the response is DICOM JSON in UTF-8).
CONTROL_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"})
_DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")
_TIME = r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
_TIME_RANGE = re.compile(rf"^({_TIME})?-({_TIME})?$")
#: The latest time each prefix of a TM value names: an upper bound is completed from it (``1100`` to 11:00:59.999999).
_LATEST_TIME = "005959.999999"
_UNSAFE_IN_HEADER = re.compile(r"[^\w.-]")
_COUNT = re.compile(r"[0-9]{1,10}")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The largest limit or offset: fits the database's integers (a larger one made the query fail with 500).
MAX_COUNT = 2**31 - 1


@dataclass(frozen=True)
class Match:
    """One matching key's value (PS3.4 C.2.2.2): UID list, date or time range, wildcard or single value. A time
    range's upper end is widened to what it names (``1030-1100`` runs from 10:30:00 to 11:00:59.999999), and one
    time is such a range (``1030`` matches from 10:30:00 to 10:30:59.999999). An Integer
    String (SeriesNumber, InstanceNumber) matches by its number (``07`` matches ``7``)."""

    keyword: str
    values: tuple[str, ...]
    kind: str  # "single", "list", "range" or "wildcard"

    @classmethod
    def parse(cls, keyword: str, value: str) -> Match:
        vr = dictionary_VR(keyword)
        if vr == "UI":
            return cls(keyword, tuple(v.strip() for v in re.split(r"[,\\]", value) if v.strip()), "list")
        if vr == "DA" and (date_range := _DATE_RANGE.match(value)) and value != "-":
            return cls(keyword, (date_range.group(1) or "", date_range.group(2) or ""), "range")
        # One time is the range of the times it names: "1030" is read as "1030-1030".
        if (
            vr == "TM"
            and value != "-"
            and (time_range := _TIME_RANGE.match(value if "-" in value else f"{value}-{value}"))
        ):
            high = time_range.group(2) or ""
            return cls(keyword, (time_range.group(1) or "", high and high + _LATEST_TIME[len(high) :]), "range")
        if vr == "IS" and (number := normal_integer(value)):
            return cls(keyword, (number,), "single")
        if "*" in value or "?" in value:
            return cls(keyword, (value,), "wildcard")
        return cls(keyword, (value,), "single")

    def _pattern(self) -> re.Pattern[str]:
        return re.compile(
            "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.values[0]), re.DOTALL
        )

    def test(self, actual: str) -> bool:
        """Whether the attribute value ``actual`` matches."""
        if self.kind == "list":
            return actual in self.values
        if self.kind == "range":
            low, high = self.values
            return bool(actual) and (not low or actual >= low) and (not high or actual <= high)
        if self.kind == "wildcard":
            return self._pattern().fullmatch(actual) is not None
        return actual == self.values[0]

    def condition(self, column: Any) -> ColumnElement[bool]:
        """The same test as an SQL condition on ``column``."""
        if self.kind == "list":
            return column.in_(self.values)
        if self.kind == "range":
            low, high = self.values
            return and_(column != "", *([column >= low] if low else []), *([column <= high] if high else []))
        if self.kind == "wildcard":
            escaped = self.values[0].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")
        return column == self.values[0]


def _keyword(key: str) -> str | None:
    """The DICOM keyword of a query key given as a keyword or as 8 hex digits, or None if unknown."""
    if _TAG.fullmatch(key):
        return keyword_for_tag(int(key, 16)) or None
    try:
        dictionary_VR(key)
    except (KeyError, ValueError):  # ValueError: not a keyword pydicom can even turn into a tag ("foo", "%ZZ")
        return None
    return key


def _is_attribute(key: str) -> bool:
    """Whether ``key`` names DICOM attributes (PS3.18 8.3.4.1): a keyword or tag, or a dotted path of them."""
    return all(_TAG.fullmatch(part) or _keyword(part) is not None for part in key.split("."))


def bad_query(message: str) -> HTTPException:
    """A 400 for a query string predraft refuses, counted in INPUTS_REFUSED{qido, query}."""
    metrics.INPUTS_REFUSED.labels(transport="qido", bound="query").inc()
    return HTTPException(HTTPStatus.BAD_REQUEST, detail=message)


def _shown(key: str) -> str:
    """``key`` as it may be echoed in a header or an error: word characters, dots and dashes, 64 at most."""
    return _UNSAFE_IN_HEADER.sub("?", key[:64])


@dataclass
class Query:
    """The parsed query string of a QIDO-RS request."""

    matches: dict[str, Match]
    limit: int | None
    offset: int
    ignored: list[str]

    def warning_header(self) -> dict[str, str]:
        if not self.ignored:
            return {}
        keys = ", ".join(sorted(set(self.ignored)))[:200]
        return {"Warning": f'299 predraft "The following query parameters are not supported and were ignored: {keys}"'}

    def page(self, items: list[Any]) -> list[Any]:
        """The ``offset``/``limit`` window of ``items``."""
        end = None if self.limit is None else self.offset + self.limit
        return items[self.offset : end]


def _count(name: str, value: str | None, default: int | None) -> int | None:
    """``value`` as a limit or offset: ASCII digits, at most :data:`MAX_COUNT`; else a counted 400."""
    if value is None:
        return default
    if not _COUNT.fullmatch(value) or int(value) > MAX_COUNT:
        raise bad_query(f"{name} must be an integer from 0 to {MAX_COUNT}")
    return int(value)


def parse_query(request: Request, supported: frozenset[str]) -> Query:
    """The matching keys, paging and ignored keys of ``request``; a counted 400 for a key that is no DICOM
    attribute, a value with a control character, or a malformed limit/offset."""
    matches: dict[str, Match] = {}
    ignored: list[str] = []
    for key, value in request.query_params.multi_items():
        if _CONTROL.search(value):
            raise bad_query(f"the value of {_shown(key)} holds a control character")
        if key.lower() in CONTROL_PARAMETERS:
            continue
        keyword = _keyword(key)
        if keyword is None and not _is_attribute(key):
            raise bad_query(f"unknown query key {_shown(key)!r}: not a DICOM attribute keyword or tag")
        if keyword not in supported:
            ignored.append(_shown(key))  # it is echoed in the Warning header
        elif value not in ("", "*"):  # an empty value or a lone * is universal matching
            matches[keyword] = Match.parse(keyword, value)
    params = request.query_params
    return Query(
        matches, _count("limit", params.get("limit"), None), _count("offset", params.get("offset"), 0) or 0, ignored
    )
