"""multipart/related bodies (RFC 2387): the Content-Type of a STOW-RS request, its size limit, copying
its body to a file as it arrives, splitting that body into parts; and writing the parts of a WADO-RS
response (whole files, or frames given as bytes)."""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from http import HTTPStatus
from typing import IO

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from predraft.listener.dicomweb.common import APPLICATION_DICOM, MULTIPART_RELATED, DicomwebError

#: RFC 2046 (section 5.1.1) limits boundaries that senders *generate* to 70 characters; real senders
#: exceed it (Orthanc's DICOMweb plugin sends "<uuid>-<uuid>", 73 characters), so a receiver accepts
#: more and only guards against absurd values.
MAX_BOUNDARY_LENGTH = 200
WRITE_BATCH_BYTES = 1 << 20  # request body bytes gathered before one write to the temporary file
READ_CHUNK_BYTES = 1 << 20  # file bytes per chunk of a response part
CRLF = b"\r\n"


def stow_boundary(content_type: str | None) -> bytes:
    """The multipart boundary of a STOW-RS request's Content-Type, or DicomwebError: 415 for another
    media type (or a ``type`` other than application/dicom), 400 for a missing or malformed boundary."""
    if not content_type:
        raise DicomwebError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE, 'no Content-Type: send multipart/related; type="application/dicom"'
        )
    header = Message()
    header["Content-Type"] = content_type
    if header.get_content_type() != MULTIPART_RELATED:
        raise DicomwebError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"Content-Type {header.get_content_type()!r} is "
            'not supported: send multipart/related; type="application/dicom"',
        )
    part_type = str(header.get_param("type") or APPLICATION_DICOM).strip().lower()
    if part_type != APPLICATION_DICOM:
        raise DicomwebError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"multipart/related of type {part_type[:64]!r} is "
            "not supported: only application/dicom parts (DICOM Part 10 files)",
        )
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not 1 <= len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise DicomwebError(
            HTTPStatus.BAD_REQUEST, f"Content-Type has no boundary parameter of 1 to {MAX_BOUNDARY_LENGTH} characters"
        )
    try:
        return boundary.encode("ascii")
    except UnicodeEncodeError:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the multipart boundary is not ASCII") from None


def declared_length(content_length: str | None, limit: int) -> int | None:
    """The Content-Length, or None without one; DicomwebError 413 above ``limit``, 400 if malformed."""
    if content_length is None:
        return None
    if not content_length.strip().isdigit():
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
    length = int(content_length)
    if length > limit:
        raise DicomwebError(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the request body of {length} bytes exceeds the limit of {limit} bytes",
            close=True,
        )
    return length


async def copy_body(request: Request, target: IO[bytes], limit: int) -> int:
    """Copy the request body to ``target`` and return its size. Stops reading, with DicomwebError 413,
    as soon as more than ``limit`` bytes came; holds at most one write batch in memory."""
    size = 0
    pending = bytearray()
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise DicomwebError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"the request body exceeds the limit of {limit} bytes",
                    close=True,
                )
            pending += chunk
            if len(pending) >= WRITE_BATCH_BYTES:
                await run_in_threadpool(target.write, bytes(pending))
                pending.clear()
    except ClientDisconnect:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the client disconnected before the body ended") from None
    await run_in_threadpool(target.write, bytes(pending))
    target.flush()
    return size


@dataclass(frozen=True)
class Part:
    """One body part: its headers (names in lower case) and content. ``problem`` says why the part is
    unusable (the body ended inside it, or its framing is broken); the part is then the last one."""

    index: int
    headers: dict[str, str]
    content: bytes
    problem: str | None = None


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.decode("latin-1").split("\r\n"):
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return headers


def _first_delimiter(body: bytes | mmap.mmap, delimiter: bytes) -> int:
    """Where the first boundary line starts (at the very start or after a preamble's CRLF)."""
    if body[: len(delimiter)] == delimiter:
        return 0
    position = body.find(CRLF + delimiter)
    if position < 0:
        raise DicomwebError(HTTPStatus.BAD_REQUEST, "the body does not contain the boundary named in Content-Type")
    return position + len(CRLF)


def split_multipart(body: bytes | mmap.mmap, boundary: bytes) -> Iterator[Part]:
    """The parts of a multipart body (RFC 2046), one at a time.

    Raises DicomwebError 400 before yielding anything when the boundary does not occur in ``body``. A body
    that ends inside a part, or whose framing breaks later, ends with a Part that has a ``problem``.
    """
    delimiter = b"--" + boundary
    position = _first_delimiter(body, delimiter) + len(delimiter)
    index = 0
    while True:
        if body[position : position + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(CRLF, position)
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            yield Part(
                index,
                {},
                b"",
                "the body ends without its closing boundary"
                if line_end < 0
                else "a boundary line is followed by other characters",
            )
            return
        headers_end = body.find(CRLF + CRLF, line_end)
        if headers_end < 0:
            yield Part(index, {}, b"", "the body ends inside the headers of a part")
            return
        headers = _parse_headers(body[line_end + len(CRLF) : headers_end])
        start = headers_end + 2 * len(CRLF)
        end = body.find(CRLF + delimiter, start)
        if end < 0:
            yield Part(index, headers, bytes(body[start:]), "the body ends inside this part (truncated)")
            return
        yield Part(index, headers, bytes(body[start:end]))
        position = end + len(CRLF) + len(delimiter)
        index += 1


def _part_head(content_type: str, boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode("ascii")


def _close_delimiter(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def stream_parts(parts: Iterable[tuple[str, str]], boundary: str) -> Iterator[bytes]:
    """A multipart body of the files named in ``parts`` (content type, path), read a chunk at a time."""
    for content_type, path in parts:
        yield _part_head(content_type, boundary)
        with open(path, "rb") as stream:
            while chunk := stream.read(READ_CHUNK_BYTES):
                yield chunk
        yield CRLF
    yield _close_delimiter(boundary)


def stream_byte_parts(parts: Iterable[tuple[str, bytes]], boundary: str) -> Iterator[bytes]:
    """A multipart body of ``parts`` (content type, content). ``parts`` is consumed one part at a time, as the
    body is sent: given a generator, memory holds one part's content at most."""
    for content_type, content in parts:
        yield _part_head(content_type, boundary)
        yield content
        yield CRLF
    yield _close_delimiter(boundary)
