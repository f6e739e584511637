"""The OHIF Viewer at ``/viewer/``, behind the worklist's login: the ``dist/`` of an installed ``@ohif/app``
(``predraft viewer install``; ``PREDRAFT_VIEWER_DIR`` names it), served as it lies, and an ``app-config.js``
written here that points the viewer at predraft's own ``/dicomweb`` on the same origin.

* Same origin: the browser sends the worklist's session cookie with the viewer's DICOMweb requests, and DICOMweb
  takes it for reads (:mod:`predraft.listener.dicomweb.auth`), so ``app-config.js`` holds no credentials at all.
* The prebuilt ``dist/`` expects to be served at ``/`` (its ``index.html``, its stylesheet's fonts and the public
  path of its webpack bundles name ``/...``): the few files that do are relocated to ``/viewer/`` as they are
  served (:class:`ViewerFiles`), in memory, the files on disk left as npm checked them.
* A single-page app: a path that names no file and has no file suffix (``/viewer/viewer``) gets ``index.html``.
* Its own Content-Security-Policy (:func:`content_security_policy`), as loose as OHIF 3.13 needs and no looser
  (each allowance below was seen refused without it, in Chromium): its two inline start-up scripts by their hashes;
  ``'unsafe-eval'``, since the image codecs it runs in its workers (WebAssembly, compiled by Emscripten) build
  functions from strings and compile WebAssembly, so that a JPEG 2000 image stays black without it; inline
  styles (its components set them); ``data:`` images (its thumbnails); workers, fonts and connections from this
  origin only; no framing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response

from predraft.listener.dicomweb.common import PREFIX as DICOMWEB_PREFIX

log = logging.getLogger(__name__)

VIEWER_PREFIX = "/viewer"
_BASE = VIEWER_PREFIX.encode() + b"/"

#: The viewer's settings (docs: OHIF.md of this project): predraft's DICOMweb on this origin, WADO-RS for images
#: and thumbnails, no investigational-use banner and no first-visit tour (each covers the image), no upload.
APP_CONFIG = """\
// Written by predraft (predraft/worklist/viewer.py), not the viewer's own: predraft's DICOMweb on this origin.
// No credentials: the browser sends the worklist's session cookie with each request.
(function () {
  var root = window.location.origin + @DICOMWEB@;
  window.config = {
    routerBasename: @BASENAME@,
    extensions: [],
    modes: [],
    showStudyList: true,
    investigationalUseDialog: { option: 'never' },
    customizationService: { 'ohif.tours': { $set: [] } },
    defaultDataSourceName: 'predraft',
    dataSources: [
      {
        namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
        sourceName: 'predraft',
        configuration: {
          friendlyName: 'predraft',
          name: 'predraft',
          qidoRoot: root,
          wadoRoot: root,
          wadoUriRoot: root,
          qidoSupportsIncludeField: true,
          imageRendering: 'wadors',
          thumbnailRendering: 'wadors',
          enableStudyLazyLoad: true,
          supportsFuzzyMatching: false,
          supportsWildcard: true,
          dicomUploadEnabled: false,
          omitQuotationForMultipartRequest: true,
          bulkDataURI: { enabled: true },
        },
      },
    ],
  };
})();
""".replace("@DICOMWEB@", json.dumps(DICOMWEB_PREFIX)).replace("@BASENAME@", json.dumps(VIEWER_PREFIX))

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
}
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
#: Where the prebuilt files name the root they expect to be served at, and how each becomes ``/viewer/``.
_HTML_ROOTS = (
    (re.compile(rb'((?:href|src)=")/(?!/)'), rb"\1" + _BASE),
    (re.compile(rb'(window\.PUBLIC_URL=")/(")'), rb"\1" + _BASE + rb"\2"),
)
_JS_ROOTS = ((re.compile(rb'(__webpack_require__\.p = ")/(";)'), rb"\1" + _BASE + rb"\2"),)
_CSS_ROOTS = ((re.compile(rb"(url\()/(?!/)"), rb"\1" + _BASE),)
_MANIFEST_ROOTS = ((re.compile(rb'("src": ")/(?!/)'), rb"\1" + _BASE),)


def viewer_link(study_uid: str) -> str:
    """The viewer's page for one study."""
    return f"{VIEWER_PREFIX}/viewer?StudyInstanceUIDs={quote(study_uid, safe='')}"


