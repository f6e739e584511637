"""Report text from side findings, through Jinja templates in ``reporting/templates/``.

Templates: ``finding.txt.j2`` (one hip: also the SR's finding text for that side), ``findings.txt.j2``,
``impression.txt.j2``, ``disclaimer.txt.j2`` and ``draft.txt.j2`` (the whole report). A site folder
(``template_dir``) overrides any template by file name. The environment uses
StrictUndefined and :func:`check_templates` renders every template once with example data, so a
template error is found at start-up rather than in a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

import predraft
from models.card import ModelCard
from models.taxonomy import Side, View
from reporting.aggregate import SideFinding
from reporting.wording import INDETERMINATE_SENTENCE, SENTENCES

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
_HIP_LABELS = {Side.RIGHT: "Right hip", Side.LEFT: "Left hip", Side.UNKNOWN: "Hip (side not stated)"}


@dataclass(frozen=True)
class DraftText:
    """The rendered report: its parts, the whole, and one sentence per side for the SR's findings."""

    findings: str
    impression: str
    disclaimer: str
    full: str
    side_sentences: dict[Side, str]


def make_environment(template_dir: Path | None = None) -> Environment:
    search_path = [str(template_dir)] if template_dir else []
    search_path.append(str(PACKAGE_TEMPLATES))
    return Environment(loader=FileSystemLoader(search_path), undefined=StrictUndefined, autoescape=False,
                       keep_trailing_newline=True)


def _finding_context(finding: SideFinding) -> dict[str, object]:
    return {
        "side": finding.side.value,
        "hip_label": _HIP_LABELS[finding.side],
        "sentence": INDETERMINATE_SENTENCE if finding.hardware is None else SENTENCES[finding.hardware],
        "indeterminate": finding.indeterminate,
        "reason": finding.reason,
        "probability": round(finding.probability, 3),
        "view_labels": [view.label for view in finding.views],
    }


def render_draft(findings: list[SideFinding], *, model: ModelCard, study_description: str = "",
                 environment: Environment | None = None) -> DraftText:
    """Render findings, impression, disclaimer and the whole report."""
    if not findings:
        raise ValueError("render_draft needs at least one side finding")
    env = environment or make_environment()
    views: list[View] = list(dict.fromkeys(view for finding in findings for view in finding.views))
    context: dict[str, object] = {
        "findings": [_finding_context(finding) for finding in findings],
        "view_labels": [view.label for view in views],
        "study_description": study_description,
        "model": model.model_dump(),
        "app_version": predraft.__version__,
    }
    finding_template = env.get_template("finding.txt.j2")
    side_sentences = {
        finding.side: finding_template.render(context, finding=finding_context).strip()
        for finding, finding_context in zip(findings, context["findings"], strict=True)  # type: ignore[call-overload]
    }
    findings_text = env.get_template("findings.txt.j2").render(context).strip()
    impression_text = env.get_template("impression.txt.j2").render(context).strip()
    disclaimer_text = env.get_template("disclaimer.txt.j2").render(context).strip()
    full = env.get_template("draft.txt.j2").render(
        context, findings_text=findings_text, impression_text=impression_text, disclaimer_text=disclaimer_text
    )
    return DraftText(findings_text, impression_text, disclaimer_text, full.strip() + "\n", side_sentences)


def check_templates(template_dir: Path | None = None) -> None:
    """Render every template once with example findings; raises on any template error."""
    from models.card import ModelCard
    from models.taxonomy import HardwareClass

    example = ModelCard(name="check", version="0", architecture="check", input_size=224, trained=False,
                        weights="none", weights_sha256="0" * 64)
    findings = [
        SideFinding(Side.RIGHT, HardwareClass.THA, 0.9, {HardwareClass.THA: 0.9}, (View.AP_PELVIS,), ("1",), "ok"),
        SideFinding(Side.LEFT, None, 0.4, {HardwareClass.NONE: 0.4}, (View.AP_PELVIS,), ("1",), "low confidence"),
    ]
    render_draft(findings, model=example, study_description="", environment=make_environment(template_dir))
