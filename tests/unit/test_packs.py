"""predraft.models.pack: the pack contract, its checks, the registry's precedence, and ``predraft packs``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from predraft.models.card import load_card, write_card
from predraft.models.pack import (
    BUNDLED_PACKS,
    PackError,
    PackRegistry,
    bundled_pack,
    installed_packs,
    load_pack,
    read_pack,
)
from predraft.models.taxonomy import CLASS_ORDER, Side, View
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.sr import build_draft_sr
from predraft.reporting.text import Section, TemplateCheckError, check_templates, make_environment, render_draft

#: A small pack of three implant models for the hip region, as a site would write it.
STEMS_TOML = """
name = "stems"
version = "0.1.0"
title = "Hip stems by model"
regions = ["hip"]
examination = "Radiographs of the hip"
statement = "Names the femoral stem's model only; fit and fixation are for the radiologist."
views = ["ap_pelvis", "ap_hip", "frog_leg", "cross_table_lateral"]
no_finding = "no_stem"

[sides]
right = "Right femoral stem"
left = "Left femoral stem"
unknown = "Femoral stem (side not stated)"

[[classes]]
name = "no_stem"
label = "No stem"
sentence = "No femoral stem."
code = { value = "NOSTEM", scheme = "99SITE", meaning = "No femoral stem" }

[[classes]]
name = "stem_a"
label = "Stem A"
sentence = "Femoral stem most consistent with model A."
code = { value = "STEMA", scheme = "99SITE", meaning = "Femoral stem model A" }

