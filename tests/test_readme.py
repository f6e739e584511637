"""The README documents every setting, and names the commands CI runs."""

from __future__ import annotations

from predraft.core.settings import FLAT_FIELDS, environment_variable
from tests.conftest import REPO_ROOT


def test_readme_configuration_table_lists_every_setting() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [environment_variable(name) for name in FLAT_FIELDS if f"`{environment_variable(name)}`" not in readme]
    assert missing == []


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme
    assert "exec bash scripts/test.sh" in ci
