"""The database schema: studies, series, instances, predictions, drafts, their exports and an event log;
web users, their sessions and the reviews of drafts.

Alembic migrations in ``migrations/`` create these tables; keep the two in step.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy import Enum as SqlEnum
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from predraft.core.states import EventKind, ExportState, InstanceState, ReportKind, ReviewAction, Role, StudyState


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


def stored_enum(enum: type[StrEnum], *, length: int, constraint: str) -> SqlEnum:
    """A column holding one of ``enum``'s members: stored as its value in a VARCHAR of ``length`` (not a native
    database enum, so a new member needs no ALTER TYPE), refused by a CHECK constraint named ``constraint`` when
    it is no member's value (migration 0009 adds them to existing databases), read back as the member."""
    return SqlEnum(
        enum,
        native_enum=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
        validate_strings=True,
        create_constraint=True,
        name=constraint,
    )


class WorkLease:
    """Columns of a row whose work travels as a task message: the lease (see :mod:`predraft.workers.leases`).

    ``task_id`` and ``dispatched_at`` name the newest message sent for the row's work (stamped in the
    transaction that makes the work due, before the message is published); ``leased_at``, ``leased_until``
    and ``leased_by`` the worker that claimed it (its heartbeat renews the lease while the task runs);
    ``attempts`` counts the tries since the work was made due; ``retry_at`` is when a failed try's retry is
    due. All None (attempts 0) for a row whose work is done or was never sent.
    """

    task_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    leased_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Study(WorkLease, Base):
    """A study; its work item is the draft (queue ``draft``)."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    requested_procedure: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: StudyTime, ReferringPhysicianName and StudyID of its first instance, as received (QIDO-RS matches on them;
    #: empty for a study received before revision 0015).
    study_time: Mapped[str] = mapped_column(String(16), default="", server_default="")
    referring_physician_name: Mapped[str] = mapped_column(String(324), default="", server_default="")
    study_identifier: Mapped[str] = mapped_column(String(16), default="", server_default="")
    state: Mapped[StudyState] = mapped_column(
        stored_enum(StudyState, length=16, constraint="ck_studies_state"), index=True
    )
    generation: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: When the last of its instances was prepared, and classified (the draft starts after that).
    prepared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    classified_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    drafted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: A radiologist asked for the study to be drafted with this pack although routing said out of scope: its
    #: images go to that pack, whatever the tags and the gate say (None: routing decides).
    requested_pack: Mapped[str | None] = mapped_column(String(64), nullable=True)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    instances: Mapped[list[Instance]] = relationship(back_populates="study", order_by="Instance.id")
    drafts: Mapped[list[Draft]] = relationship(back_populates="study", order_by="Draft.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    #: SeriesNumber of its first instance, as received (empty when it had none, or before revision 0015).
    series_number: Mapped[str] = mapped_column(String(12), default="", server_default="")

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(WorkLease, Base):
    """A received image; its work items are ``prepare`` (while ``received``) and ``classify`` (``prepared``)."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    spool_path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(Integer)
    calling_ae: Mapped[str] = mapped_column(String(64), default="")  # calling AE title, or STOW:<user>
    #: InstanceNumber as received (empty when it had none, or before revision 0015).
    instance_number: Mapped[str] = mapped_column(String(12), default="", server_default="")
    state: Mapped[InstanceState] = mapped_column(
        stored_enum(InstanceState, length=16, constraint="ck_instances_state"), index=True
    )
    view: Mapped[str | None] = mapped_column(String(32), nullable=True)
    view_rule: Mapped[str | None] = mapped_column(String(64), nullable=True)
    side: Mapped[str | None] = mapped_column(String(16), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The body-part gate's top region and its probability (None: the gate did not run).
    region_read: Mapped[str | None] = mapped_column(String(32), nullable=True)
    region_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: A drafted image the radiologist should look at twice (predraft.models.scope.ScopeFlag), and why.
    scope_flag: Mapped[str | None] = mapped_column(String(32), nullable=True)
    scope_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The pack that reads this image (predraft.models.pack), chosen when it was prepared (None: not routed).
    pack: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    #: Last change of state; the sweeper re-sends work that has not moved for a while.
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    #: When spool retention deleted its file (predraft.workers.retention); None: the file is kept. The row stays.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    study: Mapped[Study] = relationship(back_populates="instances")
    series: Mapped[Series] = relationship(back_populates="instances")
    predictions: Mapped[list[Prediction]] = relationship(back_populates="instance", order_by="Prediction.id")


class Prediction(Base):
    """Class probabilities for one hip seen on one instance (an AP pelvis gives two)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("instance_id", "side", "model_version", name="uq_prediction_per_hip"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id"), index=True)
    side: Mapped[str] = mapped_column(String(16))
    view: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict[str, float]] = mapped_column(JSON)
    top_class: Mapped[str] = mapped_column(String(32))
    top_probability: Mapped[float] = mapped_column(Float)
    #: The model-free metal check of this hip (predraft.models.metal): None when it was not run.
    metal_present: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    metal_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: The rectangle of the stored image the model read, [top, bottom, left, right] (predraft.models.prepare.Region);
    #: None for predictions made before it was recorded.
    region: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    instance: Mapped[Instance] = relationship(back_populates="predictions")


class Draft(Base):
    """An SR predraft issued for a study, with its text: the unverified AI draft (``kind`` "draft"), or the
    verified report or rejection notice a radiologist's review of that draft produced (``kind`` "verified" or
    "rejection", :class:`predraft.core.states.ReportKind`), which supersedes it (``supersedes_id``). Every kind is
    exported the same way (the exports table)."""

    __tablename__ = "drafts"
    __table_args__ = (UniqueConstraint("study_id", "generation", "kind", name="uq_draft_per_generation"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    generation: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    findings: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    #: The packs whose findings the draft holds, in the order of its sections, joined by ", " (predraft.models.pack).
    pack: Mapped[str] = mapped_column(String(128), default="hip", server_default="hip")
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sr_series_uid: Mapped[str] = mapped_column(String(64))
    sr_path: Mapped[str] = mapped_column(Text)
    #: The AI results SR (TID 1500, predraft.reporting.results_sr) written beside an AI draft's narrative SR; None
    #: for reviews' SRs, for drafts made before it existed and where settings.report.ai_results_sr is off.
    results_sr_sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    results_sr_series_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    results_sr_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("drafts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[ReportKind] = mapped_column(
        stored_enum(ReportKind, length=16, constraint="ck_drafts_kind"),
        default=ReportKind.DRAFT,
        server_default=ReportKind.DRAFT.value,
        index=True,
    )
    #: The model card's ``synthetic_demo`` when it was drafted (None: drafted before this was recorded).
    synthetic_demo: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    #: The tags said the patient was under 18 (predraft.reporting.age): the draft carries a notice, the worklist a flag.
    patient_is_child: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    #: When spool retention deleted its SR file (``sr_path``; predraft.workers.retention); None: kept. The row stays.
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    study: Mapped[Study] = relationship(back_populates="drafts")
    exports: Mapped[list[Export]] = relationship(back_populates="draft", order_by="Export.destination")

    def documents(self) -> list[SrDocument]:
        """The SRs this row issued, the narrative one first, then the AI results SR where there is one: what is
        exported, listed and superseded together."""
        documents = [SrDocument(self.sr_sop_instance_uid, self.sr_series_uid, self.sr_path, results=False)]
        if self.results_sr_sop_instance_uid and self.results_sr_series_uid and self.results_sr_path:
            documents.append(
                SrDocument(self.results_sr_sop_instance_uid, self.results_sr_series_uid, self.results_sr_path, True)
            )
        return documents


@dataclass(frozen=True)
class SrDocument:
    """One SR file a drafts row issued: its SOP instance and series UIDs, its path in the spool, and whether it
    is the AI results SR (else the narrative one)."""

    sop_instance_uid: str
    series_uid: str
    path: str
    results: bool


class Export(WorkLease, Base):
    """The export of one draft's SR to one configured destination (settings ``export_destinations``).

    ``state`` is a :class:`predraft.core.states.ExportState`; ``attempts`` counts the tries since the row was
    (re)queued, ``last_error`` holds the last failure (or the warning a destination stored it with), and
    ``exported_at`` when the destination stored it.
    """

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("draft_id", "destination", name="uq_export_per_destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    draft_id: Mapped[int] = mapped_column(ForeignKey("drafts.id"))
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[ExportState] = mapped_column(
        stored_enum(ExportState, length=16, constraint="ck_exports_state"), index=True
    )
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    exported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    draft: Mapped[Draft] = relationship(back_populates="exports")


#: A table whose rows carry a lease (:class:`WorkLease`).
LeasedModel = type[Instance] | type[Study] | type[Export]
#: The tables whose rows carry a lease.
LEASED_MODELS: tuple[LeasedModel, ...] = (Instance, Study, Export)


class DeadLetter(Base):
    """A task that failed for good (its retries spent): what it was, for what, and why.

    ``predraft queue retry`` (or :func:`predraft.workers.dead_letters.retry_dead_letter`) sends its work again.
    """

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_name: Mapped[str] = mapped_column(String(64))
    task_id: Mapped[str] = mapped_column(String(64), default="")
    #: The study or instance row the task was about (its first argument).
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True, index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    error: Mapped[str] = mapped_column(Text, default="")
    traceback: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    retried_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Event(Base):
    """The event log: what happened to which study or instance. Never holds patient data."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True, index=True)
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("instances.id"), nullable=True)
    kind: Mapped[EventKind] = mapped_column(stored_enum(EventKind, length=32, constraint="ck_events_kind"))
    message: Mapped[str] = mapped_column(Text, default="")


