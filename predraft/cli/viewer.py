"""``predraft viewer install``: the OHIF Viewer that predraft may serve at ``/viewer/`` (optional).

The viewer is the prebuilt ``dist/`` of the npm package ``@ohif/app``, pinned to one version by
``deploy/ohif/package.json`` and ``deploy/ohif/package-lock.json`` (which holds the tarball's sha512). The command
copies the two files into a folder outside git (default ``<var_dir>/ohif``) and runs ``npm ci --ignore-scripts
--omit=dev`` there: npm downloads the one tarball, refuses it unless its hash is the lock's, and runs none of its
scripts. The lock lists ``@ohif/app`` alone on purpose: ``dist/`` is a webpack build that carries everything it
runs, and the package's own dependencies (declared for building it from source) are neither needed nor all
published. Nothing is downloaded when predraft runs: it serves what was installed here, once
``PREDRAFT_VIEWER_DIR`` names the ``dist/`` folder this command prints.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import click

from predraft.cli.common import load_settings

PACKAGE = "@ohif/app"
#: The pinned package.json and package-lock.json, in the source tree beside the other deployment files.
DEFAULT_PIN = Path(__file__).resolve().parents[2] / "deploy" / "ohif"
PIN_FILES = ("package.json", "package-lock.json")
NPM_CI = ("ci", "--ignore-scripts", "--omit=dev", "--no-audit", "--no-fund")
NPM_TIMEOUT_SECONDS = 900


def pinned_version(pin: Path) -> str:
    """The version of ``@ohif/app`` the lock in ``pin`` names; ClickException when the lock has no integrity."""
    try:
        lock = json.loads((pin / "package-lock.json").read_text())
        entry = lock["packages"][f"node_modules/{PACKAGE}"]
        version, integrity = str(entry["version"]), str(entry.get("integrity", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise click.ClickException(f"{pin / 'package-lock.json'} does not pin {PACKAGE}: {exc}") from exc
    if not integrity.startswith("sha512-"):
        raise click.ClickException(f"{pin / 'package-lock.json'} has no sha512 integrity for {PACKAGE} {version}")
    return version


def installed_version(folder: Path) -> str | None:
    """The version of ``@ohif/app`` installed under ``folder``, or None."""
    try:
        return str(json.loads((folder / "node_modules" / PACKAGE / "package.json").read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def dist_of(folder: Path) -> Path:
    """Where the viewer's built files lie in an install folder: what PREDRAFT_VIEWER_DIR names."""
    return folder / "node_modules" / PACKAGE / "dist"


@click.group()
def viewer() -> None:
    """The OHIF Viewer predraft may serve at /viewer/ (optional: predraft works without it)."""


@viewer.command("install")
@click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to install into (outside git); default <var_dir>/ohif.",
)
@click.option(
    "--pin",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder holding the pinned package.json and package-lock.json; default predraft's deploy/ohif.",
)
@click.option("--force", is_flag=True, help="Install again even when this version is installed there already.")
def install_command(folder: Path | None, pin: Path | None, force: bool) -> None:
    """Install the pinned OHIF Viewer with `npm ci` (the lock's integrity hash checked, no install scripts run) and
    print the PREDRAFT_VIEWER_DIR to set. Skipped when the same lock is installed there already."""
    pin = (pin or DEFAULT_PIN).absolute()
    if not all((pin / name).is_file() for name in PIN_FILES):
        raise click.ClickException(
            f"{pin} does not hold {' and '.join(PIN_FILES)}: "
            "pass --pin with the deploy/ohif folder of predraft's source"
        )
    version = pinned_version(pin)
    folder = (folder or load_settings().var_dir / "ohif").expanduser().absolute()
    dist = dist_of(folder)
    lock = (pin / "package-lock.json").read_bytes()
    current = folder / "package-lock.json"
    if (
        not force
        and current.is_file()
        and current.read_bytes() == lock
        and installed_version(folder) == version
        and (dist / "index.html").is_file()
    ):
        click.echo(f"OHIF Viewer {version} is installed already in {folder}")
        click.echo(f"PREDRAFT_VIEWER_DIR={dist}")
        return
    npm = shutil.which("npm")
    if npm is None:
        raise click.ClickException("npm is not on PATH: install Node.js and npm (Debian: apt-get install nodejs npm)")
    folder.mkdir(parents=True, exist_ok=True)
    for name in PIN_FILES:
        shutil.copyfile(pin / name, folder / name)
    click.echo(f"installing {PACKAGE} {version} into {folder} (npm ci: the lock's sha512 is checked)")
    try:
        result = subprocess.run(
            [npm, *NPM_CI], cwd=folder, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise click.ClickException(f"npm ci did not finish within {NPM_TIMEOUT_SECONDS} s") from exc
    if result.returncode != 0:
        current.unlink(missing_ok=True)  # never taken for a finished install next time
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
        raise click.ClickException(f"npm ci exited {result.returncode}:\n{tail}")
    found = installed_version(folder)
    if found != version or not (dist / "index.html").is_file():
        current.unlink(missing_ok=True)
        raise click.ClickException(f"npm ci installed {PACKAGE} {found}, wanted {version} with a dist/index.html")
    click.echo(f"OHIF Viewer {version} installed in {folder}")
    click.echo(f"PREDRAFT_VIEWER_DIR={dist}")
