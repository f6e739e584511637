"""The query string of a QIDO-RS request (PS3.18 8.3.4): matching keys, paging and the keys ignored;
each key's matching (PS3.4 C.2.2.2) both in Python and as an SQL condition."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import HTTPException, Request
from pydicom.datadict import dictionary_VR, keyword_for_tag
from sqlalchemy import ColumnElement, and_

CONTROL_PARAMETERS = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$")
_UNSAFE_IN_HEADER = re.compile(r"[^\w.-]")


@dataclass(frozen=True)
class Match:
    """One matching key's value (PS3.4 C.2.2.2): UID list, date range, wildcard or single value."""

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
        if "*" in value or "?" in value:
            return cls(keyword, (value,), "wildcard")
        return cls(keyword, (value,), "single")

    def _pattern(self) -> re.Pattern[str]:
        return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in self.values[0]),
                          re.DOTALL)

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
            return column.in_(self.values)  # type: ignore[no-any-return]
        if self.kind == "range":
            low, high = self.values
            return and_(column != "", *([column >= low] if low else []), *([column <= high] if high else []))
        if self.kind == "wildcard":
            escaped = self.values[0].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")  # type: ignore[no-any-return]
        return column == self.values[0]  # type: ignore[no-any-return]


def _keyword(key: str) -> str | None:
    """The DICOM keyword of a query key given as a keyword or as 8 hex digits, or None if unknown."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return keyword_for_tag(int(key, 16)) or None
    try:
        dictionary_VR(key)
    except KeyError:
        return None
    return key


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
        return {"Warning": f'299 predraft "The following query parameters are not supported and were ignored: '
                           f'{keys}"'}

    def page(self, items: list[Any]) -> list[Any]:
        """The ``offset``/``limit`` window of ``items``."""
        end = None if self.limit is None else self.offset + self.limit
        return items[self.offset:end]


def _count(name: str, value: str | None, default: int | None) -> int | None:
    if value is None:
        return default
    if not value.isdigit():
        raise HTTPException(HTTPStatus.BAD_REQUEST, detail=f"{name} must be a non-negative integer")
    return int(value)


def parse_query(request: Request, supported: frozenset[str]) -> Query:
    """The matching keys, paging and ignored keys of ``request``; 400 for malformed limit/offset."""
    matches: dict[str, Match] = {}
    ignored: list[str] = []
    for key, value in request.query_params.multi_items():
        if key.lower() in CONTROL_PARAMETERS:
            continue
        keyword = _keyword(key)
        if keyword not in supported:
            ignored.append(_UNSAFE_IN_HEADER.sub("?", key[:64]))  # it is echoed in the Warning header
        elif value not in ("", "*"):  # an empty value or a lone * is universal matching
            matches[keyword] = Match.parse(keyword, value)
    params = request.query_params
    return Query(matches, _count("limit", params.get("limit"), None), _count("offset", params.get("offset"), 0) or 0,
                 ignored)
