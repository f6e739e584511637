"""predraft's drafts in the OHIF Viewer (the prebuilt ``dist/`` of the npm package ``@ohif/app``, installed by
``predraft viewer install`` from deploy/ohif's lock), in a real browser (Playwright driving Debian's Chromium).

A real radiograph (the NEMA hip, RG2, JPEG 2000) goes into Orthanc by C-STORE as a modality would send it;
Orthanc routes it to a real ``predraft serve`` (deploy/orthanc's route-hips.lua), and predraft exports its SRs back
to Orthanc by C-STORE. Then the same study is opened twice:

(a) as a site would: OHIF served beside the PACS on one origin, Orthanc's DICOMweb behind a small reverse proxy that
    holds the PACS credentials (:class:`SiteViewer`): the radiograph renders, the draft SR shows its Findings and
    Impression, and the AI results SR (TID 1500) its per-side findings;
(b) through predraft's own ``/viewer/`` (``PREDRAFT_VIEWER_DIR``), logged in to the worklist, whose session
    DICOMweb accepts for reads: the same image and the same SRs.

Nothing comes from other hosts: npm fetches the one pinned tarball (the lock's sha512 checked) from the npm
registry into var/ohif (reused while the lock is the same); the browser talks to 127.0.0.1 only. The screenshots
of the README's "Viewing drafts in OHIF" (docs/images/ohif-*.png) are taken here (written there when
``PREDRAFT_UPDATE_SCREENSHOTS=1``, as the worklist's are).
"""

from __future__ import annotations

import http.client
import io
import json
import mimetypes
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import pydicom
import pytest

from predraft.reporting.wording import CLASSIFICATION_CODE
from tests.conftest import REPO_ROOT, free_port, real_file
from tests.e2e.conftest import PREDRAFT, Deployment, _start
from tests.e2e.test_orthanc import Orthanc, _run_orthanc, _site_config, _skip_without_orthanc, _test_config
from tests.e2e.test_orthanc_round_trip import _wait_for_exports
from tests.e2e.test_worklist_browser import PASSWORD, _add_user, _screenshot

pytestmark = pytest.mark.slow

#: Where the viewer is installed once and reused (git ignores var/); `predraft viewer install` skips the download
#: while the lock there is deploy/ohif's.
VIEWER_CACHE = REPO_ROOT / "var" / "ohif"
STORESCU = Path("/usr/bin/storescu")  # dcmtk's, not pynetdicom's of the same name in .venv/bin
RADIOGRAPH = "RG2_J2KR.dcm"  # NEMA WG04: a real AP hip, JPEG 2000 lossless (OHIF decodes it with WebAssembly)
VIEWPORT = "canvas.cornerstone-canvas"
LOAD_TIMEOUT_MS = 120_000
AI_RESULTS = "AI RESULTS"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade"}  # fmt: skip

#: The site's app-config.js for (a): Orthanc's DICOMweb through the proxy on the viewer's own origin; no credentials.
SITE_APP_CONFIG = """\
window.config = {
  routerBasename: '/', extensions: [], modes: [], showStudyList: true,
  investigationalUseDialog: { option: 'never' },
  customizationService: { 'ohif.tours': { $set: [] } },
  defaultDataSourceName: 'dicomweb',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'dicomweb',
    configuration: {
      friendlyName: 'Orthanc', name: 'dicomweb',
      qidoRoot: window.location.origin + '/dicom-web', wadoRoot: window.location.origin + '/dicom-web',
      wadoUriRoot: window.location.origin + '/wado',
      qidoSupportsIncludeField: true, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      dicomUploadEnabled: false, omitQuotationForMultipartRequest: true, bulkDataURI: { enabled: true },
    },
  }],
};
"""


