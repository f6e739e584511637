"""The deployment files of deploy/: compose.yaml, the Dockerfiles, .env.example, prometheus.yml, systemd units.

No Docker engine and no systemd as PID 1 are needed: ``docker-compose config`` (Debian's docker-compose 1.29)
validates and resolves the compose file, and ``systemd-analyze verify`` / ``security --offline`` check the
units. scripts/test.sh installs both tools; a test skips only when its tool is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values

from predraft.core.settings import CONFIG_ENV_VAR, FLAT_FIELDS, Settings, environment_variable, field_info
from predraft.workers.names import QUEUES
from tests.conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
ENV_EXAMPLE = DEPLOY / ".env.example"
SYSTEMD = DEPLOY / "systemd"
UNIT_VENV_PREDRAFT = "/opt/predraft/.venv/bin/predraft"
PREDRAFT_SERVICES = {"migrate", "listener", "web", "worker-cpu", "worker-gpu"}
LONG_RUNNING = {"redis", "postgres", "listener", "web", "worker-cpu", "worker-gpu", "prometheus"}
SETTING_LINE = re.compile(r"^(#\s*)?(PREDRAFT_[A-Z0-9_]+)=(.*)$")


def settings_from_environment(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built as a predraft process builds them: from exactly these environment variables."""
    for key in list(os.environ):
        if key.startswith("PREDRAFT_"):
            monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith("PREDRAFT_"):
            monkeypatch.setenv(key, value)
    return Settings()


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so that PREDRAFT_* or compose variables of the caller change nothing."""
    env = {key: os.environ[key] for key in ("PATH", "HOME", "LANG", "LC_ALL") if key in os.environ}
    return {**env, **extra}


# --- .env.example ---------------------------------------------------------------------------------------------------


def example_lines() -> list[str]:
    return ENV_EXAMPLE.read_text().splitlines()


def test_env_example_names_every_setting_with_a_comment() -> None:
    lines = example_lines()
    named: dict[str, int] = {}
    for number, line in enumerate(lines):
        match = SETTING_LINE.match(line)
        if match:
            named.setdefault(match.group(2), number)
    missing = [environment_variable(name) for name in FLAT_FIELDS if environment_variable(name) not in named]
    assert missing == [], "add these settings to deploy/.env.example"
    uncommented = []
    for name in FLAT_FIELDS:
        above = lines[named[environment_variable(name)] - 1]
        if not above.startswith("#") or SETTING_LINE.match(above):
            uncommented.append(name)
    assert uncommented == [], "each setting needs a one-line comment on the line above it"


def test_env_example_names_nothing_that_is_not_a_setting() -> None:
    known = {environment_variable(name) for name in FLAT_FIELDS} | {CONFIG_ENV_VAR}
    names = {match.group(2) for line in example_lines() if (match := SETTING_LINE.match(line))}
    assert names - known == set(), "a misspelt setting would be ignored silently"


def test_env_example_values_read_alike_by_compose_systemd_and_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose reads the file with python-dotenv, systemd's EnvironmentFile= and `set -a; .` like sh: with
    single-quoted JSON, no backslash and no $ they agree, and the settings validate."""
    values = dotenv_values(ENV_EXAMPLE)
    assert all(value is not None for value in values.values())
    risky = {key: value for key, value in values.items() if "\\" in value or "$" in value}
    assert risky == {}
    for line in example_lines():
        key, sep, raw = line.partition("=")
        if line.startswith("#") or not sep:
            continue
        if any(char in raw for char in ' "{}[]'):
            assert raw.startswith("'") and raw.endswith("'") and raw.count("'") == 2, line
    sourced = subprocess.run(
        ["bash", "-c", f"set -a; . {ENV_EXAMPLE}; env -0"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    ).stdout.decode()
    shell = dict(item.split("=", 1) for item in sourced.split("\0") if "=" in item)
    assert {key: shell.get(key) for key in values} == values

    settings = settings_from_environment(values, monkeypatch)
    assert settings.listener.allowed_calling_aes == ["PACS_AE"]
    assert settings.report.aggregation_view_weights == field_info("aggregation_view_weights").default_factory()
    assert settings.worklist.verifying_organization == "Example Hospital Radiology"
    assert settings.export.destinations == []


def test_env_example_holds_placeholders_not_secrets() -> None:
    values = dotenv_values(ENV_EXAMPLE)
    assert values["POSTGRES_PASSWORD"] == values["REDIS_PASSWORD"] == "change-me"
    assert ":change-me@" in values["PREDRAFT_DATABASE_URL"]
    assert ":change-me@" in values["PREDRAFT_BROKER_URL"]
    assert "PREDRAFT_SESSION_SECRET" not in values  # unset: generated into the var dir
    assert values["PREDRAFT_DICOMWEB_TOKENS"] == "[]" and values["PREDRAFT_DICOMWEB_USERS"] == "{}"


# --- compose.yaml -----------------------------------------------------------------------------------------------------


def needs_docker_compose() -> str:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (Debian package docker-compose; scripts/test.sh installs it)")
    return tool


def site_copy(tmp_path: Path, env_text: str | None = None) -> Path:
    """deploy/compose.yaml as a site runs it: in deploy/ beside its .env (made from .env.example). A copy, so
    that no .env is written into the checkout; the build context `..` is then the copy's root."""
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", deploy / "compose.yaml")
    shutil.copy(DEPLOY / "prometheus.yml", deploy / "prometheus.yml")
    (deploy / ".env").write_text(ENV_EXAMPLE.read_text() if env_text is None else env_text)
    return tmp_path


def compose(tool: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "-f", "deploy/compose.yaml", "--env-file", "deploy/.env", *args],
        cwd=root,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_validates(tmp_path: Path) -> None:
    tool = needs_docker_compose()
    result = compose(tool, site_copy(tmp_path), "config", "-q")
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "")


