"""predraft.reporting.text: the draft's prose from Jinja templates, site overrides and the start-up check."""

from __future__ import annotations

import jinja2
import pytest

import predraft
from predraft.models.card import ModelCard
from predraft.models.pack import bundled_pack
from predraft.models.taxonomy import HardwareClass as H
from predraft.models.taxonomy import Side, View
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.text import Section, TemplateCheckError, check_templates, make_environment, render_draft

HIP = bundled_pack().pack


def _card(**changes) -> ModelCard:
    fields = dict(
        name="hiphw",
        version="2.1.0",
        architecture="test_efficientnet",
        input_size=64,
        classes=HIP.class_names,
        trained=False,
        weights="weights.safetensors",
        weights_sha256="ab" * 32,
    )
    fields.update(changes)
    return ModelCard(**fields)


def _draft(findings, card=None, **options):
    return render_draft([Section(HIP, card or _card(), findings)], **options)


FINDINGS = [
    SideFinding(
        Side.RIGHT,
        H.THA,
        0.91,
        {H.THA: 0.91, H.NONE: 0.09},
        (View.AP_PELVIS, View.FROG_LEG),
        ("1.2.3.1", "1.2.3.2"),
        "mean probability 0.91 over 2 image(s)",
    ),
    SideFinding(
        Side.LEFT,
        None,
        0.41,
        {H.NONE: 0.41, H.HEMI: 0.39},
        (View.AP_PELVIS,),
        ("1.2.3.1",),
        "confidence 0.41 below the model's threshold 0.50",
    ),
]


def test_draft_names_each_hip_with_findings_and_impression():
    draft = _draft(FINDINGS, _card(), study_description="XR PELVIS AND RIGHT HIP")

    assert draft.findings.splitlines() == [
        "Right hip: Total hip arthroplasty. Seen on: AP pelvis, frog-leg lateral.",
        "Left hip: Indeterminate, review. (confidence 0.41 below the model's threshold 0.50) Seen on: AP pelvis.",
    ]
    assert draft.impression.splitlines() == [
        "1. Right hip: Total hip arthroplasty.",
        "2. Left hip: Indeterminate, review.",
    ]
    full = draft.full
    assert full.startswith("PRELIMINARY REPORT - UNVERIFIED AI DRAFT\n")
    assert "EXAMINATION: XR PELVIS AND RIGHT HIP" in full
    assert "VIEWS USED: AP pelvis, frog-leg lateral" in full
    assert full.index("FINDINGS:") < full.index("Right hip") < full.index("IMPRESSION:") < full.index(draft.disclaimer)
    assert "Left hip" in full
    assert full.endswith("\n") and not full.endswith("\n\n")


def test_disclaimer_names_model_and_version_and_says_untrained():
    draft = _draft(FINDINGS, _card())
    assert f"predraft {predraft.__version__}" in draft.disclaimer
    assert "model hiphw 2.1.0" in draft.disclaimer
    assert "UNTRAINED" in draft.disclaimer
    assert draft.disclaimer in draft.full


def test_trained_models_are_not_called_untrained():
    trained = _draft(FINDINGS, _card(trained=True)).disclaimer
    assert "UNTRAINED" not in trained and "synthetic" not in trained
    demo = _draft(FINDINGS, _card(trained=True, synthetic_demo=True)).disclaimer
    assert "UNTRAINED" not in demo and "synthetic phantoms" in demo


def test_default_examination_when_no_study_description():
    assert "EXAMINATION: Radiographs of the hip/pelvis" in _draft(FINDINGS, _card()).full


def test_unknown_side_is_labelled_as_such():
    finding = SideFinding(Side.UNKNOWN, H.NONE, 0.8, {H.NONE: 0.8}, (View.UNKNOWN,), ("1",), "ok")
    draft = _draft([finding])
    assert draft.findings == "Hip (side not stated): No orthopedic hardware. Seen on: unlabelled view."


def test_no_findings_is_refused():
    with pytest.raises(ValueError, match="at least one side finding"):
        _draft([])
    with pytest.raises(ValueError, match="at least one section"):
        render_draft([])


