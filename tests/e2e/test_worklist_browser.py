"""The worklist in a real browser (Playwright driving Debian's headless Chromium) against a real
``predraft serve`` that exports every SR to dcmtk's storescp: log in, watch a study arrive without a reload,
open it, toggle the Grad-CAM overlay, edit and accept, reject another, log out and be refused.

The screenshots of the worklist and of the study page in the README (docs/images/) are taken here: written there
when ``PREDRAFT_UPDATE_SCREENSHOTS=1``, else into a temporary folder, so that a test run leaves the checkout as it
found it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, text

from predraft.models.phantoms import write_demo_study
from tests.conftest import REPO_ROOT
from tests.e2e.conftest import PREDRAFT, Deployment, _start

pytestmark = pytest.mark.slow

PASSWORD = "a long radiologist password"
#: The README's screenshots are rewritten only when asked; otherwise each run's go to a temporary folder.
SCREENSHOTS = (
    REPO_ROOT / "docs" / "images"
    if os.environ.get("PREDRAFT_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / "predraft-screenshots"
)
DRAFT_TIMEOUT_MS = 240_000


@pytest.fixture
def deployment(tmp_path: Path, storescp: tuple[int, Path]) -> Iterator[Deployment]:
    """``predraft serve`` on the embedded default, exporting to the storescp above."""
    port, _ = storescp
    destinations = [{"kind": "dimse", "name": "pacs", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port}]
    yield from _start(tmp_path, {"PREDRAFT_EXPORT_DESTINATIONS": json.dumps(destinations)})


def _add_user(deployment: Deployment, username: str, role: str, name: str) -> None:
    result = subprocess.run(
        [PREDRAFT, "users", "add", username, "--role", role, "--name", name, "--password-stdin"],
        env=deployment.env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _rows(deployment: Deployment, sql: str, **params: object) -> list[tuple]:
    engine = create_engine(f"sqlite:///{deployment.var_dir / 'predraft.sqlite'}")
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def _received_by_pacs(folder: Path, sop_instance_uid: str, timeout: float = 60.0) -> pydicom.Dataset:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in folder.iterdir():
            if path.is_file() and not path.name.startswith("."):
                try:
                    ds = pydicom.dcmread(path)
                except Exception:  # a file storescp is still writing  # noqa: S112
                    continue
                if ds.SOPInstanceUID == sop_instance_uid:
                    return ds
        time.sleep(0.5)
    raise AssertionError(f"the PACS did not receive SR {sop_instance_uid} within {timeout} s")


def _screenshot(page, name: str, *, full_page: bool = False) -> None:
    """A small PNG for the README: the page, reduced to a 256-colour palette."""
    from PIL import Image

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=full_page)
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def _wait_until(page, expression: str, timeout: float = 60.0) -> None:
    """Poll a JavaScript expression in the page until it is true. (Playwright's wait_for_function evaluates a
    string with eval, which the worklist's Content-Security-Policy forbids, as it should.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {expression}"
        page.wait_for_timeout(200)


def _model_card(deployment: Deployment) -> dict:
    """The card of the model the deployment drafts with (its settings: the bundled demo model by default)."""
    from predraft.core.settings import Settings

    env = {
        key.removeprefix("PREDRAFT_").lower(): value
        for key, value in deployment.env.items()
        if key in {"PREDRAFT_VAR_DIR", "PREDRAFT_MODEL"}
    }
    return json.loads(Settings(**env).model.card_path.read_text())


def test_review_in_the_browser(deployment: Deployment, storescp: tuple[int, Path], browser, tmp_path: Path) -> None:
    _, pacs = storescp
    _add_user(deployment, "jdoe", "radiologist", "Doe^Jane")
    base = f"http://127.0.0.1:{deployment.http_port}"
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()

    # Log in: the worklist asks for it first.
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    page.fill("#username", "jdoe")
    page.fill("#password", PASSWORD)
    page.click("#login")
    page.wait_for_selector("#worklist")
    page.evaluate("window.__predraftMarker = 'no reload'")

    # A study sent while the page is open appears, drafted, without a reload.
    first = write_demo_study(tmp_path / "first", seed=0)
    second = write_demo_study(tmp_path / "second", seed=1)
    first_uid = str(pydicom.dcmread(first[0].path, stop_before_pixels=True).StudyInstanceUID)
    second_uid = str(pydicom.dcmread(second[0].path, stop_before_pixels=True).StudyInstanceUID)
    deployment.storescu(*[image.path for image in first])
    deployment.storescu(*[image.path for image in second])
    for uid in (first_uid, second_uid):
        page.wait_for_selector(f'tr[data-study-uid="{uid}"] .state-drafted', timeout=DRAFT_TIMEOUT_MS)
    assert page.evaluate("window.__predraftMarker") == "no reload"
    banner = page.inner_text("#draft-banner")
    card = _model_card(deployment)
    assert "Unverified AI draft" in banner and card["name"] in banner
    assert ("demo model" in banner) == bool(card.get("synthetic_demo"))
    _screenshot(page, "worklist.png")

    # Open the first study: thumbnails, the overlay toggle, the draft in the editor.
    page.click(f'tr[data-study-uid="{first_uid}"] a.study-link')
    page.wait_for_selector("#report-text")
    banner = page.inner_text("#draft-banner")
    assert "Unverified AI draft" in banner and f"{card['name']} {card['version']}" in banner
    _wait_until(page, "[...document.querySelectorAll('figure.hip img')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.locator("figure.hip img").count() == 4
    page.click("#overlay-toggle")
    _wait_until(
        page,
        "[...document.querySelectorAll('figure.hip img')].every(i => i.src.includes('gradcam.png') "
        "&& i.complete && i.naturalWidth > 0)",
        timeout=120,
    )
    assert page.get_attribute("#overlay-toggle", "aria-pressed") == "true"
    _screenshot(page, "study.png", full_page=True)

    # Edit and accept: "Accept as drafted" is off once the text is edited.
    draft_text = page.input_value("#report-text")
    page.fill("#report-text", draft_text + "Addendum: reviewed with the prior study.\n")
    assert page.is_disabled("#accept") and page.is_enabled("#save-accept")
    page.click("#save-accept")
    page.wait_for_selector("#done")
    assert "edited" in page.inner_text("#done")
    assert "Addendum: reviewed with the prior study." in page.inner_text("#final-text")

    verified = _rows(
        deployment,
        "SELECT d.sr_sop_instance_uid, d.text, r.action, r.diff, u.username FROM drafts d "
        "JOIN reviews r ON r.report_id = d.id JOIN users u ON u.id = r.user_id JOIN studies s "
        "ON s.id = d.study_id WHERE s.study_uid = :uid AND d.kind = 'verified'",
        uid=first_uid,
    )
    assert len(verified) == 1
    sr_uid, final_text, action, diff, username = verified[0]
    assert (action, username) == ("edited", "jdoe") and "+Addendum: reviewed with the prior study." in diff
    (draft_sr_uid,) = _rows(
        deployment,
        "SELECT d.sr_sop_instance_uid FROM drafts d JOIN studies s ON s.id = "
        "d.study_id WHERE s.study_uid = :uid AND d.kind = 'draft'",
        uid=first_uid,
    )[0]
    sr = _received_by_pacs(pacs, sr_uid)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    assert str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == "Doe^Jane"
    assert (
        sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        == draft_sr_uid
    )
    assert _received_by_pacs(pacs, draft_sr_uid).VerificationFlag == "UNVERIFIED"  # the draft went there first
    shown = deployment.study(first_uid)  # predraft studies show --json
    assert shown["state"] == "reviewed" and shown["review"]["action"] == "edited"
    assert shown["review"]["sr_sop_instance_uid"] == sr_uid

    # Reject the second study, with a reason.
    page.goto(f"{base}/studies/{second_uid}")
    page.fill("#reject-reason", "Plate on the left hip missed")
    page.click("#reject")
    page.wait_for_selector("#done")
    assert "rejected" in page.inner_text("#done")
    rejection = _rows(
        deployment,
        "SELECT d.sr_sop_instance_uid, r.reason FROM drafts d JOIN reviews r ON "
        "r.report_id = d.id JOIN studies s ON s.id = d.study_id WHERE s.study_uid = :uid AND "
        "d.kind = 'rejection'",
        uid=second_uid,
    )
    assert [reason for _, reason in rejection] == ["Plate on the left hip missed"]
    notice = _received_by_pacs(pacs, rejection[0][0])
    assert notice.SeriesDescription == "AI DRAFT REJECTED (predraft)"
    assert any(
        "Plate on the left hip missed" in item.TextValue for item in notice.ContentSequence if item.ValueType == "TEXT"
    )
    page.goto(base + "/?state=reviewed")
    assert page.locator("tbody#rows tr[data-study-uid]").count() == 2

    # Log out: the worklist and its rows are refused afterwards.
    page.click("#logout")
    page.wait_for_selector("#login")
    page.goto(base + "/")
    assert page.url.startswith(base + "/login")
    assert page.request.get(base + "/worklist/rows").status == 401
    context.close()
