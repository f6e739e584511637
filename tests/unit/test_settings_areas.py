"""predraft.core.settings areas: every flat PREDRAFT_* name, TOML key and keyword still reaches its value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from predraft.core.settings import (
    AREAS,
    FLAT_FIELDS,
    Settings,
    environment_variable,
    field_info,
    get_settings,
    nest,
)
from predraft.models.taxonomy import View

#: The settings' flat names before they were grouped into areas, written out by hand: a name dropped from
#: FLAT_FIELDS would silently stop a site's PREDRAFT_* variable from working.
FLAT_NAMES_BEFORE_AREAS = [
    "var_dir",
    "database_url",
    "broker_url",
    "spool_dir",
    "dimse_host",
    "dimse_port",
    "ae_title",
    "allowed_calling_aes",
    "allowed_addresses",
    "dimse_max_pdu",
    "dimse_max_associations",
    "dimse_max_connections_per_address",
    "dimse_association_request_timeout_seconds",
    "dimse_idle_timeout_seconds",
    "tls_certificate",
    "tls_private_key",
    "tls_client_ca",
    "max_dataset_bytes",
    "max_sequence_depth",
    "decode_timeout_seconds",
    "decode_memory_bytes",
    "spool_min_free_bytes",
    "http_host",
    "http_port",
    "dicomweb_tokens",
    "dicomweb_users",
    "dicomweb_max_upload_bytes",
    "session_secret",
    "cookie_secure",
    "session_lifetime_minutes",
    "login_failures_per_user",
    "login_failures_per_address",
    "login_failure_window_seconds",
    "verifying_organization",
    "quiet_seconds",
    "expected_views",
    "stability_poll_seconds",
    "sweep_interval_seconds",
    "sweep_stale_seconds",
    "model",
    "gate_model",
    "device",
    "voi_window_index",
    "classify_batch_size",
    "classify_batch_wait_ms",
    "torch_compile",
    "template_dir",
    "aggregation_view_weights",
    "aggregation_disagreement_margin",
    "aggregation_hard_pair_margin",
    "export_destinations",
    "export_max_retries",
    "export_retry_delay_seconds",
    "export_retry_max_delay_seconds",
    "worker_concurrency",
    "worker_pool",
    "log_level",
    "log_format",
    "metrics_host",
    "listener_metrics_port",
    "worker_metrics_port",
]
#: Flat names added since, each with its own PREDRAFT_* variable.
FLAT_NAMES_ADDED = [
    "packs_dir",
    "ai_results_sr",
    "retention_images_days",
    "retention_srs_days",
    "retention_interval_seconds",
    "viewer_dir",
    "dimse_processes",
    "require_called_ae_title",
]

TLS_FILES = ("tls_certificate", "tls_private_key")


def example_value(name: str, folder: Path) -> tuple[str, Any]:
    """A valid value other than the default for the setting ``name``: as its environment variable spells it,
    and as the settings hold it."""
    special: dict[str, tuple[str, Any]] = {
        "var_dir": ("site-var", Path.cwd() / "site-var"),
        "database_url": ("postgresql+psycopg://predraft@db/predraft",) * 2,
        "broker_url": ("redis://cache:6379/0",) * 2,
        "spool_dir": ("site-spool", Path.cwd() / "site-spool"),
        "dimse_host": ("::1",) * 2,
        "ae_title": ("SITE_AE",) * 2,
        "allowed_calling_aes": ('["PACS_AE"]', ["PACS_AE"]),
        "require_called_ae_title": ("true", True),
        "allowed_addresses": ('["10.1.2.0/24"]', ["10.1.2.0/24"]),
        "tls_certificate": (str(folder / "server.pem"), folder / "server.pem"),
        "tls_private_key": (str(folder / "server.key"), folder / "server.key"),
        "tls_client_ca": (str(folder / "ca.pem"), folder / "ca.pem"),
        "http_host": ("::1",) * 2,
        "dicomweb_tokens": ('["t0ken"]', [SecretStr("t0ken")]),
        "dicomweb_users": ('{"pacs": "pw"}', {"pacs": SecretStr("pw")}),
        "session_secret": ("s" * 32, SecretStr("s" * 32)),
        "cookie_secure": ("false", False),
        "ai_results_sr": ("false", False),
        "verifying_organization": ("Example Hospital",) * 2,
        "expected_views": ('[{"pattern": "^HIP$", "views": 2}]', [{"pattern": "^HIP$", "views": 2, "minimum": False}]),
        "model": ("cards/model.json", Path.cwd() / "cards" / "model.json"),
        "gate_model": ("/cards/gate.json", Path("/cards/gate.json")),
        "device": ("cuda:1",) * 2,
        "torch_compile": ("true", True),
        "template_dir": (str(folder), folder),
        "aggregation_view_weights": ('{"ap_hip": 2.0}', {View.AP_HIP: 2.0}),
        "aggregation_disagreement_margin": ("0.3", 0.3),
        "aggregation_hard_pair_margin": ("0.1", 0.1),
        "packs_dir": (str(folder), folder),
        "viewer_dir": (str(folder), folder),  # site_files holds an index.html, as a viewer's dist/ does
        "retention_images_days": ("90", 90.0),
        "retention_srs_days": ("3650.5", 3650.5),
        "export_destinations": (
            '[{"kind": "dimse", "name": "pacs", "ae_title": "PACS", "host": "pacs", "port": 104}]',
            [{"name": "pacs", "calling_ae": "PREDRAFT"}],
        ),
        "worker_pool": ("solo",) * 2,
        "log_level": ("DEBUG",) * 2,
        "log_format": ("json",) * 2,
        "metrics_host": ("0.0.0.0",) * 2,
    }
    if name in special:
        return special[name]
    default = field_info(name).get_default()
    assert isinstance(default, int | float) and not isinstance(default, bool), name
    changed = default / 2 if name.startswith("aggregation_") else default + 1  # margins stay below 1
    return str(changed), changed


def held(settings: Settings, name: str) -> Any:
    """The value of the setting ``name`` where its area keeps it."""
    value: Any = settings
    for part in FLAT_FIELDS[name]:
        value = getattr(value, part)
    return value


def assert_holds(settings: Settings, name: str, expected: Any) -> None:
    """The setting ``name`` holds ``expected`` (SecretStr compares by its secret; models by some of their fields)."""
    value = held(settings, name)
    if name == "export_destinations":
        value = [{"name": d.name, "calling_ae": d.calling_ae} for d in value]
    elif name == "expected_views":
        value = [rule.model_dump() for rule in value]
    assert value == expected


def test_flat_names_are_the_names_from_before_the_areas():
    assert sorted(FLAT_FIELDS) == sorted(FLAT_NAMES_BEFORE_AREAS + FLAT_NAMES_ADDED)


def test_every_area_field_has_exactly_one_flat_name():
    places = set(FLAT_FIELDS.values())
    assert len(places) == len(FLAT_FIELDS)
    declared = {(name,) for name in Settings.model_fields if name not in AREAS} | {
        (area, field) for area, model in AREAS.items() for field in model.model_fields
    }
    assert places == declared


@pytest.fixture
def site_files(tmp_path: Path) -> Path:
    for name in ("server.pem", "server.key", "ca.pem", "index.html"):
        (tmp_path / name).write_text("not read by the settings\n")
    return tmp_path


def companions(name: str, folder: Path) -> dict[str, str]:
    """Other settings (flat name: text) that ``name`` needs to validate: the TLS files come together, and a
    client CA needs them."""
    if name in (*TLS_FILES, "tls_client_ca"):
        return {n: example_value(n, folder)[0] for n in TLS_FILES}
    return {}


@pytest.mark.parametrize("name", FLAT_NAMES_BEFORE_AREAS + FLAT_NAMES_ADDED)
def test_every_flat_environment_variable_still_sets_its_value(clean_settings_env, monkeypatch, site_files, name):
    text, expected = example_value(name, site_files)
    for other, value in {**companions(name, site_files), name: text}.items():
        monkeypatch.setenv(environment_variable(other), value)
    assert_holds(get_settings(), name, expected)


@pytest.mark.parametrize("name", FLAT_NAMES_BEFORE_AREAS + FLAT_NAMES_ADDED)
def test_every_flat_keyword_still_sets_its_value(clean_settings_env, site_files, name):
    text, expected = example_value(name, site_files)
    value: Any = json.loads(text) if text[:1] in "[{" else text
    assert_holds(get_settings(**{**companions(name, site_files), name: value}), name, expected)


def test_flat_toml_keys_set_values_in_their_areas_and_the_environment_wins(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text(
        'ae_title = "TOML_AE"\n'
        "dimse_port = 4242\n"
        "worker_concurrency = 7\n"
        "export_max_retries = 3\n"
        'model = "cards/model.json"\n'
        'dicomweb_tokens = ["t0ken"]\n'
        "[[export_destinations]]\n"
        'kind = "stow"\nname = "orthanc"\nurl = "http://orthanc:8042/dicom-web"\n'
    )
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    monkeypatch.setenv("PREDRAFT_DIMSE_PORT", "2104")

    settings = get_settings()

    assert settings.listener.ae_title == "TOML_AE"
    assert settings.listener.port == 2104  # the environment wins over the file
    assert settings.workers.concurrency == 7
    assert settings.export.max_retries == 3
    assert [d.name for d in settings.export.destinations] == ["orthanc"]
    assert settings.model.card == Path.cwd() / "cards" / "model.json"
    assert [t.get_secret_value() for t in settings.dicomweb.tokens] == ["t0ken"]


def test_toml_area_tables_work_too_and_flat_names_beat_them_by_source(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text('[listener]\nae_title = "TABLE_AE"\nport = 4242\n\n[workers]\nquiet_seconds = 3\n')
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    monkeypatch.setenv("PREDRAFT_DIMSE_PORT", "2104")

    settings = get_settings()

    assert (settings.listener.ae_title, settings.listener.port) == ("TABLE_AE", 2104)
    assert settings.workers.quiet_seconds == 3


def test_an_unknown_key_in_an_area_table_is_refused(clean_settings_env, monkeypatch):
    config = clean_settings_env / "predraft.toml"
    config.write_text("[listener]\nprot = 4242\n")
    monkeypatch.setenv("PREDRAFT_CONFIG", str(config))
    with pytest.raises(ValueError, match=r"listener\.prot\n  Extra inputs are not permitted"):
        get_settings()


@pytest.mark.parametrize(
    "variable, text, match",
    [
        ("PREDRAFT_DIMSE_PORT", "70000", r"for Settings\ndimse_port\n  Input should be less than or equal to 65535"),
        (
            "PREDRAFT_WORKER_POOL",
            "eventlet",
            r"for Settings\nworker_pool\n  Input should be 'threads', 'prefork' or 'solo'",
        ),
        ("PREDRAFT_QUIET_SECONDS", "soon", r"for Settings\nquiet_seconds\n  Input should be a valid number"),
        (
            "PREDRAFT_DEVICE",
            "gpu",
            r"for Settings\ndevice\n  Value error, device 'gpu' is not one of cpu, cuda, cuda:N",
        ),
        ("PREDRAFT_AE_TITLE", "BACK\\SLASH", r"for Settings\nae_title\n  Value error, .* is not a DICOM AE title"),
        (
            "PREDRAFT_EXPORT_MAX_RETRIES",
            "-1",
            r"for Settings\nexport_max_retries\n  Input should be greater than or equal to 0",
        ),
        ("PREDRAFT_EXPECTED_VIEWS", '[{"pattern": "("}]', r"for Settings\nexpected_views\.0\.pattern\n  Value error"),
    ],
)
def test_a_bad_value_is_reported_under_its_flat_name(clean_settings_env, monkeypatch, variable, text, match):
    monkeypatch.setenv(variable, text)
    with pytest.raises(ValueError, match=match) as raised:
        get_settings()
    assert str(raised.value).startswith("1 validation error for Settings\n")
    assert variable == environment_variable(str(raised.value).splitlines()[1].split(".")[0])


def test_nest_moves_flat_names_and_passes_anything_else_through():
    assert nest({"ae_title": "X", "database_url": "u", "listener": {"port": 1}, "typo": 2}) == {
        "listener": {"port": 1, "ae_title": "X"},
        "database_url": "u",
        "typo": 2,
    }


def test_redacted_settings_show_areas_and_hide_secrets(clean_settings_env):
    settings = get_settings(
        database_url="postgresql+psycopg://predraft:dbpass@db/predraft",
        dicomweb_tokens=["t0ken"],
        dicomweb_users={"pacs": "userpass"},
        session_secret="s3cret" * 6,
    )
    dumped = settings.redacted()
    assert set(AREAS) <= set(dumped)
    assert dumped["listener"]["ae_title"] == "PREDRAFT"
    text = json.dumps(dumped)
    assert [secret for secret in ("dbpass", "t0ken", "userpass", "s3cret") if secret in text] == []
