"""The worklist over real HTTP (uvicorn in this process): login and sessions, CSRF, roles, escaping, the
worklist's filters, the study page's images, and reviews with the SRs they issue."""

from __future__ import annotations

import html
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator

import pydicom
import pytest
from sqlalchemy import select

from predraft.cli import main
from predraft.core.db import session_scope
from predraft.core.schema import Draft, Export, Instance, Review, Study, WebSession
from predraft.workers import export_task
from predraft.worklist.auth import SECRET_FILE_NAME, load_session_secret
from tests.unit.webapp import PASSWORD, Client, WebApp, csrf_in, drafted_web_app

EVIL_NAME = "<script>alert(1)</script>^<b>bold</b>"
EVIL_DESCRIPTION = '<img src=x onerror="alert(2)">'

DESTINATIONS = [{"kind": "stow", "name": "vna", "url": "http://127.0.0.1:9/dicom-web"}]


class Sent:
    """Stands in for predraft.workers.export_task.send_exports: records what would be sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[str]]] = []

    def __call__(self, _app: object, draft_id: int, destinations: list[str]) -> None:
        self.calls.append((draft_id, list(destinations)))


@pytest.fixture
def sent(monkeypatch) -> Sent:
    recorder = Sent()
    monkeypatch.setattr(export_task, "send_exports", recorder)
    return recorder


@pytest.fixture
def web(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, sent) -> Iterator[WebApp]:
    with drafted_web_app(
        tmp_path, sqlite_url, [image.path for image in demo_study], tiny_card_path, export_destinations=DESTINATIONS
    ) as app:
        yield app


def _study_form(client: Client, study_uid: str) -> dict[str, str]:
    page = client.get(f"/studies/{study_uid}").text
    draft_id = re.search(r'name="draft_id" value="(\d+)"', page)
    assert draft_id, page[:2000]
    text = re.search(r"<textarea[^>]*>(.*?)</textarea>", page, re.S)
    return {"csrf_token": csrf_in(page), "draft_id": draft_id.group(1), "text": html.unescape(text.group(1))}


# --- login, sessions, CSRF, roles ---------------------------------------------------------------------------


def _page_routes(web: WebApp) -> list[tuple[str, str]]:
    """Every route of the worklist (method, path with sample values), from its router."""
    from predraft.worklist.routes import router

    routes = []
    for route in router.routes:
        path = getattr(route, "path", "")
        if path.startswith(("/dicomweb", "/static", "/login")) or path in {"/healthz"}:
            continue
        sample = (
            path.replace("{study_uid}", web.drafted.study_uid).replace("{instance_id}", "1").replace("{side}", "right")
        )
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                routes.append((method, sample))
    return routes


def test_no_page_or_api_without_login(web):
    routes = _page_routes(web)
    assert {
        ("GET", "/"),
        ("GET", "/worklist/rows"),
        ("GET", "/stats"),
        ("POST", f"/studies/{web.drafted.study_uid}/review"),
        ("POST", "/logout"),
    } <= set(routes)
    client = web.client()
    for method, path in routes:
        response = client.http.request(
            method, web.url + path, allow_redirects=False, timeout=30, headers={"Accept": "application/json"}
        )
        assert response.status_code == 401, (method, path, response.status_code)
        page = client.http.request(method, web.url + path, allow_redirects=False, timeout=30)
        # A browser is sent to the login form (and back to the page it asked for afterwards).
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next="), (path, page)
        assert method == "GET" or page.headers["location"] == "/login?next=%2F"
    assert client.get("/healthz").status_code == 200  # the health check stays open
    assert client.get("/dicomweb/studies").status_code == 401  # DICOMweb keeps its own auth


def test_login_sets_a_hardened_cookie_and_logout_ends_the_session(web):
    web.add_user("alice", "radiologist")
    client = web.client()
    assert client.login("alice", "wrong password!").status_code == 401
    assert "predraft_session" not in client.http.cookies

    token = client.csrf("/login")
    response = client.http.post(
        web.url + "/login",
        data={"csrf_token": token, "username": "alice", "password": PASSWORD, "next": "/stats"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 303 and response.headers["location"] == "/stats"
    cookie = response.headers["set-cookie"]
    assert "predraft_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Max-Age=43200" in cookie  # session_lifetime_minutes 720
    assert response.headers["x-frame-options"] == "DENY"
    assert "script-src 'self'" in response.headers["content-security-policy"]
    with session_scope(web.settings.database_url) as session:  # only a keyed hash of the token is stored
        stored = session.scalars(select(WebSession.token_hash)).all()
    assert client.http.cookies["predraft_session"] not in stored and len(stored) == 1

    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text
    old_cookie = client.http.cookies["predraft_session"]
    assert client.post("/logout", {"csrf_token": csrf_in(page.text)}).url.endswith("/login")
    stale = web.client()
    stale.http.cookies.set("predraft_session", old_cookie)
    assert stale.get("/", allow_redirects=False).status_code == 303  # the old cookie is refused after logout


def test_an_open_redirect_after_login_is_refused(web):
    web.add_user("alice", "radiologist")
    client = web.client()
    token = client.csrf("/login")
    response = client.http.post(
        web.url + "/login",
        data={"csrf_token": token, "username": "alice", "password": PASSWORD, "next": "//evil.example/"},
        allow_redirects=False,
        timeout=30,
    )
    assert response.headers["location"] == "/"


def test_the_secure_flag_is_on_by_default(clean_settings_env, sqlite_url, tiny_card_path, tmp_path):
    from predraft.core.settings import get_settings
    from tests.unit.webapp import serving

    settings = get_settings(var_dir=tmp_path / "var", database_url=sqlite_url, model=tiny_card_path)
    assert settings.worklist.cookie_secure
    with serving(settings) as (url, _app):
        client = Client(url)
        response = client.get("/login")
        assert "Secure" in response.headers["set-cookie"]


def test_a_form_without_its_csrf_token_is_refused(web):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    path = f"/studies/{web.drafted.study_uid}/review"
    without = {key: value for key, value in form.items() if key != "csrf_token"}
    missing = client.post(path, without | {"action": "accepted"})
    assert missing.status_code == 403 and "security token" in missing.text
    wrong = client.post(path, form | {"csrf_token": "0" * 64, "action": "accepted"})
    assert wrong.status_code == 403
    other = web.logged_in("bob")  # another session's token does not do either
    assert client.post(path, form | {"csrf_token": other.csrf("/"), "action": "accepted"}).status_code == 403
    assert client.post("/logout", {}).status_code == 403
    assert client.post("/logout", {"csrf_token": "\u00e9t\u00e9"}).status_code == 403  # not ASCII: refused, not a 500
    login = web.client()
    login.get("/login")
    assert login.post("/login", {"username": "alice", "password": PASSWORD}).status_code == 403
    with session_scope(web.settings.database_url) as session:
        assert session.scalars(select(Review)).all() == []  # nothing was done


def test_a_radiologist_cannot_reach_admin_pages_and_an_admin_cannot_review(web):
    radiologist = web.logged_in("alice")
    page = radiologist.get("/stats")
    assert page.status_code == 403
    assert 'href="/stats"' not in radiologist.get("/").text

    admin = web.logged_in("root", role="admin")
    assert admin.get("/stats").status_code == 200
    study_page = admin.get(f"/studies/{web.drafted.study_uid}").text
    assert "Only radiologists review drafts" in study_page and 'id="accept"' not in study_page
    form = {"csrf_token": csrf_in(study_page), "draft_id": str(web.drafted.draft_id), "action": "accepted"}
    assert admin.post(f"/studies/{web.drafted.study_uid}/review", form).status_code == 403


def test_html_in_the_patient_name_is_shown_escaped(web):
    with session_scope(web.settings.database_url) as session:
        study = session.scalars(select(Study)).one()
        study.patient_name, study.study_description = EVIL_NAME, EVIL_DESCRIPTION
    client = web.logged_in("alice")
    for path in ("/", "/worklist/rows", f"/studies/{web.drafted.study_uid}"):
        text = client.get(path).json()["rows"] if path == "/worklist/rows" else client.get(path).text
        assert "<script>alert(1)" not in text and "<b>bold" not in text and "<img src=x" not in text, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;, &lt;b&gt;bold&lt;/b&gt;" in text, path
    page = client.get(f"/studies/{web.drafted.study_uid}").text
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in page


# --- the worklist and the study page ---------------------------------------------------------------------


def test_worklist_rows_filters_search_and_sort(web):
    client = web.logged_in("alice")
    uid = web.drafted.study_uid
    with session_scope(web.settings.database_url) as session:
        study = session.scalars(select(Study)).one()
        patient_id, accession = study.patient_id, study.accession_number
    page = client.get("/").text
    assert f'data-study-uid="{uid}"' in page
    assert "Unverified AI draft" in page and "predraft-untrained" in page
    answer = client.get("/worklist/rows").json()
    assert answer["total"] == 1 and "THA" in answer["rows"] and "90%" in answer["rows"]
    assert "AP pelvis" in answer["rows"] and "Frog-leg R" in answer["rows"]
    assert "Unverified AI draft" in answer["banner"] and "predraft-untrained" in answer["banner"]
    for query, expected in [
        ("state=drafted", 1),
        ("state=reviewed", 0),
        (f"q={patient_id[:4].lower()}", 1),
        (f"q={accession}", 1),
        ("q=nobody", 0),
        ("from=2000-01-01&to=2000-12-31", 0),
        ("sort=patient&order=asc", 1),
        ("q=%25", 0),
    ]:
        assert client.get(f"/worklist/rows?{query}").json()["total"] == expected, query
    assert client.get("/?state=bogus").status_code == 400
    assert client.get("/?sort=password_hash").status_code == 400


def test_a_childs_draft_is_flagged_on_the_worklist(web):
    client = web.logged_in("alice")
    assert "Under 18" not in client.get("/worklist/rows").json()["rows"]
    with session_scope(web.settings.database_url) as session:
        session.scalars(select(Draft)).one().patient_is_child = True  # as drafting records it (predraft.reporting.age)
    rows = client.get("/worklist/rows").json()["rows"]
    assert "flag-child" in rows and "Under 18" in rows


def test_scope_flags_reach_the_worklist_and_the_study_page(web):
    client = web.logged_in("alice")
    rows = client.get("/worklist/rows").json()["rows"]
    assert "Tags disagree" not in rows and "No body-part tags" not in rows
    note = "tags say KNEE, the image reads as hip or pelvis, 0.99"
    with session_scope(web.settings.database_url) as session:  # as the prepare task records the gate's decision
        first = session.scalars(select(Instance).order_by(Instance.id)).first()
        first.scope_flag, first.scope_note, first.region_read, first.region_probability = (
            "tags disagree",
            note,
            "hip",
            0.99,
        )
    rows = client.get("/worklist/rows").json()["rows"]
    assert "flag-tags" in rows and "Tags disagree" in rows and "No body-part tags" not in rows
    assert note in client.get(f"/studies/{web.drafted.study_uid}").text
    view_note = (
        "the image reads as an AP pelvis (0.97): two hips, the patient's right taken to be on the image's "
        "left; no R/L marker was read, check the sides"
    )
    with session_scope(web.settings.database_url) as session:  # hip tags without a view, split by the gate
        first = session.scalars(select(Instance).order_by(Instance.id)).first()
        first.scope_flag, first.scope_note = "view read from the image", view_note
    rows = client.get("/worklist/rows").json()["rows"]
    assert "flag-view" in rows and "View read from image" in rows and "Tags disagree" not in rows
    page = client.get(f"/studies/{web.drafted.study_uid}").text
    assert "the image reads as an AP pelvis (0.97): two hips" in page and "no R/L marker was read, check" in page


def test_study_page_thumbnails_overlays_and_probability_bars(web):
    client = web.logged_in("alice")
    page = client.get(f"/studies/{web.drafted.study_uid}").text
    assert "Unverified AI draft" in page and "predraft-untrained" in page
    thumbs = re.findall(r'data-thumb="([^"]+)"', page)
    overlays = [html.unescape(url) for url in re.findall(r'data-overlay="([^"]+)"', page)]
    assert len(thumbs) == 4 and len(overlays) == 4  # AP pelvis right and left, frog-leg, cross-table lateral
    assert "AP pelvis &middot; Right" in page and "X-table lat &middot; Right" in page
    assert page.count('class="bar-fg"') >= 2
    for url in (thumbs[0], overlays[0]):
        image = client.get(url)
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert image.content.startswith(b"\x89PNG")
    cached = list((web.settings.var_dir / "cache" / "web").rglob("*.png"))
    assert len(cached) == 2
    again = client.get(overlays[0])  # from the cache: same bytes
    assert again.content == cached[[p.parent.parent.name for p in cached].index("gradcam")].read_bytes()
    assert client.get(thumbs[0].replace("right.png", "bogus.png")).status_code == 404
    assert client.get(f"/studies/{web.drafted.study_uid}/hips/999/right.png").status_code == 404
    assert client.get(overlays[0].replace("class=tha", "class=nope")).status_code == 404


# --- reviews -------------------------------------------------------------------------------------------------


def _dciodvfy_errors(path: str) -> list[str]:
    """dicom3tools' verdict on an SR file (errors only), or skip when it is not installed."""
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools)")
    result = subprocess.run(["dciodvfy", path], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def _reports(web: WebApp) -> list[Draft]:
    with session_scope(web.settings.database_url) as session:
        return list(session.scalars(select(Draft).order_by(Draft.id)))


def test_accepting_as_drafted_issues_a_verified_sr_superseding_the_draft(web, sent):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    forged = client.get(f"/studies/{web.drafted.study_uid}?done=accepted")  # a link, not a review
    assert forged.status_code == 200 and "Review recorded" not in forged.text
    done = client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted"})
    assert done.status_code == 200 and "Review recorded: accepted" in done.text

    draft, report = _reports(web)
    assert (draft.kind, report.kind, report.supersedes_id) == ("draft", "verified", draft.id)
    assert report.text == draft.text
    assert sent.calls == [(report.id, ["vna"])]
    with session_scope(web.settings.database_url) as session:
        review = session.scalars(select(Review)).one()
        assert (review.action, review.diff, review.report_id, review.user.username) == (
            "accepted",
            "",
            report.id,
            "alice",
        )
        assert session.scalars(select(Study)).one().state == "reviewed"
        export = session.scalars(select(Export).where(Export.draft_id == report.id)).one()
        assert (export.destination, export.state) == ("vna", "pending")

    sr = pydicom.dcmread(report.sr_path)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    observer = sr.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == "Alice^Test"
    assert observer.VerifyingObserverIdentificationCodeSequence[0].CodeValue == "alice"
    superseded = {
        sop.ReferencedSOPInstanceUID
        for series in sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert superseded == {draft.sr_sop_instance_uid, draft.results_sr_sop_instance_uid}  # the AI results SR too
    assert sr.StudyInstanceUID == web.drafted.study_uid and sr.SeriesInstanceUID != draft.sr_series_uid
    concepts = [item.ConceptNameCodeSequence[0].CodeValue for item in sr.ContentSequence]
    assert "121070" in concepts and "121072" in concepts  # the draft's coded findings and impressions, kept
    assert sr.ContributingEquipmentSequence[0].Manufacturer == "predraft"
    assert _dciodvfy_errors(report.sr_path) == []

    again = client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted"})
    assert again.status_code == 409 and "already" in again.text


def test_the_history_lists_the_draft_its_ai_results_sr_and_the_report(web):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted"})
    draft, report = _reports(web)
    page = client.get(f"/studies/{web.drafted.study_uid}").text
    history = page[page.index("SRs issued") :]
    rows = [
        (kind, uid)
        for kind, uid in re.findall(r"<td>\d+</td><td>([^<]+)</td><td>[^<]*</td><td><code>([^<]+)</code>", history)
    ]
    assert rows == [
        ("Unverified AI draft", draft.sr_sop_instance_uid),
        ("AI results (TID 1500)", draft.results_sr_sop_instance_uid),
        ("Verified report", report.sr_sop_instance_uid),
    ]


def test_a_draft_whose_images_retention_purged_can_still_be_accepted(web, tmp_path):
    with session_scope(web.settings.database_url) as session:
        kept = {}
        for instance in session.scalars(select(Instance)):
            kept[instance.id] = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
            # As if predraft.workers.retention had deleted the file (the demo study's files are shared by other tests).
            instance.spool_path = str(tmp_path / "purged" / f"{instance.id}.dcm")
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    done = client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted"})
    assert done.status_code == 200 and "Review recorded: accepted" in done.text
    _, report = _reports(web)
    sr = pydicom.dcmread(report.sr_path)
    first = next(iter(kept.values()))
    assert (sr.PatientID, sr.StudyInstanceUID, sr.AccessionNumber) == (
        first.PatientID,
        first.StudyInstanceUID,
        first.AccessionNumber,
    )
    evidence = {
        sop.ReferencedSOPInstanceUID
        for series in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in kept.values()}
    assert _dciodvfy_errors(report.sr_path) == []


def test_save_edits_and_accept_records_the_diff(web):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    edited = form["text"].replace("Total hip arthroplasty.", "Total hip arthroplasty, cemented.", 1)
    assert (
        client.post(
            f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted", "text": edited}
        ).status_code
        == 400
    )  # accept signs the draft's text
    page = client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "edited", "text": edited})
    assert page.status_code == 200 and "cemented" in page.text

    _, report = _reports(web)
    assert report.kind == "verified" and "cemented" in report.text
    with session_scope(web.settings.database_url) as session:
        review = session.scalars(select(Review)).one()
    assert review.action == "edited" and review.final_text == report.text
    assert (
        "-Right hip: Total hip arthroplasty." in review.diff
        and "+Right hip: Total hip arthroplasty, cemented." in review.diff
    )
    sr = pydicom.dcmread(report.sr_path)
    assert sr.VerificationFlag == "VERIFIED"
    findings = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121070")
    assert "cemented" in findings.ContentSequence[0].TextValue