# --- the viewer, installed once ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ohif_dist() -> Path:
    """The installed viewer's dist/ (``predraft viewer install --dir var/ohif``)."""
    if shutil.which("npm") is None:
        message = "npm is not installed (apt-get install nodejs npm): the OHIF tests install the viewer with it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    result = subprocess.run(
        [PREDRAFT, "viewer", "install", "--dir", str(VIEWER_CACHE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"predraft viewer install exited {result.returncode}:\n{result.stderr}"
    match = re.search(r"^PREDRAFT_VIEWER_DIR=(.+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    dist = Path(match.group(1))
    assert (dist / "index.html").is_file()
    return dist


# --- (a): OHIF beside the PACS, as a site serves it ---------------------------------------------------------------


class SiteViewer:
    """OHIF's dist/ on one origin with Orthanc's DICOMweb: static files (a single-page app: a path that names no
    file gets index.html), the site's app-config.js, and ``/dicom-web`` and ``/wado`` passed on to Orthanc with
    the browser's Host header kept (Orthanc builds its retrieve URLs from it) and the PACS credentials added here,
    never in the browser. Orthanc 1.10 has no CORS setting, so one origin it is."""

    def __init__(self, dist: Path, orthanc: Orthanc) -> None:
        self.dist = dist.resolve()
        self.orthanc = orthanc
        handler = type("Handler", (_SiteHandler,), {"site": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="ohif-site", daemon=True)

    def __enter__(self) -> SiteViewer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class _SiteHandler(BaseHTTPRequestHandler):
    site: SiteViewer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if path.startswith(("/dicom-web/", "/wado")):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, "text/javascript", SITE_APP_CONFIG.encode())
        else:
            file = (self.site.dist / path.lstrip("/")).resolve()
            if file.is_relative_to(self.site.dist) and file.is_file():
                self._send(200, mimetypes.guess_type(file.name)[0] or "application/octet-stream", file.read_bytes())
            elif "." not in path.rsplit("/", 1)[-1]:
                self._send(200, "text/html", (self.site.dist / "index.html").read_bytes())
            else:
                self._send(404, "text/plain", b"not found")

    def _proxy(self) -> None:
        orthanc = urlsplit(self.site.orthanc.url)
        connection = http.client.HTTPConnection(orthanc.hostname or "127.0.0.1", orthanc.port, timeout=120)
        headers = {key: value for key, value in self.headers.items() if key.lower() not in _HOP_BY_HOP}
        headers["Authorization"] = self.site.orthanc.auth
        try:
            connection.request("GET", self.path, headers=headers)  # Host: the browser's, so URLs come back here
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP | {"content-length"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, status: int, media_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# --- the site: Orthanc routing to predraft, the SRs back in Orthanc ---------------------------------------------


@dataclass
class Site:
    predraft: Deployment
    orthanc: Orthanc
    viewer: SiteViewer
    study_uid: str
    draft: dict
    texts: dict[str, list[str]]  # the draft SR's TEXT items by section: "findings", "impressions"


def _send_to_orthanc(orthanc: Orthanc, path: Path) -> None:
    """C-STORE ``path`` to Orthanc as its known modality PACS would (dcmtk's storescu; JPEG 2000 as it is)."""
    if not STORESCU.exists():
        pytest.skip(f"{STORESCU} is absent (apt-get install dcmtk)")
    result = subprocess.run(
        [str(STORESCU), "-xv", "-aet", "PACS", "-aec", "ORTHANC", "127.0.0.1", str(orthanc.dicom_port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "Store Failed" not in result.stderr, result.stderr


def _section_texts(sr: pydicom.Dataset) -> dict[str, list[str]]:
    """The TEXT values under the draft SR's Findings (DCM 121070) and Impressions (DCM 121072) containers."""
    sections = {"121070": "findings", "121072": "impressions"}
    found: dict[str, list[str]] = {name: [] for name in sections.values()}

    def walk(items: object, section: str | None) -> None:
        for item in items:  # type: ignore[attr-defined]
            code = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
            inner = sections.get(code, section) if item.ValueType == "CONTAINER" else section
            if item.ValueType == "TEXT" and section is not None:
                found[section].append(str(item.TextValue))
            walk(item.get("ContentSequence", []), inner)

    walk(sr.ContentSequence, None)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, ohif_dist: Path) -> Iterator[Site]:
    """predraft (serving the viewer too) and Orthanc, each naming the other; RG2 sent to Orthanc, drafted by
    predraft, its SRs exported back to Orthanc; and the site's viewer in front of Orthanc."""
    _skip_without_orthanc()
    tmp_path = tmp_path_factory.mktemp("ohif")
    orthanc_http, orthanc_dicom = free_port(), free_port()
    config = _site_config()
    destinations = [
        {"kind": "dimse", "name": "orthanc", "ae_title": config["DicomAet"], "host": "127.0.0.1", "port": orthanc_dicom}
    ]
    env = {
        "PREDRAFT_EXPORT_DESTINATIONS": json.dumps(destinations),
        "PREDRAFT_ALLOWED_CALLING_AES": json.dumps([config["DicomAet"]]),
        "PREDRAFT_EXPORT_RETRY_DELAY_SECONDS": "1",
        "PREDRAFT_VIEWER_DIR": str(ohif_dist),
    }
    with ExitStack() as stack:
        predraft = stack.enter_context(contextmanager(_start)(tmp_path, env))
        orthanc_config = _test_config(tmp_path, predraft, orthanc_http, orthanc_dicom)
        orthanc = stack.enter_context(contextmanager(_run_orthanc)(tmp_path, *orthanc_config))
        viewer = stack.enter_context(SiteViewer(ohif_dist, orthanc))
        radiograph = real_file(RADIOGRAPH)
        study_uid = str(pydicom.dcmread(radiograph, stop_before_pixels=True).StudyInstanceUID)
        _send_to_orthanc(orthanc, radiograph)
        detail = predraft.wait_for_study(study_uid)  # route-hips.lua sends it on once it is stable
        assert detail["state"] == "drafted", detail
        detail = _wait_for_exports(predraft, study_uid)
        texts = _section_texts(pydicom.dcmread(detail["draft"]["sr_path"]))
        assert texts["findings"] and texts["impressions"], texts
        _add_user(predraft, "jdoe", "radiologist", "Doe^Jane")
        yield Site(predraft, orthanc, viewer, study_uid, detail["draft"], texts)


# --- what the page shows ------------------------------------------------------------------------------------------


def _words(text: str) -> str:
    """``text`` with every run of white space one space: OHIF lays SR items out in its own lines."""
    return " ".join(text.split())


def _page_text(page) -> str:
    return _words(page.inner_text("body"))


def _rendered(png: bytes) -> bool:
    """Whether a viewport's screenshot shows a radiograph: many grey levels and a good part of it not black."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
        pixels = grey.width * grey.height
    levels = sum(1 for count in histogram if count)
    lit = sum(histogram[40:]) / max(pixels, 1)
    return levels >= 64 and lit >= 0.1


def _wait_for_image(page, timeout: float = LOAD_TIMEOUT_MS / 1000) -> bool:
    """Wait for a viewport canvas, then until it shows a radiograph; whether it did within ``timeout``.
    (A canvas is there long before its image: a screenshot at once is black.)"""
    page.wait_for_selector(VIEWPORT, timeout=LOAD_TIMEOUT_MS)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _rendered(page.locator(VIEWPORT).first.screenshot()):
            return True
        page.wait_for_timeout(500)
    return False


def _wait_for_text(page, phrases: list[str], timeout: float = LOAD_TIMEOUT_MS / 1000) -> list[str]:
    """Wait until the page shows every phrase; those still missing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        text = _page_text(page)
        missing = [phrase for phrase in phrases if _words(phrase) not in text]
        if not missing or time.monotonic() > deadline:
            return missing
        page.wait_for_timeout(500)


def _viewer_url(base: str, study_uid: str, series_uid: str | None = None) -> str:
    url = f"{base}/viewer?StudyInstanceUIDs={quote(study_uid, safe='')}"
    return url + (f"&initialSeriesInstanceUID={quote(series_uid, safe='')}" if series_uid else "")


def _series_uid(sr_path: str) -> str:
    return str(pydicom.dcmread(sr_path, stop_before_pixels=True).SeriesInstanceUID)


def assert_draft_sr_shown(page, base: str, site: Site) -> None:
    """Open the draft SR's series: its Findings and Impression text is on the page."""
    page.goto(_viewer_url(base, site.study_uid, _series_uid(site.draft["sr_path"])))
    missing = _wait_for_text(page, site.texts["findings"] + site.texts["impressions"])
    assert missing == [], f"the draft SR's text is not shown: {missing}\npage: {_page_text(page)[:3000]}"


def _results_findings(results_sr_path: str) -> dict[str, list[str]]:
    """What the AI results SR says per side, by its Measurement Groups (DCM 125007): keyed by the Tracking
    Identifier ("Right hip"), the group's Comment (DCM 121106: the finding in words) and the meaning of its AI
    classification code."""
    sr = pydicom.dcmread(results_sr_path)
    found: dict[str, list[str]] = {}

    def concept(item: pydicom.Dataset) -> str | None:
        return item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None

    def walk(items: object) -> None:
        for item in items:  # type: ignore[attr-defined]
            if item.ValueType == "CONTAINER" and concept(item) == "125007":
                children = list(item.get("ContentSequence", []))
                name = next((str(c.TextValue) for c in children if concept(c) == "112039"), f"group {len(found) + 1}")
                found[name] = [str(c.TextValue) for c in children if c.ValueType == "TEXT" and concept(c) == "121106"]
                found[name] += [
                    str(c.ConceptCodeSequence[0].CodeMeaning)
                    for c in children
                    if c.ValueType == "CODE" and concept(c) == CLASSIFICATION_CODE.value
                ]
            else:
                walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return found


def assert_tid1500_findings_shown(page, base: str, site: Site, screenshot: str | None = None) -> None:
    """Open the AI results SR (TID 1500, SeriesDescription "AI RESULTS ..."): OHIF draws each side's region on the
    radiograph and asks whether to track its measurements; once tracked, its measurements panel lists each side's
    finding in words (the group's Comment) and its AI classification."""
    path = site.draft.get("results_sr_path")
    assert path, f"the draft has no AI results SR (results_sr_path): {site.draft}"
    results = pydicom.dcmread(path, stop_before_pixels=True)
    assert AI_RESULTS in str(results.SeriesDescription), results.SeriesDescription
    findings = _results_findings(path)
    assert findings and all(findings.values()), f"the AI results SR {path} has no finding to show: {findings}"
    page.goto(_viewer_url(base, site.study_uid, str(results.SeriesInstanceUID)))
    assert _wait_for_image(page), "the radiograph under the AI results did not render"
    page.get_by_role("button", name="Yes").click(timeout=LOAD_TIMEOUT_MS)  # "continue tracking measurements?"
    page.click("[data-cy=trackedMeasurements-btn]")  # the measurements panel
    expected = [text for texts in findings.values() for text in texts]
    missing = _wait_for_text(page, expected)
    if screenshot:
        _screenshot(page, screenshot)
    assert missing == [], f"the AI results SR's findings are not shown: {missing}\npage: {_page_text(page)[:3000]}"


# --- the tests ------------------------------------------------------------------------------------------------------


def test_ohif_beside_orthanc_shows_the_radiograph_and_the_drafts(site: Site, browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    base = site.viewer.url

    page.goto(_viewer_url(base, site.study_uid))
    assert _wait_for_image(page), "the radiograph did not render in OHIF (through Orthanc)"
    _screenshot(page, "ohif-orthanc.png")

    assert_draft_sr_shown(page, base, site)
    _screenshot(page, "ohif-orthanc-sr.png")

    assert_tid1500_findings_shown(page, base, site, screenshot="ohif-orthanc-ai-results.png")
    context.close()


def test_predraft_serves_ohif_on_its_own_dicomweb_behind_the_login(site: Site, browser) -> None:
    base = f"http://127.0.0.1:{site.predraft.http_port}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    violations: list[str] = []  # the viewer's own Content-Security-Policy must let it do all it does
    page.on(
        "console",
        lambda message: violations.append(message.text) if "Content Security Policy" in message.text else None,
    )
    refused = context.request.get(f"{base}/dicomweb/studies", headers={"Accept": "application/dicom+json"})
    assert refused.status == 401  # no login yet: DICOMweb refuses, as it does any anonymous request

    # The viewer asks for the worklist's login first, and comes back to the study after it.
    page.goto(f"{base}/viewer/viewer?StudyInstanceUIDs={quote(site.study_uid, safe='')}")
    assert page.url.startswith(base + "/login"), page.url
    page.fill("#username", "jdoe")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_url(re.compile(r".*/viewer/viewer\?StudyInstanceUIDs=.*"))
    image_shown = _wait_for_image(page)
    _screenshot(page, "ohif-predraft.png")

    # The study page links to the viewer once one is configured.
    page.goto(f"{base}/studies/{site.study_uid}")
    link = page.locator("#open-in-viewer")
    assert link.get_attribute("href") == f"/viewer/viewer?StudyInstanceUIDs={quote(site.study_uid, safe='')}"

    assert_draft_sr_shown(page, f"{base}/viewer", site)
    assert image_shown, "the radiograph did not render in OHIF (through predraft's /dicomweb)"
    assert_tid1500_findings_shown(page, f"{base}/viewer", site)
    assert violations == []
    context.close()
