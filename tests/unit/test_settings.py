"""predraft.core.settings: defaults, environment, TOML file, validation and URL redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from predraft.core.settings import get_settings, redact_url
from predraft.models.card import DEMO_MODEL_CARD


def test_defaults_put_everything_under_var_dir(clean_settings_env):
    settings = get_settings()
    var = Path.cwd() / "var"
    assert settings.var_dir == var
    assert settings.var_dir.is_absolute()
    assert settings.database_url == f"sqlite:///{var / 'predraft.sqlite'}"
    assert settings.broker_url == f"sqla+sqlite:///{var / 'broker.sqlite'}"
    assert settings.spool_dir == var / "spool"
    assert (settings.listener.host, settings.listener.port, settings.listener.ae_title) == (
        "127.0.0.1",
        11112,
        "PREDRAFT",
    )
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8080)
    assert settings.listener.allowed_calling_aes == []
    assert settings.model.card_path == DEMO_MODEL_CARD and DEMO_MODEL_CARD.is_file()


def test_environment_overrides_defaults(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_VAR_DIR", "site-var")
    monkeypatch.setenv("PREDRAFT_DATABASE_URL", "postgresql+psycopg://predraft:pw@db:5432/predraft")
    monkeypatch.setenv("PREDRAFT_DIMSE_PORT", "2104")
    monkeypatch.setenv("PREDRAFT_AE_TITLE", "SITE_AE")
    monkeypatch.setenv("PREDRAFT_HTTP_HOST", "::1")
    monkeypatch.setenv("PREDRAFT_HTTP_PORT", "9090")
    monkeypatch.setenv("PREDRAFT_ALLOWED_CALLING_AES", '["PACS_AE", "MODALITY"]')
    monkeypatch.setenv("PREDRAFT_MODEL", "cards/model.json")

    settings = get_settings()

    assert settings.var_dir == Path.cwd() / "site-var"
    assert settings.database_url == "postgresql+psycopg://predraft:pw@db:5432/predraft"
    assert settings.spool_dir == Path.cwd() / "site-var" / "spool"
    assert settings.listener.port == 2104
    assert settings.listener.ae_title == "SITE_AE"
    assert (settings.http.host, settings.http.port) == ("::1", 9090)
    assert settings.listener.allowed_calling_aes == ["PACS_AE", "MODALITY"]
    assert settings.model.card == Path.cwd() / "cards" / "model.json"  # the hip pack's card from now on


def test_toml_file_is_read_and_environment_beats_it(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text(
        'ae_title = "TOML_AE"\n'
        "dimse_port = 4242\n"
        "http_port = 8181\n"
        'spool_dir = "toml-spool"\n'
        'allowed_calling_aes = ["PACS"]\n'
    )
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    monkeypatch.setenv("PREDRAFT_HTTP_PORT", "9999")

    settings = get_settings()

    assert settings.listener.ae_title == "TOML_AE"
    assert settings.listener.port == 4242
    assert settings.spool_dir == Path.cwd() / "toml-spool"
    assert settings.listener.allowed_calling_aes == ["PACS"]
    assert settings.http.port == 9999  # the environment wins over the file


def test_toml_file_with_an_unknown_key_is_refused(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text("dimse_prot = 4242\n")  # a typo must not pass silently
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    with pytest.raises(ValueError, match="dimse_prot"):
        get_settings()


def test_missing_config_file_raises_file_not_found(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_CONFIG", str(clean_settings_env / "nowhere.toml"))
    with pytest.raises(FileNotFoundError, match="PREDRAFT_CONFIG"):
        get_settings()


@pytest.mark.parametrize("title", ["", "   ", "A" * 17, "BACK\\SLASH", "TAB\tAE", "NEWLINE\nAE"])
def test_invalid_ae_title_is_rejected(clean_settings_env, title):
    with pytest.raises(ValueError, match="not a DICOM AE title"):
        get_settings(ae_title=title)


def test_ae_title_is_stripped_and_sixteen_characters_are_allowed(clean_settings_env):
    assert get_settings(ae_title=" PACS ").listener.ae_title == "PACS"
    assert get_settings(ae_title="A" * 16).listener.ae_title == "A" * 16


def test_invalid_allowed_calling_ae_is_rejected(clean_settings_env):
    with pytest.raises(ValueError, match=r"allowed_calling_aes\.1\n  Value error, 'BAD.*' is not a DICOM AE title"):
        get_settings(allowed_calling_aes=["GOOD", "BAD\\AE"])
    assert get_settings(allowed_calling_aes=[" PACS "]).listener.allowed_calling_aes == [
        "PACS"
    ]  # stripped, as ae_title


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "pacs-gateway.example.org", "::"])
def test_non_loopback_dimse_host_needs_allowed_calling_aes(clean_settings_env, host):
    with pytest.raises(ValueError, match="not a loopback address"):
        get_settings(dimse_host=host)
    assert get_settings(dimse_host=host, allowed_calling_aes=["PACS_AE"]).listener.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_dimse_host_allows_any_caller(clean_settings_env, host):
    assert get_settings(dimse_host=host).listener.allowed_calling_aes == []


def test_non_loopback_host_from_environment_is_refused(clean_settings_env, monkeypatch):
    monkeypatch.setenv("PREDRAFT_DIMSE_HOST", "0.0.0.0")
    with pytest.raises(ValueError, match="PREDRAFT_ALLOWED_CALLING_AES"):
        get_settings()


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("device", "gpu", "device"),
        ("worker_pool", "eventlet", "worker_pool"),
        ("dimse_port", 70000, "dimse_port"),
        ("quiet_seconds", 0, "quiet_seconds"),
        ("log_format", "xml", "log_format"),
        ("listener_metrics_port", -1, "listener_metrics_port"),
        ("worker_metrics_port", 70000, "worker_metrics_port"),
    ],
)
def test_other_fields_are_validated(clean_settings_env, field, value, match):
    with pytest.raises(ValueError, match=match):
        get_settings(**{field: value})


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql+psycopg://predraft:s3cret@db:5432/predraft", "postgresql+psycopg://predraft:***@db:5432/predraft"),
        ("redis://:s3cret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("postgresql://predraft@db:5432/predraft", "postgresql://predraft@db:5432/predraft"),
        ("sqlite:////var/lib/predraft/predraft.sqlite", "sqlite:////var/lib/predraft/predraft.sqlite"),
        (None, None),
    ],
)
def test_redact_url_masks_only_passwords(url, expected):
    assert redact_url(url) == expected


def test_redacted_settings_hide_database_and_broker_passwords(clean_settings_env):
    settings = get_settings(
        database_url="postgresql+psycopg://predraft:dbpass@db/predraft", broker_url="redis://:brokerpass@cache:6379/0"
    )
    dumped = repr(settings.redacted())
    assert "dbpass" not in dumped and "brokerpass" not in dumped
    assert settings.redacted()["database_url"] == "postgresql+psycopg://predraft:***@db/predraft"
    assert settings.redacted()["broker_url"] == "redis://:***@cache:6379/0"
    assert settings.database_url.endswith("dbpass@db/predraft")  # the settings themselves keep it