def test_rejecting_needs_a_reason_and_issues_a_rejection_sr(web, sent):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    path = f"/studies/{web.drafted.study_uid}/review"
    assert client.post(path, form | {"action": "rejected", "reason": "  "}).status_code == 400
    unknown = client.post(path, form | {"action": "reject", "reason": "wrong"})  # the form posts ReviewAction's values
    assert unknown.status_code == 400 and "is not one of accepted, edited, rejected" in unknown.text
    page = client.post(path, form | {"action": "rejected", "reason": "Left hip has a <b>plate</b>"})
    assert page.status_code == 200 and "Left hip has a &lt;b&gt;plate&lt;/b&gt;" in page.text

    draft, report = _reports(web)
    assert report.kind == "rejection" and report.supersedes_id == draft.id
    with session_scope(web.settings.database_url) as session:
        review = session.scalars(select(Review)).one()
    assert (review.action, review.reason, review.final_text) == ("rejected", "Left hip has a <b>plate</b>", "")
    sr = pydicom.dcmread(report.sr_path)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.SeriesDescription) == (
        "COMPLETE",
        "VERIFIED",
        "AI DRAFT REJECTED (predraft)",
    )
    texts = [item.TextValue for item in sr.ContentSequence if item.ValueType == "TEXT"]
    assert any("was rejected" in text and "Left hip has a <b>plate</b>" in text for text in texts)
    assert any(text.startswith("AI draft rejected by Alice, Test (alice) on ") for text in texts)
    assert _dciodvfy_errors(report.sr_path) == []
    assert sent.calls == [(report.id, ["vna"])]


