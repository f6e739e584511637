"""Logging set up by every entry point: text or JSON lines, and no patient data from the libraries."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.valuerep import validate_value

from predraft.core.bootstrap import configure_logging
from predraft.core.settings import get_settings


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger("pydicom").setLevel(logging.NOTSET)


def test_json_lines_carry_the_record_fields(clean_settings_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(get_settings(var_dir=clean_settings_env, log_format="json"))
    logging.getLogger("predraft.workers.tasks").warning("study row %d: %s", 7, "drafted")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["level"], record["logger"]) == ("WARNING", "predraft.workers.tasks")
    assert record["message"] == "study row 7: drafted"
    assert {"time", "process"} <= set(record)


def test_pydicom_never_logs_the_invalid_values_it_quotes(
    clean_settings_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(get_settings(var_dir=clean_settings_env))
    with warnings.catch_warnings(record=True) as caught:  # pydicom sends it as a Python warning too
        validate_value("DA", "1980-02-03", pydicom_config.WARN)  # a birth date written with dashes: pydicom warns
    logging.getLogger("predraft.listener.receive").warning("still logged")
    err = capsys.readouterr().err
    assert "still logged" in err and "1980-02-03" not in err
    assert not [warning for warning in caught if "1980-02-03" in str(warning.message)]