[[classes]]
name = "stem_b"
label = "Stem B"
sentence = "Femoral stem most consistent with model B."
code = { value = "STEMB", scheme = "99SITE", meaning = "Femoral stem model B" }
"""
STEMS = ("no_stem", "stem_a", "stem_b")


def write_stems_pack(folder: Path, card_source: Path, toml: str = STEMS_TOML) -> Path:
    """A site pack folder: ``toml`` and a copy of the card at ``card_source`` (its weights beside) with the stems'
    classes."""
    folder.mkdir(parents=True)
    (folder / "pack.toml").write_text(toml)
    card, weights = load_card(card_source, verify_weights=False)
    shutil.copy(weights, folder / weights.name)
    write_card(card.model_copy(update={"classes": STEMS, "name": "site-stems"}), folder / "card.json")
    return folder


def test_the_bundled_hip_pack_is_the_nine_classes_with_their_words_and_codes():
    hip = bundled_pack(verify_weights=True)
    assert hip.pack.class_names == tuple(CLASS_ORDER)
    assert hip.card.classes == tuple(CLASS_ORDER)
    assert hip.pack.sentence("tha") == "Total hip arthroplasty."
    assert (hip.pack.code("tha").value, hip.pack.code("tha").scheme) == ("304120007", "SCT")
    assert hip.pack.code(None).value == "INDET" and hip.pack.sentence(None) == "Indeterminate, review."
    assert hip.pack.sides[Side.UNKNOWN] == "Hip (side not stated)"
    assert hip.pack.regions == ("hip",) and hip.pack.no_finding == "none"
    assert {frozenset(pair) for pair in hip.pack.aggregation.hard_pairs} == {
        frozenset({"tha", "hemi"}),
        frozenset({"post_infectious", "tha_plus_fixation"}),
    }
    assert hip.pack.aggregation.view_weights[View.CROSS_TABLE_LATERAL] == 0.75


def test_every_bundled_pack_loads_with_its_weights_and_renders():
    registry = installed_packs(verify_weights=True)
    assert [installed.name for installed in registry.packs] == sorted(
        p.name for p in BUNDLED_PACKS.iterdir() if p.is_dir() and (p / "pack.toml").exists()
    )
    for installed in registry.packs:
        check_templates(installed.pack, installed.templates)


@pytest.mark.parametrize(
    "change, message",
    [
        ("", "no pack.toml"),
        ("name = [", "cannot be read"),
        (STEMS_TOML.replace('no_finding = "no_stem"', 'no_finding = "nothing"'), r"no_finding names \['nothing'\]"),
        (STEMS_TOML.replace('name = "stem_b"', 'name = "stem_a"'), "class names repeat"),
        (STEMS_TOML.replace('value = "STEMB"', 'value = "STEMA"'), "share an SR code"),
        (STEMS_TOML.replace('regions = ["hip"]', "regions = []"), "regions"),
        (STEMS_TOML.replace('views = ["ap_pelvis",', 'views = ["oblique",'), "views"),
        (STEMS_TOML.replace('label = "Stem B"\n', ""), r"classes\.2\.label: Field required"),
        (STEMS_TOML + "\nsurprise = 1\n", "surprise"),
    ],
    ids=["missing", "bad-toml", "unknown-no-finding", "repeated-class", "shared-code", "no-region", "unknown-view",
         "missing-label", "unknown-key"],
)  # fmt: skip
def test_a_broken_pack_toml_is_refused_naming_the_file_and_the_fault(tmp_path, change, message):
    if change:
        (tmp_path / "pack.toml").write_text(change)
    with pytest.raises(PackError, match=message) as caught:
        read_pack(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_a_card_whose_classes_are_not_the_packs_is_refused(tmp_path, tiny_card_path):
    folder = write_stems_pack(tmp_path / "stems", tiny_card_path)
    card, _ = load_card(folder / "card.json", verify_weights=False)
    write_card(card.model_copy(update={"classes": ("stem_a", "no_stem", "stem_b")}), folder / "card.json")
    with pytest.raises(PackError, match=r"the card .* has the classes \['stem_a', 'no_stem', 'stem_b'\]"):
        load_pack(folder)
    (folder / "card.json").unlink()
    with pytest.raises(PackError, match="does not exist"):
        load_pack(folder)


def test_a_sites_pack_reads_its_regions_before_the_bundled_one(tmp_path, tiny_card_path):
    write_stems_pack(tmp_path / "site" / "stems", tiny_card_path)
    registry = installed_packs(tmp_path / "site")
    assert registry.for_region("hip").name == "stems"
    assert registry.for_region("shoulder") is None or registry.for_region("shoulder").name != "stems"
    assert registry.shadowed()["hip"] == ["hip"]
    assert installed_packs().for_region("hip").name == "hip"  # without the site's folder, the bundled one


def test_a_sites_pack_may_not_take_a_bundled_packs_name(tmp_path, tiny_card_path):
    write_stems_pack(tmp_path / "site" / "hip", tiny_card_path, STEMS_TOML.replace('name = "stems"', 'name = "hip"'))
    with pytest.raises(PackError, match=r"the site's packs \['hip'\] have the name of a bundled pack"):
        installed_packs(tmp_path / "site")
    with pytest.raises(PackError, match="no pack is installed"):
        PackRegistry([])


def _stem_findings() -> list[SideFinding]:
    return [
        SideFinding(Side.RIGHT, "stem_a", 0.9, {"stem_a": 0.9, "no_stem": 0.1}, (View.AP_HIP,), ("1.2.3",), "ok"),
        SideFinding(Side.LEFT, None, 0.5, {"stem_b": 0.5, "stem_a": 0.5}, (View.AP_HIP,), ("1.2.3",), "too close"),
    ]


def test_a_packs_words_and_templates_write_its_section(tmp_path, tiny_card_path):
    folder = write_stems_pack(tmp_path / "stems", tiny_card_path)
    (folder / "templates").mkdir()
    (folder / "templates" / "impression.txt.j2").write_text(
        "{% for finding in findings %}STEMS {{ finding.label }}: {{ finding.sentence }}\n{% endfor %}"
    )
    installed = load_pack(folder, site=True, verify_weights=False)
    check_templates(installed.pack, installed.templates)
    draft = render_draft(
        [Section(installed.pack, installed.card, _stem_findings())],
        environment=make_environment(installed.templates),
    )
    assert (
        draft.findings.splitlines()[0]
        == "Right femoral stem: Femoral stem most consistent with model A. Seen on: AP hip."
    )
    assert draft.impression.splitlines() == [
        "STEMS Right femoral stem: Femoral stem most consistent with model A.",
        "STEMS Left femoral stem: Indeterminate, review.",
    ]
    assert "EXAMINATION: Radiographs of the hip" in draft.full
    assert "Names the femoral stem's model only" in draft.disclaimer
    assert "orthopedic hardware only" not in draft.full  # the hip pack's statement is the hip's


def test_two_packs_in_one_study_give_one_section_each_in_one_draft(tmp_path, tiny_card_path, demo_study):
    import pydicom
    from pydicom.uid import generate_uid

    stems = load_pack(write_stems_pack(tmp_path / "stems", tiny_card_path), site=True, verify_weights=False)
    hip = bundled_pack()
    uid = demo_study[0].sop_instance_uid
    hip_finding = SideFinding(Side.RIGHT, "tha", 0.95, {"tha": 0.95, "none": 0.05}, (View.AP_PELVIS,), (uid,), "ok")
    stem_finding = SideFinding(Side.RIGHT, "stem_b", 0.9, {"stem_b": 0.9}, (View.AP_PELVIS,), (uid,), "ok")
    sections = [Section(hip.pack, hip.card, [hip_finding]), Section(stems.pack, stems.card, [stem_finding])]
    text = render_draft(sections)
    assert text.findings.splitlines() == [
        "Right hip: Total hip arthroplasty. Seen on: AP pelvis.",
        "Right femoral stem: Femoral stem most consistent with model B. Seen on: AP pelvis.",
    ]
    assert "Hip and pelvis: orthopedic hardware: model predraft-demo-phantoms" in text.disclaimer
    assert "Hip stems by model: model site-stems" in text.disclaimer
    evidence = [pydicom.dcmread(demo_study[0].path, stop_before_pixels=True)]
    sr = build_draft_sr(
        evidence=evidence,
        sections=sections,
        text=text,
        series_instance_uid=generate_uid(),
        sop_instance_uid=generate_uid(),
    )
    findings = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121070")
    codes = [
        (item.ConceptCodeSequence[0].CodingSchemeDesignator, item.ConceptCodeSequence[0].CodeValue)
        for item in findings.ContentSequence
        if item.ValueType == "CODE"
    ]
    assert codes == [("SCT", "304120007"), ("99SITE", "STEMB")]
    assert len(sr.ContributingEquipmentSequence) == 2  # each section's model


def test_a_template_is_rendered_in_the_sandbox(tmp_path):
    (tmp_path / "findings.txt.j2").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    with pytest.raises(TemplateCheckError, match="SecurityError"):
        check_templates(bundled_pack().pack, tmp_path)


def test_packs_ls_and_check(tmp_path, tiny_card_path, clean_settings_env, monkeypatch, capsys):
    from predraft.cli import main

    write_stems_pack(tmp_path / "site" / "stems", tiny_card_path)
    monkeypatch.setenv("PREDRAFT_PACKS_DIR", str(tmp_path / "site"))
    assert main(["packs", "ls"]) == 0
    listing = capsys.readouterr().out
    hip_line = next(line for line in listing.splitlines() if "bundled" in line)
    stems_line = next(line for line in listing.splitlines() if "stems" in line and "site" in line)
    assert "hip (read by stems)" in hip_line and "site-stems" in stems_line

    assert main(["packs", "check", str(tmp_path / "site" / "stems")]) == 0
    assert "pack stems 0.1.0" in capsys.readouterr().out and True

    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "site" / "stems", broken)
    card = json.loads((broken / "card.json").read_text())
    card["weights_sha256"] = "0" * 64
    (broken / "card.json").write_text(json.dumps(card))
    assert main(["packs", "check", str(broken)]) == 1
    assert "not usable" in capsys.readouterr().err

    (tmp_path / "site" / "stems" / "templates").mkdir()
    (tmp_path / "site" / "stems" / "templates" / "finding.txt.j2").write_text("{{ finding.no_such }}")
    assert main(["packs", "check", str(tmp_path / "site" / "stems")]) == 1
    assert "finding.txt.j2" in capsys.readouterr().err


def test_a_broken_site_pack_is_a_clear_error_for_ls_train_and_the_settings(
    tmp_path, clean_settings_env, monkeypatch, capsys
):
    from predraft.cli import main

    broken = tmp_path / "site" / "broken"
    broken.mkdir(parents=True)
    (broken / "pack.toml").write_text('name = "broken"\n')  # nothing else
    monkeypatch.setenv("PREDRAFT_PACKS_DIR", str(tmp_path / "site"))
    assert main(["packs", "ls"]) == 1
    error = capsys.readouterr().err
    assert f"{broken / 'pack.toml'} is not a valid pack" in error and "regions: Field required" in error

    (tmp_path / "data").mkdir()
    assert main(["train", str(tmp_path / "data"), "--pack", str(broken), "--out", str(tmp_path / "run")]) == 1
    assert f"{broken / 'pack.toml'} is not a valid pack" in capsys.readouterr().err

    monkeypatch.setenv("PREDRAFT_PACKS_DIR", str(tmp_path / "nowhere"))
    assert main(["packs", "ls"]) == 1
    error = capsys.readouterr().err
    assert f"packs_dir {tmp_path / 'nowhere'} is not a folder" in error