def test_a_study_reopened_by_a_late_image_cannot_be_reviewed(web):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    with session_scope(web.settings.database_url) as session:
        study = session.scalars(select(Study)).one()
        study.state, study.generation = "receiving", 2
    response = client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "accepted"})
    assert response.status_code == 409 and "re-opened" in response.text
    assert [report.kind for report in _reports(web)] == ["draft"]


def test_statistics_count_reviews_per_class_and_model(web):
    client = web.logged_in("alice")
    form = _study_form(client, web.drafted.study_uid)
    client.post(f"/studies/{web.drafted.study_uid}/review", form | {"action": "rejected", "reason": "wrong side"})
    from predraft.worklist.stats import percentile, statistics

    with session_scope(web.settings.database_url) as session:
        figures = statistics(session)
    overall = figures["overall"]
    assert (overall["drafts"], overall["reviewed"], overall["rejected"], overall["rejection_rate"]) == (1, 1, 1, 1.0)
    assert overall["acceptance_rate"] == 0.0 and overall["edit_rate"] == 0.0
    assert {row["class"] for row in figures["per_class"]} == {"tha", "none"}
    assert figures["per_model"][0]["model"].startswith("predraft-untrained")
    assert sum(day["drafts"] for day in figures["drafts_per_day"]) == 1
    assert figures["time_to_draft"]["studies"] == 1
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 90) is None
    admin = web.logged_in("root", role="admin")
    page = admin.get("/stats").text
    assert "Rejected" in page and "100%" in page and "p90" in page


