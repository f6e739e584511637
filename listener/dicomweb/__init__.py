"""DICOMweb on the HTTP app (PS3.18): STOW-RS in, QIDO-RS and WADO-RS (instances, metadata, frames) out.
:data:`router` is what :mod:`predraft.http` includes.

Every route needs a bearer token or basic auth (:mod:`predraft.listener.dicomweb.auth`); reads (GET, HEAD)
sent without an Authorization header also take a logged-in worklist session (the OHIF Viewer predraft serves).

* STOW-RS ``POST /dicomweb/studies[/{study}]`` (:mod:`.stow`): a ``multipart/related;
  type="application/dicom"`` body whose parts are DICOM Part 10 files. The body is checked against
  ``dicomweb_max_upload_bytes`` (Content-Length first, then while it is read, chunked or not) and copied
  to an unlinked temporary file beside the spool, never held in memory whole (:mod:`.multipart`); then
  each part goes to :class:`predraft.listener.receive.Receiver`, which checks it is whole, spools it (fsync,
  atomic rename) and records it before the response says it is stored. The response is a Store
  Instances Response Module (DICOM JSON) with ReferencedSOPSequence and FailedSOPSequence (failure
  reasons: :mod:`.status`); 200 when all were stored, 202 when some failed, 409 when none was stored,
  400/415/413 for a request that cannot be read at all.
* QIDO-RS ``GET /dicomweb/studies``, ``.../{study}/series``, ``.../{study}/series/{series}/instances``
  (:mod:`.qido`, query parsing in :mod:`.query`): answers from the database, including the drafted SRs
  (Modality SR) of the drafts table (:mod:`.holdings`).
* WADO-RS ``GET /dicomweb/studies/{study}[/series/{series}[/instances/{sop}]]`` (:mod:`.wado`): the
  stored files, byte for byte as they were received (no transcoding: each part's Content-Type names its
  transfer syntax); ``.../metadata`` at each level gives their headers as DICOM JSON.
* WADO-RS Retrieve Frames ``GET /dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}``
  (:mod:`.frames`): ``multipart/related``, one part per listed frame, in order: native frames sliced from
  PixelData as Explicit VR Little Endian octets, compressed frames as their fragments joined, each part labelled
  with its media type and ``transfer-syntax`` (what OHIF Viewer renders from).

Logs name users, UIDs and reasons, never patient data or secrets.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from predraft.listener.dicomweb import frames, qido, stow, wado
from predraft.listener.dicomweb.auth import authenticate
from predraft.listener.dicomweb.common import PREFIX

router = APIRouter(prefix=PREFIX, tags=["dicomweb"], dependencies=[Depends(authenticate)])
for _routes in (stow.router, qido.router, wado.router, frames.router):
    router.include_router(_routes)

__all__ = ["router"]
