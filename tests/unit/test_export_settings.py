"""Export destinations in the settings: validated in their constructors, from JSON and from the TOML file."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from predraft.core.settings import DimseDestination, StowDestination, get_settings

DIMSE = {"kind": "dimse", "name": "pacs", "ae_title": "PACS", "host": "pacs.example.org", "port": 104}
STOW = {
    "kind": "stow",
    "name": "vna",
    "url": "https://vna.example.org/dicom-web/",
    "auth": "bearer",
    "token": "s3cret-token",
}


def test_no_destinations_by_default(clean_settings_env):
    assert get_settings().export.destinations == []
    assert get_settings().export.max_retries == 8


def test_destinations_from_the_environment_as_json(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_EXPORT_DESTINATIONS", json.dumps([DIMSE, STOW]))
    monkeypatch.setenv("PREDRAFT_AE_TITLE", "PREDRAFT_TEST")
    settings = get_settings()
    pacs, vna = settings.export.destinations
    assert isinstance(pacs, DimseDestination) and isinstance(vna, StowDestination)
    assert (pacs.ae_title, pacs.host, pacs.port, pacs.calling_ae) == ("PACS", "pacs.example.org", 104, "PREDRAFT_TEST")
    assert vna.url == "https://vna.example.org/dicom-web"  # the trailing slash is dropped: <url>/studies
    assert settings.export.destination("vna") is vna
    with pytest.raises(KeyError, match=r"no export destination 'nope' \(configured: pacs, vna\)"):
        settings.export.destination("nope")


def test_secrets_are_hidden_when_settings_are_printed(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_EXPORT_DESTINATIONS", json.dumps([STOW]))
    settings = get_settings()
    assert "s3cret-token" not in json.dumps(settings.redacted())
    assert "s3cret-token" not in repr(settings)
    assert settings.export.destinations[0].token.get_secret_value() == "s3cret-token"


def test_destinations_from_the_toml_file(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text(
        "[[export_destinations]]\n"
        'kind = "dimse"\nname = "pacs"\nae_title = "PACS"\nhost = "10.1.2.3"\nport = 11112\n'
        'calling_ae = "PREDRAFT_OUT"\ntls = true\ntls_ca = "ca.pem"\n'
        "[[export_destinations]]\n"
        'kind = "stow"\nname = "orthanc"\nurl = "http://orthanc:8042/dicom-web"\nauth = "basic"\n'
        'username = "predraft"\npassword = "pw"\ntimeout = 5\n'
    )
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    pacs, orthanc = get_settings().export.destinations
    assert (pacs.calling_ae, pacs.tls, pacs.tls_ca) == ("PREDRAFT_OUT", True, clean_settings_env / "ca.pem")
    assert (orthanc.auth, orthanc.username, orthanc.password.get_secret_value(), orthanc.timeout) == (
        "basic",
        "predraft",
        "pw",
        5.0,
    )


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"name": "no spaces"}, "destination name 'no spaces' is not"),
        ({"ae_title": "A" * 17}, "ae_title\n  Value error, 'AAAAAAAAAAAAAAAAA' is not a DICOM AE title"),
        ({"calling_ae": "BACK\\SLASH"}, "calling_ae\n  Value error, 'BACK\\\\\\\\SLASH' is not a DICOM AE title"),
        ({"port": 0}, "greater than or equal to 1"),
        ({"tls_ca": "ca.pem"}, "tls_ca set but tls is false"),
        ({"tls": True, "tls_certificate": "client.pem"}, "tls_certificate and tls_private_key must be set together"),
        ({"timeout": 0}, "greater than 0"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_dimse_destination_refuses_bad_values(changes, match):
    with pytest.raises(ValidationError, match=match):
        DimseDestination(**{**DIMSE, **changes})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"url": "ftp://vna/dicom-web"}, "is not an http:// or https:// URL"),
        ({"url": "https://user:pw@vna/dicom-web"}, "url holds credentials"),
        ({"url": "https://vna/dicom-web?x=1"}, "has a query or fragment"),
        ({"token": None}, "auth 'bearer' needs token"),
        ({"auth": "basic", "token": None, "username": "u"}, "auth 'basic' needs password"),
        ({"auth": "none"}, "token given, but auth is 'none'"),
        ({"auth": "digest"}, "Input should be 'none', 'basic' or 'bearer'"),
        ({"url": "http://vna/dicom-web", "ca_bundle": "ca.pem"}, "ca_bundle needs an https:// url"),
    ],
)
def test_stow_destination_refuses_bad_values(changes, match):
    with pytest.raises(ValidationError, match=match):
        StowDestination(**{**STOW, **changes})


def test_destination_names_are_unique(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_EXPORT_DESTINATIONS", json.dumps([DIMSE, {**STOW, "name": "pacs"}]))
    with pytest.raises(ValidationError, match=r"names \['pacs'\] more than once"):
        get_settings()


def test_a_destination_needs_a_known_kind(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_EXPORT_DESTINATIONS", json.dumps([{**DIMSE, "kind": "ftp"}]))
    with pytest.raises(ValidationError, match="'dimse', 'stow'"):
        get_settings()
