"""Report text from side findings, through Jinja templates in ``reporting/templates/``.

Templates: ``finding.txt.j2`` (one hip: also the SR's finding text for that side), ``findings.txt.j2``,
``impression.txt.j2``, ``disclaimer.txt.j2`` and ``draft.txt.j2`` (the whole report). A site folder
(``template_dir``) overrides any template by file name. The environment uses
StrictUndefined and :func:`check_templates` renders every template once with example data, so a
template error is found at start-up rather than in a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError

import predraft
from predraft.models.card import ModelCard
from predraft.models.taxonomy import HardwareClass, Side, View
from predraft.reporting.aggregate import SideFinding
from predraft.reporting.wording import INDETERMINATE_SENTENCE, SENTENCES

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
_HIP_LABELS = {Side.RIGHT: "Right hip", Side.LEFT: "Left hip", Side.UNKNOWN: "Hip (side not stated)"}


class TemplateCheckError(ValueError):
    """A report template that cannot be loaded or rendered; the message names the template and its folder."""


@dataclass(frozen=True)
class DraftText:
    """The rendered report: its parts, the whole, and one sentence per side for the SR's findings."""

    findings: str
    impression: str
    disclaimer: str
    full: str
    side_sentences: dict[Side, str]


@lru_cache(maxsize=4)
def template_environment(template_dir: Path | None = None) -> Environment:
    """The shared environment of ``template_dir`` (templates are compiled once per process)."""
    return make_environment(template_dir)


def make_environment(template_dir: Path | None = None) -> Environment:
    search_path = [str(template_dir)] if template_dir else []
    search_path.append(str(PACKAGE_TEMPLATES))
    return Environment(
        loader=FileSystemLoader(search_path),
        undefined=StrictUndefined,
        autoescape=False,  # noqa: S701 - the reports are plain text, never HTML
        keep_trailing_newline=True,
    )


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


def render_draft(
    findings: list[SideFinding],
    *,
    model: ModelCard,
    study_description: str = "",
    patient_is_child: bool = False,
    environment: Environment | None = None,
) -> DraftText:
    """Render findings, impression, disclaimer and the whole report. ``patient_is_child`` (the tags say the
    patient was under 18: :func:`predraft.reporting.age.is_child`) adds the notice that no model here was trained on
    children (templates: ``patient_is_child``)."""
    if not findings:
        raise ValueError("render_draft needs at least one side finding")
    env = environment or make_environment()
    views: list[View] = list(dict.fromkeys(view for finding in findings for view in finding.views))
    finding_contexts = [_finding_context(finding) for finding in findings]
    context: dict[str, object] = {
        "findings": finding_contexts,
        "view_labels": [view.label for view in views],
        "study_description": study_description,
        "model": model.model_dump(),
        "app_version": predraft.__version__,
        "patient_is_child": patient_is_child,
    }
    side_sentences = {
        finding.side: _render(env, "finding.txt.j2", context, finding=finding_context).strip()
        for finding, finding_context in zip(findings, finding_contexts, strict=True)
    }
    findings_text = _render(env, "findings.txt.j2", context).strip()
    impression_text = _render(env, "impression.txt.j2", context).strip()
    disclaimer_text = _render(env, "disclaimer.txt.j2", context).strip()
    full = _render(
        env,
        "draft.txt.j2",
        context,
        findings_text=findings_text,
        impression_text=impression_text,
        disclaimer_text=disclaimer_text,
    )
    return DraftText(findings_text, impression_text, disclaimer_text, full.strip() + "\n", side_sentences)


def _render(env: Environment, name: str, context: dict[str, object], **extra: object) -> str:
    """Render one template; any template error is re-raised naming the template and where it was found."""
    try:
        template = env.get_template(name)
        return template.render(context, **extra)
    except TemplateError as exc:
        where = getattr(exc, "filename", None) or _source_of(env, name)
        raise TemplateCheckError(f"report template {name} ({where}): {type(exc).__name__}: {exc}") from exc


def _source_of(env: Environment, name: str) -> str:
    try:
        return env.get_template(name).filename or name
    except TemplateError:
        return name


def check_templates(template_dir: Path | None = None) -> None:
    """Render every template once with example findings (the site's from ``template_dir`` where it has
    them); raises :class:`TemplateCheckError` naming the template on any error."""
    example = ModelCard(
        name="check",
        version="0",
        architecture="check",
        input_size=224,
        trained=False,
        weights="none",
        weights_sha256="0" * 64,
    )
    findings = [
        SideFinding(Side.RIGHT, HardwareClass.THA, 0.9, {HardwareClass.THA: 0.9}, (View.AP_PELVIS,), ("1",), "ok"),
        SideFinding(Side.LEFT, None, 0.4, {HardwareClass.NONE: 0.4}, (View.AP_PELVIS,), ("1",), "low confidence"),
    ]
    render_draft(findings, model=example, study_description="", environment=make_environment(template_dir))
