"""Report text from side findings, through Jinja templates.

A draft has one section per pack (body region) that read images of the study, each with its side findings
(:class:`Section`). The base templates are in ``reporting/templates/``: ``finding.txt.j2`` (one side: also the
SR's finding text for that side), ``findings.txt.j2``, ``impression.txt.j2``, ``disclaimer.txt.j2`` and
``draft.txt.j2`` (the whole report). A pack's ``templates/`` folder replaces any of them by file name, and a
site folder (``template_dir``) replaces them before the packs do. Every template is rendered in Jinja's
sandbox (a site's or a pack's template is data, not code), with StrictUndefined; :func:`check_templates`
renders every template once with example data, so a template error is found at start-up rather than in a
report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

import predraft
from predraft.models.card import ModelCard
from predraft.models.pack import Pack, PackRegistry
from predraft.models.taxonomy import Side, View
from predraft.reporting.aggregate import SideFinding

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"


class TemplateCheckError(ValueError):
    """A report template that cannot be loaded or rendered; the message names the template and its folder."""


@dataclass(frozen=True)
class Section:
    """What one pack found in a study: its findings, one per side, and the model that read them."""

    pack: Pack
    model: ModelCard
    findings: Sequence[SideFinding]

    def __post_init__(self) -> None:
        if not self.findings:
            raise ValueError(f"the {self.pack.name} section needs at least one side finding")
        unknown = {f.top_class for f in self.findings} - set(self.pack.class_names)
        if unknown:
            raise ValueError(f"findings name {sorted(unknown)}, which are not classes of the pack {self.pack.name}")


@dataclass(frozen=True)
class DraftText:
    """The rendered report: its parts, the whole, and one sentence per pack and side for the SR's findings."""

    findings: str
    impression: str
    disclaimer: str
    full: str
    side_sentences: dict[tuple[str, Side], str]


@lru_cache(maxsize=16)
def template_environment(*template_dirs: Path | None) -> SandboxedEnvironment:
    """The shared environment of ``template_dirs`` (templates are compiled once per process)."""
    return make_environment(*template_dirs)


def make_environment(*template_dirs: Path | None) -> SandboxedEnvironment:
    """A sandboxed environment that looks in ``template_dirs`` in order (None skipped), then the base templates."""
    search_path = [str(folder) for folder in template_dirs if folder is not None]
    search_path.append(str(PACKAGE_TEMPLATES))
    return SandboxedEnvironment(
        loader=FileSystemLoader(search_path),
        undefined=StrictUndefined,
        autoescape=False,  # noqa: S701 - the reports are plain text, never HTML
        keep_trailing_newline=True,
    )


def _finding_context(pack: Pack, finding: SideFinding) -> dict[str, object]:
    label = pack.sides[finding.side]
    return {
        "pack": pack.name,
        "side": finding.side.value,
        "label": label,
        "hip_label": label,  # the name templates written for the hip alone use
        "sentence": pack.sentence(finding.hardware, finding.top_class),
        "finding_class": finding.hardware,
        "top_class": finding.top_class,
        "indeterminate": finding.indeterminate,
        "reason": finding.reason,
        "probability": round(finding.probability, 3),
        "view_labels": [view.label for view in finding.views],
    }


def render_draft(
    sections: Sequence[Section],
    *,
    study_description: str = "",
    patient_is_child: bool = False,
    environment: SandboxedEnvironment | None = None,
) -> DraftText:
    """Render findings, impression, disclaimer and the whole report from one section per pack. ``patient_is_child``
    (the tags say the patient was under 18: :func:`predraft.reporting.age.is_child`) adds the notice that no model
    here was trained on children (templates: ``patient_is_child``).

    Templates see ``findings`` (every side of every section, each with its ``label``, ``sentence``...),
    ``sections`` (each pack's ``title``, ``examination``, ``statement``, ``model`` and ``findings``), and, from
    the first section, ``model``, ``examination`` and ``statement``."""
    if not sections:
        raise ValueError("render_draft needs at least one section")
    env = environment or make_environment()
    views: list[View] = list(
        dict.fromkeys(view for section in sections for finding in section.findings for view in finding.views)
    )
    per_section = [[_finding_context(section.pack, finding) for finding in section.findings] for section in sections]
    section_contexts = [
        {
            "pack": section.pack.name,
            "title": section.pack.title,
            "examination": section.pack.examination,
            "statement": section.pack.statement,
            "model": section.model.model_dump(),
            "findings": finding_contexts,
        }
        for section, finding_contexts in zip(sections, per_section, strict=True)
    ]
    context: dict[str, object] = {
        "findings": [finding for finding_contexts in per_section for finding in finding_contexts],
        "sections": section_contexts,
        "view_labels": [view.label for view in views],
        "study_description": study_description,
        "examination": " and ".join(dict.fromkeys(section.pack.examination for section in sections)),
        "statement": sections[0].pack.statement,
        "model": section_contexts[0]["model"],
        "app_version": predraft.__version__,
        "patient_is_child": patient_is_child,
    }
    side_sentences = {
        (section.pack.name, finding.side): _render(env, "finding.txt.j2", context, finding=finding_context).strip()
        for section, finding_contexts in zip(sections, per_section, strict=True)
        for finding, finding_context in zip(section.findings, finding_contexts, strict=True)
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


def check_templates(pack: Pack, *template_dirs: Path | None) -> None:
    """Render every template once with example findings of ``pack`` (looking in ``template_dirs`` first, as a
    draft does); raises :class:`TemplateCheckError` naming the template on any error."""
    example = ModelCard(
        name="check",
        version="0",
        architecture="check",
        input_size=224,
        classes=pack.class_names,
        trained=False,
        weights="none",
        weights_sha256="0" * 64,
    )
    first, second = pack.class_names[:2]
    findings = [
        SideFinding(Side.RIGHT, first, 0.9, {first: 0.9, second: 0.1}, (pack.views[0],), ("1",), "ok"),
        SideFinding(Side.LEFT, None, 0.4, {second: 0.4, first: 0.3}, (pack.views[0],), ("1",), "low confidence"),
    ]
    render_draft([Section(pack, example, findings)], environment=make_environment(*template_dirs))


def check_pack_templates(registry: PackRegistry, site_dir: Path | None = None) -> None:
    """:func:`check_templates` for every installed pack, with the site's folder and the pack's own templates."""
    for installed in registry.packs:
        check_templates(installed.pack, site_dir, installed.templates)
