"""The OHIF Viewer predraft may serve (predraft.worklist.viewer), its pinned install (``predraft viewer install``),
and DICOMweb reads with the worklist's session (predraft.listener.dicomweb.auth), over real HTTP (uvicorn in this
process) with a small stand-in for the viewer's dist/ (the real one runs in tests/e2e/test_ohif_browser.py)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from predraft.cli import main
from predraft.cli.viewer import DEFAULT_PIN, NPM_CI
from predraft.core.db import session_scope
from predraft.core.schema import User, WebSession, utcnow
from predraft.core.settings import get_settings
from predraft.worklist.viewer import ViewerFiles, relocate, viewer_link
from tests.unit.webapp import WebApp, drafted_web_app

#: The two inline scripts of OHIF's index.html, as the prebuilt dist/ has them (the root is relocated).
INLINE = 'console.time("scriptToView"),window.PUBLIC_URL="/"'
INDEX_HTML = (
    f'<!doctype html><html><head><script>{INLINE}</script><link rel="manifest" href="/manifest.json">'
    '<script src="/app-config.js"></script><script defer src="/app.bundle.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>'
)
DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A stand-in for @ohif/app's dist/: what the real one holds where predraft changes or checks anything."""
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX_HTML)
    (folder / "app-config.js").write_text("window.config = { fromTheDist: true };")
    (folder / "app.bundle.js").write_text('// webpack/runtime/public_path\n__webpack_require__.p = "/";\n')
    (folder / "worker.bundle.js").write_text("self.onmessage = () => {};\n")
    (folder / "app.bundle.css").write_text("@font-face{src:url(/a34f.woff2) format(woff2)}")
    (folder / "codec.wasm").write_bytes(b"\0asm\1\0\0\0")
    (folder / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    return folder


@pytest.fixture
def viewer_web(clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, dist) -> Iterator[WebApp]:
    with drafted_web_app(
        tmp_path, sqlite_url, [image.path for image in demo_study], tiny_card_path, viewer_dir=dist
    ) as app:
        yield app


# --- serving the viewer -------------------------------------------------------------------------------------------


def test_the_viewer_needs_a_worklist_login(viewer_web: WebApp) -> None:
    client = viewer_web.client()
    page = client.get("/viewer/viewer?StudyInstanceUIDs=1.2.3", allow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fviewer%2Fviewer%3FStudyInstanceUIDs%3D1.2.3"
    for path in ("/viewer/app-config.js", "/viewer/app.bundle.js", "/viewer/codec.wasm", "/viewer"):
        response = client.get(path, allow_redirects=False, headers={"Accept": "*/*"})
        assert response.status_code == 401, path


def test_the_viewer_is_served_relocated_to_viewer_with_its_own_policy(viewer_web: WebApp) -> None:
    client = viewer_web.logged_in("alice")
    page = client.get(viewer_link(viewer_web.drafted.study_uid))  # no such file: the single-page app
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'window.PUBLIC_URL="/viewer/"' in page.text
    assert 'src="/viewer/app-config.js"' in page.text and 'href="/viewer/app.bundle.css"' in page.text
    assert client.get("/viewer/").text == page.text == client.get("/viewer/index.html").text
    assert client.get("/viewer", allow_redirects=False).headers["location"] == "/viewer/"

    policies = page.raw.headers.getlist("content-security-policy")
    assert len(policies) == 1, policies  # the worklist's would be enforced beside it, and block the viewer
    policy = policies[0]
    relocated_script = INLINE.replace('="/"', '="/viewer/"').encode()
    digest = base64.b64encode(hashlib.sha256(relocated_script).digest()).decode()
    assert policy.startswith(f"default-src 'self'; script-src 'self' 'sha256-{digest}' 'unsafe-eval';")
    assert "worker-src 'self';" in policy and "img-src 'self' data:;" in policy  # no blob:, no inline script
    assert "frame-ancestors 'none'" in policy and "connect-src 'self'" in policy
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"

    bundle = client.get("/viewer/app.bundle.js")
    assert '__webpack_require__.p = "/viewer/";' in bundle.text
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert client.get("/viewer/app.bundle.css").text == "@font-face{src:url(/viewer/a34f.woff2) format(woff2)}"
    assert client.get("/viewer/worker.bundle.js").text == "self.onmessage = () => {};\n"  # served as it lies
    wasm = client.get("/viewer/codec.wasm")
    assert wasm.headers["content-type"] == "application/wasm" and wasm.content == b"\0asm\1\0\0\0"
    assert client.get("/viewer/assets/favicon.ico").status_code == 200
    assert client.get("/viewer/no-such-chunk.js").status_code == 404  # a missing file is never the app instead


def test_app_config_points_at_predrafts_own_dicomweb_and_holds_no_credentials(viewer_web: WebApp) -> None:
    client = viewer_web.logged_in("alice")
    config = client.get("/viewer/app-config.js")
    assert config.status_code == 200 and config.headers["cache-control"] == "no-store"
    text = config.text
    assert "fromTheDist" not in text  # predraft's, not the dist's own
    assert 'window.location.origin + "/dicomweb"' in text and 'routerBasename: "/viewer"' in text
    for setting in ("qidoRoot: root", "wadoRoot: root", "imageRendering: 'wadors'", "thumbnailRendering: 'wadors'"):
        assert setting in text
    assert "investigationalUseDialog: { option: 'never' }" in text and "'ohif.tours': { $set: [] }" in text
    for secret in ("Authorization", "Bearer", "Basic", "password", "token", "oidc"):
        assert secret.lower() not in text.lower(), secret


def test_dist_files_are_found_only_inside_the_folder(dist: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("not the viewer's")
    (dist / ".env").write_text("hidden")
    files = ViewerFiles(dist)
    assert files.find("app.bundle.js") == dist.resolve() / "app.bundle.js"
    assert files.find("assets/favicon.ico") == dist.resolve() / "assets" / "favicon.ico"
    for path in ("../secret.txt", "assets/../../secret.txt", ".env", "assets", "", "a\\..\\secret.txt"):
        assert files.find(path) is None, path
    with pytest.raises(ValueError, match="holds no index.html"):
        ViewerFiles(tmp_path)
    with pytest.raises(TypeError, match="must be a Path, not str"):
        ViewerFiles(str(dist))  # type: ignore[arg-type]


def test_relocation_leaves_other_urls_alone() -> None:
    html = b'<a href="//cdn.example/x"></a><img src="/a.png"><script>window.PUBLIC_URL="/"</script>'
    assert relocate("index.html", html) == (
        b'<a href="//cdn.example/x"></a><img src="/viewer/a.png"><script>window.PUBLIC_URL="/viewer/"</script>'
    )
    assert relocate("x.js", b'var u = "/a.png"; __webpack_require__.p = "/";') == (
        b'var u = "/a.png"; __webpack_require__.p = "/viewer/";'
    )
    assert relocate("manifest.json", b'{"src": "/assets/a.png"}') == b'{"src": "/viewer/assets/a.png"}'
    assert relocate("data.json", b'{"src": "/assets/a.png"}') == b'{"src": "/assets/a.png"}'


def test_the_study_page_links_to_the_viewer_only_when_one_is_configured(
    viewer_web: WebApp, demo_study, tiny_card_path, tmp_path
) -> None:
    from predraft.core.db import upgrade

    uid = viewer_web.drafted.study_uid
    page = viewer_web.logged_in("alice").get(f"/studies/{uid}").text
    assert f'id="open-in-viewer" href="/viewer/viewer?StudyInstanceUIDs={uid}"' in page and "Open in viewer" in page
    (tmp_path / "plain").mkdir()
    plain_url = f"sqlite:///{tmp_path / 'plain' / 'db.sqlite'}"
    upgrade(plain_url)
    with drafted_web_app(tmp_path / "plain", plain_url, [image.path for image in demo_study], tiny_card_path) as web:
        client = web.logged_in("bob")
        assert "open-in-viewer" not in client.get(f"/studies/{uid}").text
        assert client.get("/viewer/viewer", headers={"Accept": "*/*"}).status_code == 404


def test_viewer_dir_must_hold_the_viewers_index(clean_settings_env, tmp_path: Path, dist: Path) -> None:
    assert get_settings(viewer_dir=dist).worklist.viewer_dir == dist
    assert get_settings().worklist.viewer_dir is None
    with pytest.raises(ValidationError, match=r"viewer_dir .*empty holds no index.html"):
        (tmp_path / "empty").mkdir()
        get_settings(viewer_dir=tmp_path / "empty")


# --- DICOMweb reads with the worklist's session ---------------------------------------------------------------------


def test_dicomweb_reads_accept_a_worklist_session_and_writes_do_not(viewer_web: WebApp) -> None:
    uid = viewer_web.drafted.study_uid
    anonymous = viewer_web.client()
    assert anonymous.get("/dicomweb/studies", headers=DICOM_JSON).status_code == 401

    client = viewer_web.logged_in("alice")  # no DICOMweb token or user is configured at all
    studies = client.get("/dicomweb/studies", headers=DICOM_JSON)
    assert studies.status_code == 200, studies.text
    assert [study["0020000D"]["Value"] for study in studies.json()] == [[uid]]
    metadata = client.get(f"/dicomweb/studies/{uid}/metadata", headers=DICOM_JSON)
    assert metadata.status_code == 200 and metadata.json()

    # STOW-RS needs a token or basic auth whatever session comes with it (no CSRF token protects it either).
    stow = client.http.post(
        client.url + "/dicomweb/studies",
        data=b"--x--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        timeout=30,
    )
    assert stow.status_code == 401
    # A read that sends an Authorization header is judged by it alone.
    wrong = client.get("/dicomweb/studies", headers={**DICOM_JSON, "Authorization": "Bearer wrong"})
    assert wrong.status_code == 401

    admin = viewer_web.logged_in("root", role="admin")  # any role that may see the worklist may read
    assert admin.get("/dicomweb/studies", headers=DICOM_JSON).status_code == 200


def test_dicomweb_refuses_an_expired_session_and_a_disabled_user(viewer_web: WebApp) -> None:
    alice, bob = viewer_web.logged_in("alice"), viewer_web.logged_in("bob")
    with session_scope(viewer_web.settings.database_url) as session:
        alice_id = session.query(User.id).filter_by(username="alice").scalar()
        session.execute(
            update(WebSession).where(WebSession.user_id == alice_id).values(expires_at=utcnow() - timedelta(minutes=1))
        )
        session.execute(update(User).where(User.username == "bob").values(active=False))
    assert alice.get("/dicomweb/studies", headers=DICOM_JSON).status_code == 401
    assert bob.get("/dicomweb/studies", headers=DICOM_JSON).status_code == 401


def test_dicomweb_tokens_still_work_beside_sessions(
    clean_settings_env, sqlite_url, demo_study, tiny_card_path, tmp_path, dist
) -> None:
    paths = [image.path for image in demo_study]
    with drafted_web_app(tmp_path, sqlite_url, paths, tiny_card_path, dicomweb_tokens=["t" * 32]) as web:
        client = web.client()
        assert client.get("/dicomweb/studies", headers={**DICOM_JSON, "Authorization": "Bearer " + "t" * 32}).ok
        assert client.get("/dicomweb/studies", headers=DICOM_JSON).status_code == 401


# --- predraft viewer install ----------------------------------------------------------------------------------------

FAKE_NPM = """#!/bin/sh
echo "$@" >> "$FAKE_NPM_LOG"
if [ -n "$FAKE_NPM_FAIL" ]; then echo "npm error code EINTEGRITY" >&2; exit 1; fi
mkdir -p node_modules/@ohif/app/dist
echo '{"name": "@ohif/app", "version": "3.13.2"}' > node_modules/@ohif/app/package.json
echo '<html></html>' > node_modules/@ohif/app/dist/index.html
"""


@pytest.fixture
def fake_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An ``npm`` first on PATH that records its arguments and lays out what ``npm ci`` would."""
    folder = tmp_path / "bin"
    folder.mkdir()
    npm = folder / "npm"
    npm.write_text(FAKE_NPM)
    npm.chmod(npm.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "npm.log"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_NPM_LOG", str(log))
    return log


def test_the_pin_is_one_exact_version_with_its_sha512() -> None:
    package = json.loads((DEFAULT_PIN / "package.json").read_text())
    lock = json.loads((DEFAULT_PIN / "package-lock.json").read_text())
    assert package["dependencies"] == {"@ohif/app": "3.13.2"}  # exact: no range
    assert lock["packages"][""]["dependencies"] == package["dependencies"]
    entry = lock["packages"]["node_modules/@ohif/app"]
    assert entry["version"] == "3.13.2" and entry["integrity"].startswith("sha512-")
    assert entry["resolved"] == "https://registry.npmjs.org/@ohif/app/-/app-3.13.2.tgz"
    assert set(lock["packages"]) == {"", "node_modules/@ohif/app"}  # dist/ is self-contained


def test_viewer_install_runs_npm_ci_once_and_prints_the_setting(
    clean_settings_env, fake_npm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ohif"
    assert main(["viewer", "install", "--dir", str(folder)]) == 0
    assert fake_npm.read_text().split() == list(NPM_CI)
    assert (folder / "package-lock.json").read_bytes() == (DEFAULT_PIN / "package-lock.json").read_bytes()
    dist = folder / "node_modules" / "@ohif" / "app" / "dist"
    assert f"PREDRAFT_VIEWER_DIR={dist}" in capsys.readouterr().out

    assert main(["viewer", "install", "--dir", str(folder)]) == 0  # the same lock installed: npm is not run again
    assert len(fake_npm.read_text().splitlines()) == 1
    assert "installed already" in capsys.readouterr().out
    assert main(["viewer", "install", "--dir", str(folder), "--force"]) == 0
    assert len(fake_npm.read_text().splitlines()) == 2


def test_viewer_install_fails_clearly_without_npm_or_when_npm_does(
    clean_settings_env, fake_npm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("FAKE_NPM_FAIL", "1")
    assert main(["viewer", "install", "--dir", str(tmp_path / "ohif")]) == 1
    err = capsys.readouterr().err
    assert "npm ci exited 1" in err and "npm error code EINTEGRITY" in err
    assert not (tmp_path / "ohif" / "package-lock.json").exists()  # never taken for a finished install

    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert main(["viewer", "install", "--dir", str(tmp_path / "ohif")]) == 1
    assert "npm is not on PATH" in capsys.readouterr().err

    pin = tmp_path / "pin"
    pin.mkdir()
    lock = json.loads((DEFAULT_PIN / "package-lock.json").read_text())
    del lock["packages"]["node_modules/@ohif/app"]["integrity"]
    (pin / "package-lock.json").write_text(json.dumps(lock))
    (pin / "package.json").write_text((DEFAULT_PIN / "package.json").read_text())
    assert main(["viewer", "install", "--dir", str(tmp_path / "ohif"), "--pin", str(pin)]) == 1
    assert "has no sha512 integrity for @ohif/app 3.13.2" in capsys.readouterr().err