def test_compose_refuses_a_site_file_without_passwords(tmp_path: Path) -> None:
    tool = needs_docker_compose()
    env_text = "\n".join(line for line in example_lines() if not line.startswith("POSTGRES_PASSWORD="))
    result = compose(tool, site_copy(tmp_path, env_text), "config", "-q")
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in deploy/.env" in result.stderr


@pytest.fixture(scope="module")
def compose_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return site_copy(tmp_path_factory.mktemp("compose"))


@pytest.fixture(scope="module")
def resolved(compose_root: Path) -> dict:
    """The compose file as `docker-compose config` resolves it with .env.example as the site's .env."""
    tool = needs_docker_compose()
    result = compose(tool, compose_root, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_services_and_their_commands(resolved: dict, compose_root: Path) -> None:
    services = resolved["services"]
    assert set(services) == LONG_RUNNING | {"migrate"}
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["listener"]["command"] == ["listen"]
    assert services["web"]["command"] == ["web"]
    assert services["worker-cpu"]["command"] == ["worker", "--queues", "prepare,draft,export"]
    assert services["worker-gpu"]["command"] == ["worker", "--queues", "classify", "--concurrency", "32"]
    queues = {queue for name in ("worker-cpu", "worker-gpu") for queue in services[name]["command"][2].split(",")}
    assert queues == set(QUEUES), "every queue needs a worker"
    for name in PREDRAFT_SERVICES:
        build = services[name]["build"]
        assert Path(build["context"]) == compose_root, "the build context is the repository root"
        assert build["dockerfile"] == ("deploy/Dockerfile.gpu" if name == "worker-gpu" else "deploy/Dockerfile")
    assert services["prometheus"]["profiles"] == ["monitoring"]
    # redis-server first: the image's entrypoint then drops root for the user redis
    assert services["redis"]["command"][:2] == ["redis-server", "--appendonly"]


def test_compose_starts_after_the_migration_and_restarts(resolved: dict) -> None:
    services = resolved["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in PREDRAFT_SERVICES - {"migrate"}:
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }, name
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name


def test_compose_health_checks_probe_the_ports_the_services_use(resolved: dict) -> None:
    services = resolved["services"]
    for name in LONG_RUNNING:
        assert services[name]["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
    assert "redis-cli ping" in services["redis"]["healthcheck"]["test"][1]
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"][1]
    env = {name: services[name]["environment"] for name in PREDRAFT_SERVICES}
    probes = {
        "listener": f"http://127.0.0.1:{env['listener']['PREDRAFT_LISTENER_METRICS_PORT']}/metrics",
        "web": f"http://127.0.0.1:{env['web']['PREDRAFT_HTTP_PORT']}/readyz",
        "worker-cpu": f"http://127.0.0.1:{env['worker-cpu']['PREDRAFT_WORKER_METRICS_PORT']}/metrics",
        "worker-gpu": f"http://127.0.0.1:{env['worker-gpu']['PREDRAFT_WORKER_METRICS_PORT']}/metrics",
    }
    for name, url in probes.items():
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and f"urlopen('{url}'" in test[3], name
        # the probe must compile: a typo in it would mark a healthy service unhealthy forever
        compile(test[3], f"{name} healthcheck", "exec")
    # published as "address:host port:container port/tcp"
    published = {
        name: {tuple(port.rsplit("/", 1)[0].split(":")[-2:]) for port in services[name].get("ports", [])}
        for name in services
    }
    assert ("11112", env["listener"]["PREDRAFT_DIMSE_PORT"]) in published["listener"]
    assert ("8080", env["web"]["PREDRAFT_HTTP_PORT"]) in published["web"]


def test_compose_gpu_worker_reserves_one_nvidia_gpu(resolved: dict) -> None:
    services = resolved["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["worker-gpu"]["environment"]["PREDRAFT_DEVICE"] == "cuda"
    assert services["worker-cpu"]["environment"]["PREDRAFT_DEVICE"] == "cpu"
    for name in set(services) - {"worker-gpu"}:
        assert "deploy" not in services[name], name


def test_compose_volumes_share_the_spool_and_mount_the_models_read_only(resolved: dict) -> None:
    services = resolved["services"]
    assert set(resolved["volumes"]) == {"spool", "web-state", "redis-data", "postgres-data", "prometheus-data"}

    def mounts(name: str) -> dict[str, tuple[str, str]]:
        out = {}
        for volume in services[name].get("volumes", []):
            source, target, mode = (
                volume.split(":")
                if isinstance(volume, str)
                else (volume["source"], volume["target"], "ro" if volume.get("read_only") else "rw")
            )
            out[target] = (source, mode)
        return out

    for name in ("listener", "web", "worker-cpu"):
        assert mounts(name)["/var/lib/predraft/spool"] == ("spool", "rw"), name
        assert services[name]["environment"]["PREDRAFT_SPOOL_DIR"] == "/var/lib/predraft/spool"
    assert "/var/lib/predraft/spool" not in mounts("worker-gpu"), "the GPU worker gets tensors, not the spool"
    assert mounts("web")["/var/lib/predraft"] == ("web-state", "rw")
    for name in PREDRAFT_SERVICES - {"migrate"}:
        assert mounts(name)["/models"] == ("/srv/predraft/models", "ro"), name


def test_compose_container_settings_validate(resolved: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """What each predraft container gets (env_file + environment) is a valid Settings, distributed."""
    for name in PREDRAFT_SERVICES:
        env = resolved["services"][name]["environment"]
        settings = settings_from_environment(env, monkeypatch)
        assert settings.database_url == "postgresql+psycopg://predraft:change-me@postgres:5432/predraft", name
        assert settings.broker_url == "redis://:change-me@redis:6379/0", name
        assert (settings.listener.host, settings.http.host, settings.metrics_host) == ("0.0.0.0",) * 3, name
        assert settings.var_dir == Path("/var/lib/predraft")


# --- Dockerfiles and .dockerignore -------------------------------------------------------------------------------


def project_packages() -> list[str]:
    """The repository's folders that the distribution installs (each the root of predraft or a subpackage)."""
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return sorted(pyproject["tool"]["setuptools"]["package-dir"].values())


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.gpu"])
def test_dockerfile_builds_the_project_as_a_user(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in text
    assert re.findall(r"^FROM (\S+)", text, flags=re.M) == ["${PYTHON_IMAGE}"] * 2
    assert not re.search(r"https?://|pypi|pythonhosted|download\.pytorch", text), "no package index named"
    assert "ARG PIP_INDEX_URL" in text and "ARG PIP_EXTRA_INDEX_URL" in text
    assert re.findall(r"^USER (\S+)", text, flags=re.M) == ["predraft"]
    assert "COPY pyproject.toml README.md constraints.txt ./" in text
    assert "pip install -c constraints.txt -r /tmp/requirements.txt" in text  # the tested versions
    for package in project_packages():
        assert f"COPY {package} {package}\n" in text, f"{dockerfile} does not copy the package {package}"
    assert "pip install --no-deps ." in text
    # The dependency layer reads pyproject.toml's dependencies with this very command.
    command = re.search(r'python -c "(import tomllib;[^"]+)"', text).group(1)
    out = subprocess.run([sys.executable, "-c", command], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert out.stdout.splitlines() == dependencies
    assert "torch==2.14.1" in (REPO_ROOT / "constraints.txt").read_text().splitlines()


def test_dockerignore_keeps_the_checkout_out_but_not_the_project() -> None:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", "var", ".git", "tests/output", "bench/results", "**/__pycache__", "deploy/.env"):
        assert needed in patterns
    for kept in ["pyproject.toml", "README.md", *project_packages()]:
        assert kept not in patterns


# --- prometheus.yml -------------------------------------------------------------------------------------------------


def test_prometheus_scrapes_every_process(resolved: dict) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: [t for group in job["static_configs"] for t in group["targets"]]
        for job in config["scrape_configs"]
    }
    env = {name: resolved["services"][name]["environment"] for name in PREDRAFT_SERVICES}
    assert jobs == {
        "predraft-web": [f"web:{env['web']['PREDRAFT_HTTP_PORT']}"],
        "predraft-listener": [f"listener:{env['listener']['PREDRAFT_LISTENER_METRICS_PORT']}"],
        "predraft-worker": [
            f"worker-cpu:{env['worker-cpu']['PREDRAFT_WORKER_METRICS_PORT']}",
            f"worker-gpu:{env['worker-gpu']['PREDRAFT_WORKER_METRICS_PORT']}",
        ],
    }


# --- systemd units --------------------------------------------------------------------------------------------------

UNITS = [
    "predraft-migrate.service",
    "predraft-listener.service",
    "predraft-web.service",
    "predraft-worker@cpu.service",
    "predraft-worker@gpu.service",
]


def needs_systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd; scripts/test.sh installs it)")
    return tool


@pytest.fixture
def units_here(tmp_path: Path) -> Path:
    """deploy/systemd/ copied, its ExecStart= pointing at this test run's own `predraft` (verify checks that
    the binary exists and is executable; /opt/predraft is the installed hosts' path)."""
    predraft = Path(sys.executable).parent / "predraft"
    assert os.access(predraft, os.X_OK), f"{predraft} is not this venv's predraft command"
    folder = tmp_path / "units"
    shutil.copytree(SYSTEMD, folder)
    for unit in folder.glob("*.service"):
        text = unit.read_text()
        assert UNIT_VENV_PREDRAFT in text, unit.name
        unit.write_text(text.replace(UNIT_VENV_PREDRAFT, str(predraft)))
    return folder


def verify(tool: str, folder: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, "verify", "--man=no", f"./{unit}"],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_verifies(units_here: Path, unit: str) -> None:
    """verify parses the unit (and, for an instance, its template and drop-ins) and checks ExecStart=. It does
    not look at User=, EnvironmentFile= or WorkingDirectory=: those exist on an installed host only (the
    README's steps make them; the next tests check the files the units name are shipped)."""
    tool = needs_systemd_analyze()
    result = verify(tool, units_here, unit)
    ours = [
        line for line in (result.stdout + result.stderr).splitlines() if str(units_here) in line or "predraft" in line
    ]
    assert (result.returncode, ours) == (0, [])


def test_systemd_verify_would_catch_a_mistake(units_here: Path) -> None:
    tool = needs_systemd_analyze()
    dropin = units_here / "predraft-worker@gpu.service.d" / "gpu.conf"
    dropin.write_text(dropin.read_text() + "PrivatDevices=no\n")
    result = verify(tool, units_here, "predraft-worker@gpu.service")
    assert "Unknown key 'PrivatDevices'" in result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_is_hardened(units_here: Path, unit: str) -> None:
    """systemd's own exposure score (0 safest, 10 worst) stays at or below 2.0 ("OK")."""
    tool = needs_systemd_analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--threshold=20", f"./{unit}"],
        cwd=units_here,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-400:] + result.stderr


def unit_settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_systemd_units_run_as_predraft_with_the_shipped_files() -> None:
    for name in [
        "predraft-migrate.service",
        "predraft-listener.service",
        "predraft-web.service",
        "predraft-worker@.service",
    ]:
        unit = unit_settings(SYSTEMD / name)
        for key, value in {
            "User": "predraft",
            "Group": "predraft",
            "WorkingDirectory": "/var/lib/predraft",
            "StateDirectory": "predraft",
            "Restart": "on-failure",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "PrivateTmp": "yes",
            "ProtectHome": "yes",
            "PrivateDevices": "yes",
            "CapabilityBoundingSet": "",
            "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        }.items():
            assert unit.get(key) == [value], (name, key)
        assert unit["EnvironmentFile"][0] == "/etc/predraft/predraft.env", name
        assert unit["ExecStart"][0].startswith(UNIT_VENV_PREDRAFT + " "), name
    worker = unit_settings(SYSTEMD / "predraft-worker@.service")
    assert worker["EnvironmentFile"] == ["/etc/predraft/predraft.env", "/etc/predraft/worker-%i.env"]
    assert worker["ExecStart"] == [f"{UNIT_VENV_PREDRAFT} worker --queues ${{WORKER_QUEUES}}"]
    gpu = unit_settings(SYSTEMD / "predraft-worker@gpu.service.d" / "gpu.conf")
    assert gpu["PrivateDevices"] == ["no"]


def test_systemd_worker_roles_name_real_queues_and_settings() -> None:
    known = {environment_variable(name) for name in FLAT_FIELDS}
    roles = {}
    for role in ("cpu", "gpu"):
        values = dotenv_values(SYSTEMD / f"worker-{role}.env")
        assert set(values) - known == {"WORKER_QUEUES"}, role
        roles[role] = values
    assert roles["cpu"]["WORKER_QUEUES"] == "prepare,draft,export"
    assert roles["gpu"]["WORKER_QUEUES"] == "classify"
    assert roles["gpu"]["PREDRAFT_DEVICE"] == "cuda"
    assert roles["cpu"]["PREDRAFT_WORKER_METRICS_PORT"] != roles["gpu"]["PREDRAFT_WORKER_METRICS_PORT"]
    assert {q for values in roles.values() for q in values["WORKER_QUEUES"].split(",")} == set(QUEUES)