def relocate(name: str, content: bytes) -> bytes:
    """``content`` of the dist file ``name`` with each reference to the root ``/`` made one to ``/viewer/``."""
    suffix = Path(name).suffix
    rules = {".html": _HTML_ROOTS, ".js": _JS_ROOTS, ".css": _CSS_ROOTS}.get(suffix, ())
    if name == "manifest.json":
        rules = _MANIFEST_ROOTS
    for pattern, replacement in rules:
        content = pattern.sub(replacement, content)
    return content


def content_security_policy(index_html: bytes) -> str:
    """The viewer's policy: its inline scripts by their sha256, and what OHIF needs besides (module docstring)."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(index_html)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes} 'unsafe-eval'; worker-src 'self'; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'"
    )


class ViewerFiles:
    """The installed ``dist/``: files looked up safely, and the few that name the root relocated, once each."""

    def __init__(self, folder: Path) -> None:
        if not isinstance(folder, Path):
            raise TypeError(f"folder must be a Path, not {type(folder).__name__}")
        index = folder / "index.html"
        if not index.is_file():
            raise ValueError(f"viewer folder {folder} holds no index.html")
        self.folder = folder.resolve()
        self.index_html = relocate("index.html", index.read_bytes())
        self.csp = content_security_policy(self.index_html)
        self._relocated: dict[Path, tuple[tuple[int, int], bytes | None]] = {}
        self._lock = threading.Lock()

    def find(self, relative: str) -> Path | None:
        """The regular file at ``relative`` inside the folder; None for anything else (a folder, a hidden name,
        a path that leaves the folder)."""
        parts = [part for part in relative.split("/") if part]
        if not parts or any(part.startswith(".") or "\\" in part or "\0" in part for part in parts):
            return None
        path = self.folder.joinpath(*parts).resolve()
        if not path.is_relative_to(self.folder) or not path.is_file():
            return None
        return path

    def relocated(self, path: Path) -> bytes | None:
        """The served content of ``path`` when it differs from the file (it names the root), else None; kept in
        memory while the file is unchanged (the relocated files are about 18 MB, nearly all the main bundle)."""
        if path.suffix not in {".html", ".js", ".css"} and path.name != "manifest.json":
            return None
        stat = path.stat()
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._relocated.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        content = path.read_bytes()
        moved = relocate(path.name, content)
        result = None if moved == content else moved
        with self._lock:
            self._relocated[path] = (key, result)
        return result


def _media_type(path: Path) -> str | None:
    return _MEDIA_TYPES.get(path.suffix)


def viewer_router(files: ViewerFiles, login: Callable[..., Any]) -> APIRouter:
    """``GET /viewer``, ``/viewer/app-config.js`` and ``/viewer/{path}``, each for a logged-in user only (the
    dependency ``login``: the worklist's, which sends a browser to its login form)."""
    router = APIRouter(dependencies=[Depends(login)])
    headers = {"Content-Security-Policy": files.csp}
    cached = {**headers, "Cache-Control": "private, max-age=3600"}
    fresh = {**headers, "Cache-Control": "no-store"}

    @router.get(VIEWER_PREFIX)
    def viewer_root() -> Response:
        return RedirectResponse(VIEWER_PREFIX + "/")

    @router.get(VIEWER_PREFIX + "/app-config.js")
    def app_config() -> Response:
        return Response(APP_CONFIG, media_type=_MEDIA_TYPES[".js"], headers=fresh)

    @router.get(VIEWER_PREFIX + "/{path:path}")
    def viewer_file(path: str) -> Response:
        found = files.find(path)
        if found is None:
            if "." in path.rsplit("/", 1)[-1]:  # a file that is not there: never the app in its place
                return Response("not found", status_code=404, media_type="text/plain", headers=fresh)
            return Response(files.index_html, media_type=_MEDIA_TYPES[".html"], headers=fresh)
        if found == files.folder / "index.html":
            return Response(files.index_html, media_type=_MEDIA_TYPES[".html"], headers=fresh)
        content = files.relocated(found)
        if content is not None:
            return Response(content, media_type=_media_type(found), headers=cached)
        return FileResponse(found, media_type=_media_type(found), headers=cached)

    return router


def install_viewer(app: FastAPI, folder: Path | None, *, login: Callable[..., Any]) -> bool:
    """Serve the viewer in ``folder`` at ``/viewer/`` on ``app`` behind ``login``; False (nothing mounted) when no
    folder is set."""
    if folder is None:
        return False
    files = ViewerFiles(folder)
    app.include_router(viewer_router(files, login))
    log.info("serving the OHIF Viewer in %s at %s/", files.folder, VIEWER_PREFIX)
    return True
