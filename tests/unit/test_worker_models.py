"""What a worker says it reads with: the gate's card and each installed pack's, in its heartbeat
(predraft.workers.heartbeat) and as predraft.workers.presence reads it back, also from an older worker's heartbeat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from predraft.core.settings import get_settings
from predraft.models.card import load_card
from predraft.models.taskcard import load_task_card
from predraft.workers.heartbeat import models_description
from predraft.workers.presence import status_from_json


def _described(card_path: Path) -> str:
    card = load_card(card_path, verify_weights=False)[0]
    return f"{card.name} {card.version}"


def _gate(card_path: Path) -> str:
    card = load_task_card(card_path, verify_weights=False)[0]
    return f"{card.name} {card.version}"


def test_a_worker_names_the_gate_and_every_installed_pack(tmp_path: Path) -> None:
    settings = get_settings(var_dir=tmp_path / "var")
    packs = settings.model.packs().packs
    described = models_description(settings)
    models = described["models"]
    assert list(models) == ["gate", *(installed.name for installed in packs)]
    assert {"hip", "shoulder"} <= set(models)
    assert models["gate"] == _gate(settings.model.gate_card_path)
    assert models["hip"] == _described(settings.model.card_path)
    assert all(models[installed.name] == _described(installed.card_path) for installed in packs)
    assert f"{described['model_name']} {described['model_version']}" == models["hip"]


def test_an_unreadable_gate_card_is_named_not_fatal(tmp_path: Path) -> None:
    broken = tmp_path / "card.json"
    broken.write_text("{not json")
    settings = get_settings(var_dir=tmp_path / "var", gate_model=broken)
    models = models_description(settings)["models"]
    assert models["gate"].startswith("unreadable card (")
    assert models["hip"] == _described(settings.model.card_path)


HEARTBEAT = {"hostname": "predraft-draft@host", "queues": ["draft"], "tasks": []}


@pytest.mark.parametrize(
    ("models", "read"),
    [
        ({"gate": "predraft-gate 1.2.0", "hip": "predraft-demo-phantoms 2.0.0"}, None),
        (None, {}),  # a worker of an earlier version wrote none
        (["predraft-gate 1.2.0"], {}),  # not a mapping: left out, the heartbeat still read
        ({"gate": 1}, {"gate": "1"}),
    ],
)
def test_the_models_of_a_heartbeat_are_read_back(models: object, read: dict[str, str] | None) -> None:
    data = {**HEARTBEAT, **({"models": models} if models is not None else {})}
    status = status_from_json(json.loads(json.dumps(data)), source="heartbeat file")
    assert status.models == (models if read is None else read)


def test_a_pack_installed_while_the_worker_runs_is_named_at_the_next_heartbeat(tmp_path: Path) -> None:
    """Packs are read from their files on each task; the heartbeat reads them again too, not once at start."""
    import shutil

    from predraft.models.pack import BUNDLED_PACKS

    site = tmp_path / "packs"
    site.mkdir()
    settings = get_settings(var_dir=tmp_path / "var", packs_dir=site)
    before = models_description(settings)["models"]
    copy = site / "shoulder_site"
    shutil.copytree(BUNDLED_PACKS / "shoulder", copy)
    toml = copy / "pack.toml"
    toml.write_text(toml.read_text().replace('name = "shoulder"', 'name = "shoulder_site"', 1))
    after = models_description(settings)["models"]
    assert "shoulder_site" not in before and after["shoulder_site"] == after["shoulder"]