# --- the session secret and the users CLI -------------------------------------------------------------------


def test_the_session_secret_is_generated_once_with_mode_0600(clean_settings_env, tmp_path):
    from predraft.core.settings import get_settings

    settings = get_settings(var_dir=tmp_path / "var")
    first = load_session_secret(settings)
    path = tmp_path / "var" / SECRET_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert load_session_secret(settings) == first
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_session_secret(settings)
    with pytest.raises(ValueError, match="at least 32 characters"):
        get_settings(var_dir=tmp_path / "var", session_secret="short")


def test_users_cli_add_passwd_ls(clean_settings_env, sqlite_url, monkeypatch, capsys):
    import io
    import json

    from predraft.worklist.users import authenticate

    monkeypatch.setenv("PREDRAFT_DATABASE_URL", sqlite_url)
    monkeypatch.setattr("sys.stdin", io.StringIO("first password\n"))
    assert main(["users", "add", "alice", "--role", "radiologist", "--name", "Doe^Alice", "--password-stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("first password\n"))
    assert main(["users", "add", "alice", "--role", "admin", "--password-stdin"]) == 1
    assert "exists already" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--role", "admin", "--password-stdin"]) == 1
    assert "at least 10 characters" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("second password\n"))
    assert main(["users", "passwd", "alice", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["users", "ls", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"], u["name"], u["active"]) for u in listed] == [
        ("alice", "radiologist", "Doe^Alice", True)
    ]
    with session_scope(sqlite_url) as session:
        assert authenticate(session, username="alice", password="first password") is None
        user = authenticate(session, username="alice", password="second password")
        assert user is not None and user.password_hash.startswith("$argon2id$")
    assert main(["users", "disable", "alice"]) == 0
    with session_scope(sqlite_url) as session:
        assert authenticate(session, username="alice", password="second password") is None


def test_repeated_failed_logins_are_throttled_per_user_name(
    clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, sent, caplog
):
    with drafted_web_app(
        tmp_path, sqlite_url, [image.path for image in demo_study], tiny_card_path, login_failures_per_user=2
    ) as web:
        web.add_user("alice", "radiologist")
        web.add_user("bob", "radiologist")
        client = web.client()
        with caplog.at_level("INFO", logger="predraft.worklist.routes"):
            assert [client.login("alice", "wrong password!").status_code for _ in range(2)] == [401, 401]
            refused = client.login("alice", PASSWORD)  # the right password, but too late
        assert refused.status_code == 429 and "Too many failed logins. Try again in 5 minutes." in refused.text
        assert 290 <= int(refused.headers["retry-after"]) <= 300
        assert "predraft_session" not in client.http.cookies
        assert "failed login from 127.0.0.1" in caplog.text and "wrong password" not in caplog.text
        assert "login refused: too many failed logins" in caplog.text
        # Another user name from the same address is not held back (its limit is 20).
        assert client.login("bob", PASSWORD).url.endswith("/")


def test_parallel_guesses_cannot_all_pass_the_throttle(
    clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, sent
):
    from concurrent.futures import ThreadPoolExecutor

    with drafted_web_app(
        tmp_path, sqlite_url, [image.path for image in demo_study], tiny_card_path, login_failures_per_user=2
    ) as web:
        web.add_user("alice", "radiologist")
        clients = [web.client() for _ in range(8)]
        tokens = [client.csrf("/login") for client in clients]  # each its own login form first

        def guess(index: int) -> int:
            return (
                clients[index]
                .post(
                    "/login",
                    {"csrf_token": tokens[index], "username": "alice", "password": f"guess {index}!", "next": "/"},
                )
                .status_code
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            codes = sorted(pool.map(guess, range(8)))
    assert codes == [401, 401] + [429] * 6  # two wrong passwords tried; the other six refused unheard


def test_thumbnails_of_an_untagged_pelvis_the_gate_split_are_its_halves(web, tmp_path):
    """The worker drafted an untagged AP pelvis from its halves (predraft.workers.gate); the page shows those hips."""
    client = web.logged_in("alice")
    with session_scope(web.settings.database_url) as session:
        instance = session.scalars(select(Instance).where(Instance.view == "ap_pelvis")).first()
        instance_id, tagged = instance.id, instance.spool_path
    ds = pydicom.dcmread(tagged)
    for keyword in (
        "BodyPartExamined",
        "AnatomicRegionSequence",
        "StudyDescription",
        "SeriesDescription",
        "ProtocolName",
        "ViewPosition",
        "ViewCodeSequence",
        "ViewModifierCodeSequence",
        "ImageLaterality",
        "Laterality",
        "PatientOrientation",
    ):
        if keyword in ds:
            delattr(ds, keyword)
    untagged = tmp_path / "untagged.dcm"
    ds.save_as(untagged)  # the image as an untagged sender would have sent it
    with session_scope(web.settings.database_url) as session:
        session.get(Instance, instance_id).spool_path = str(untagged)
    try:
        shown = {}
        for side in ("right", "left"):
            image = client.get(f"/studies/{web.drafted.study_uid}/hips/{instance_id}/{side}.png")
            assert image.status_code == 200 and image.content.startswith(b"\x89PNG"), image.text
            shown[side] = image.content
        assert shown["right"] != shown["left"]
    finally:
        with session_scope(web.settings.database_url) as session:
            session.get(Instance, instance_id).spool_path = tagged


def test_a_radiologist_can_have_an_out_of_scope_study_drafted_anyway_with_a_chosen_pack(web):
    with session_scope(web.settings.database_url) as session:  # as routing leaves a study no pack reads
        study = session.scalars(select(Study).where(Study.study_uid == web.drafted.study_uid)).one()
        study.state, study.error, generation = (
            "out_of_scope",
            "no hip or pelvis radiograph in this study",
            study.generation,
        )
    web.settings.var_dir.mkdir(parents=True, exist_ok=True)  # the embedded broker's database lives there
    path = f"/studies/{web.drafted.study_uid}/draft-with"
    admin = web.logged_in("root", role="admin")
    page = admin.get(f"/studies/{web.drafted.study_uid}").text
    assert 'id="draft-with"' not in page  # only a radiologist asks for a draft
    assert admin.post(path, {"csrf_token": csrf_in(page), "pack": "hip"}).status_code == 403

    client = web.logged_in("alice")
    page = client.get(f"/studies/{web.drafted.study_uid}").text
    assert (
        'id="draft-with"' in page and '<option value="hip">Hip and pelvis: orthopedic hardware (hip)</option>' in page
    )
    assert client.post(path, {"pack": "hip"}).status_code == 403  # no CSRF token
    refused = client.post(path, {"csrf_token": csrf_in(page), "pack": "knee"})
    assert refused.status_code == 400 and "no installed pack is named" in refused.text
    done = client.post(path, {"csrf_token": csrf_in(page), "pack": "hip"})
    assert done.status_code == 200 and "Drafting requested with the hip pack." in done.text
    with session_scope(web.settings.database_url) as session:
        study = session.scalars(select(Study).where(Study.study_uid == web.drafted.study_uid)).one()
        assert (study.requested_pack, study.generation, study.state) == ("hip", generation + 1, "ready")
        assert {instance.state for instance in study.instances} == {"received"}  # sent to prepare again