def test_a_class_the_pack_lacks_is_refused():
    finding = SideFinding(Side.LEFT, "screws", 0.9, {"screws": 0.9, "none": 0.1}, (View.AP_HIP,), ("1",), "ok")
    with pytest.raises(ValueError, match=r"\['screws'\], which are not classes of the pack hip"):
        _draft([finding])


def test_site_template_overrides_the_packaged_one(tmp_path):
    (tmp_path / "impression.txt.j2").write_text(
        "{% for finding in findings %}SITE {{ finding.hip_label | upper }}: {{ finding.sentence }}\n{% endfor %}"
    )
    draft = _draft(FINDINGS, _card(), environment=make_environment(tmp_path))
    assert draft.impression.splitlines() == [
        "SITE RIGHT HIP: Total hip arthroplasty.",
        "SITE LEFT HIP: Indeterminate, review.",
    ]
    assert "SITE RIGHT HIP" in draft.full
    assert draft.findings == _draft(FINDINGS, _card()).findings  # the rest stays packaged
    check_templates(HIP, tmp_path)


def test_check_templates_passes_on_the_packaged_templates():
    check_templates(HIP)
    check_templates(HIP, None)


def test_check_templates_finds_an_undefined_variable(tmp_path):
    (tmp_path / "findings.txt.j2").write_text("{{ no_such_variable }}\n")
    with pytest.raises(TemplateCheckError, match=r"findings.txt.j2 \(.*findings.txt.j2\).*no_such_variable"):
        check_templates(HIP, tmp_path)


def test_check_templates_finds_a_syntax_error(tmp_path):
    (tmp_path / "disclaimer.txt.j2").write_text("{% if model.trained %}unclosed\n")
    with pytest.raises(TemplateCheckError, match="disclaimer.txt.j2") as caught:
        check_templates(HIP, tmp_path)
    assert isinstance(caught.value.__cause__, jinja2.TemplateSyntaxError)
    assert str(tmp_path) in str(caught.value)


# Words that would comment on complications: the model describes hardware only (docs/clinical.md).
COMPLICATION_WORDS = (
    "loosening",
    "loose",
    "dislocat",
    "fracture",
    "infection",
    "infected",
    "failure",
    "fail",
    "subsidence",
    "osteolysis",
    "malposition",
    "periprosthetic",
    "normal alignment",
)


@pytest.mark.parametrize("hardware", [*H, None], ids=[*(h.value for h in H), "indeterminate"])
@pytest.mark.parametrize("side", list(Side), ids=[s.value for s in Side])
def test_every_class_and_side_renders(hardware, side):
    finding = SideFinding(
        side, hardware, 0.93, {hardware or H.NONE: 0.93, H.PLATE: 0.07}, (View.AP_HIP,), ("1.2.3.1",), "reason given"
    )
    draft = _draft([finding], _card(trained=True))
    label = {Side.RIGHT: "Right hip", Side.LEFT: "Left hip", Side.UNKNOWN: "Hip (side not stated)"}[side]
    sentence = "Indeterminate, review." if hardware is None else HIP.sentence(hardware)
    assert draft.findings == f"{label}: {sentence}{' (reason given)' if hardware is None else ''} Seen on: AP hip."
    assert draft.impression == f"1. {label}: {sentence}"
    assert draft.side_sentences[("hip", side)] == draft.findings
    prose = (draft.findings + draft.impression).lower().replace("post-infectious", "")
    assert not [word for word in COMPLICATION_WORDS if word in prose]


def test_a_broken_site_template_stops_a_draft_worker_at_start(
    tmp_path, clean_settings_env, monkeypatch, capsys, tiny_card_path
):
    from predraft.cli import main
    from predraft.core.db import upgrade

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "impression.txt.j2").write_text("{% for finding in findings %}{{ finding.no_such }}{% endfor")
    monkeypatch.setenv("PREDRAFT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("PREDRAFT_TEMPLATE_DIR", str(tmp_path / "site"))
    monkeypatch.setenv("PREDRAFT_MODEL", str(tiny_card_path))
    upgrade(f"sqlite:///{tmp_path / 'var' / 'predraft.sqlite'}")
    assert main(["worker", "--queues", "draft"]) == 1
    error = capsys.readouterr().err
    assert "impression.txt.j2" in error and str(tmp_path / "site") in error