class User(Base):
    """A web user: ``role`` is a :class:`predraft.core.states.Role`; the password is an argon2id hash."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    #: As DICOM writes a person's name (``Family^Given``): the Verifying Observer Name of the SRs they sign.
    display_name: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(stored_enum(Role, length=16, constraint="ck_users_role"))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    password_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class WebSession(Base):
    """A logged-in browser. The cookie holds a random token; only its keyed hash is stored, so the table
    cannot be replayed. Logging out, a password change or ``expires_at`` ends it."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    user: Mapped[User] = relationship()


class Review(Base):
    """A radiologist's decision on one AI draft: who, when, what (:class:`predraft.core.states.ReviewAction`), the
    final text and its unified diff from the draft's text, the reason of a rejection, and the SR it issued
    (``report_id``: a drafts row of kind "verified" or "rejection"). One review per draft."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    draft_id: Mapped[int] = mapped_column(ForeignKey("drafts.id"), unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    action: Mapped[ReviewAction] = mapped_column(
        stored_enum(ReviewAction, length=16, constraint="ck_reviews_action"), index=True
    )
    final_text: Mapped[str] = mapped_column(Text, default="")
    diff: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    report_id: Mapped[int | None] = mapped_column(ForeignKey("drafts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)

    draft: Mapped[Draft] = relationship(foreign_keys=[draft_id])
    report: Mapped[Draft | None] = relationship(foreign_keys=[report_id])
    user: Mapped[User] = relationship()
