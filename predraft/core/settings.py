"""One settings object for every predraft process, grouped by the part of predraft that reads each setting.

:class:`Settings` holds a small core that every process reads (``var_dir``, ``database_url``, ``broker_url``,
``spool_dir``, ``log_level``, ``log_format``, ``metrics_host``) and one area per part: ``listener`` (DIMSE, TLS,
ingest bounds), ``http`` (where the HTTP app binds), ``dicomweb``, ``worklist``, ``workers`` (Celery, decode
sandbox, study stability and the sweeper), ``model``, ``report`` (templates, view aggregation), ``export`` and
``retention`` (how long the spool keeps the files of finished studies).

Values come, in order of precedence, from ``PREDRAFT_*`` environment variables, then from an optional TOML file
(``PREDRAFT_CONFIG=path/to/predraft.toml``), then from the embedded defaults: SQLite, spool and broker under
``./var/``, DIMSE on 127.0.0.1:11112 with AE title ``PREDRAFT``, HTTP on 127.0.0.1:8080. Every source speaks the
flat names (``PREDRAFT_DIMSE_PORT``, TOML ``dimse_port = 104``, ``Settings(dimse_port=104)``), which
:data:`FLAT_FIELDS` places in their areas (``settings.listener.port``); a TOML file may also give an area as a
table (``[listener]`` ``port = 104``). A validation error names the setting by its flat name.

Build it with :func:`get_settings`; nothing reads the environment at import time.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import InitErrorDetails
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from predraft.models.pack import InstalledPack, Pack, PackError, PackRegistry, installed_packs
from predraft.models.scope import GATE_CLASS
from predraft.models.taskcard import GATE_CARD
from predraft.models.taxonomy import View
from predraft.reporting.aggregate import AggregationRule

CONFIG_ENV_VAR = "PREDRAFT_CONFIG"
#: Every setting's environment variable is this prefix and its flat name upper-cased (:data:`FLAT_FIELDS`).
ENV_PREFIX = "PREDRAFT_"
#: The most DIMSE listener processes (dimse_processes): past a handful the database and the disk, not the
#: CPU, bound how fast instances are taken in, and each process holds its own copy of the imports.
MAX_LISTENER_PROCESSES = 8
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.match(value) or not value.strip():
        raise ValueError(f"{value!r} is not a DICOM AE title (1-16 printable characters, no backslash)")
    return value.strip()


#: A DICOM Application Entity title (PS3.5 6.2, VR AE): 1-16 printable characters, no backslash, not all
#: spaces; leading and trailing spaces are not significant and are removed.
AETitle = Annotated[str, AfterValidator(_check_ae_title)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Number words a description may spell a view count with ("THREE VIEWS").
_NUMBER_WORDS = {
    "ONE": 1,
    "TWO": 2,
    "THREE": 3,
    "FOUR": 4,
    "FIVE": 5,
    "SIX": 6,
    "SEVEN": 7,
    "EIGHT": 8,
    "NINE": 9,
    "TEN": 10,
}
_COUNT = r"(?<![\w.+-])(\d+|" + "|".join(_NUMBER_WORDS) + r")"
_VIEW_WORD = r"(?:VIEWS|VIEW\(S\)|VIEW|VWS|VW|V)(?![\w(])"
#: A minimum ("2+ VIEWS", "MIN 3 VIEWS", "MINIMUM OF 3 VIEWS", "3 OR MORE VIEWS", "AT LEAST 2 VIEWS") or a count
#: per side ("2 VIEWS EACH"): no number of images makes such a study complete.
DEFAULT_MINIMUM_VIEWS_PATTERN = (
    r"(?:\bMIN(?:IMUM|\.)?\s*(?:OF\s+)?|\bAT\s+LEAST\s+)"
    + _COUNT
    + r"[\s-]*"
    + _VIEW_WORD
    + r"|"
    + _COUNT
    + r"\s*(?:\+|OR\s+MORE)\s*"
    + _VIEW_WORD
    + r"|"
    + _COUNT
    + r"[\s-]*"
    + _VIEW_WORD
    + r"\s*(?:\+|(?:OR\s+MORE|MIN(?:IMUM)?|EACH|PER\s+SIDE)\b)"
)
#: An exact count in its usual spellings: "3 VIEWS", "3V", "3 VW", "3 VWS", "3VIEWS", "THREE VIEWS", "2-VIEW",
#: "3 VIEW(S)".
DEFAULT_EXACT_VIEWS_PATTERN = _COUNT + r"[\s-]*" + _VIEW_WORD


def _view_count(text: str) -> int | None:
    """The number ``text`` spells (digits, or a word from one to ten); None for anything else or below 1."""
    text = text.strip().upper()
    count = int(text) if text.isdigit() else _NUMBER_WORDS.get(text)
    return count if count is not None and count >= 1 else None


class ExpectedViewsRule(BaseModel):
    """A study whose description matches ``pattern`` is complete once it holds ``views`` images.

    With ``views`` unset, the pattern's first group gives the number ("XR PELVIS 3 VIEWS", or a number word
    from one to ten: "THREE VIEWS"); a group that spells no number of at least 1 gives no count. With
    ``minimum`` set, a match gives no count: the description names a minimum ("2+ VIEWS"), so the study waits
    for its quiet time. Rules are tried in order and the first that matches decides
    (:func:`expected_view_count`).
    """

    pattern: str
    views: int | None = Field(None, ge=1)
    minimum: bool = False

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a regular expression: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _check_views_source(self) -> ExpectedViewsRule:
        if self.minimum and self.views is not None:
            raise ValueError(f"pattern {self.pattern!r}: a minimum rule gives no count; set views or minimum, not both")
        if not self.minimum and self.views is None and re.compile(self.pattern).groups < 1:
            raise ValueError(f"pattern {self.pattern!r} needs a group giving the number of views, or set views")
        return self

    def search(self, description: str) -> re.Match[str] | None:
        """Where ``pattern`` is found in ``description`` (case-insensitive), or None."""
        return re.search(self.pattern, description, flags=re.IGNORECASE)

    def count(self, match: re.Match[str]) -> int | None:
        """The number of views a match of this rule gives: ``views``, else its first group's number; None for a
        minimum rule or a group that spells no number."""
        if self.minimum:
            return None
        if self.views is not None:
            return self.views
        return _view_count(match.group(1) or "")

    def expected(self, description: str) -> int | None:
        """The number of views this rule expects for ``description``; None when it does not match, when it is a
        minimum rule, or when its group spells no number."""
        match = self.search(description)
        return None if match is None else self.count(match)


def default_expected_views() -> list[ExpectedViewsRule]:
    """The default rules: a minimum first (no count), then an exact count in its usual spellings."""
    return [
        ExpectedViewsRule(pattern=DEFAULT_MINIMUM_VIEWS_PATTERN, minimum=True),
        ExpectedViewsRule(pattern=DEFAULT_EXACT_VIEWS_PATTERN),
    ]


def expected_view_count(rules: Sequence[ExpectedViewsRule], *descriptions: str | None) -> int | None:
    """The number of images that make a study complete, by the first rule (in order) that matches one of its
    ``descriptions`` (StudyDescription, then RequestedProcedureDescription); None when no rule matches, or when
    the first that does gives no count (a minimum): then the study waits for its quiet time."""
    for rule in rules:
        for description in descriptions:
            match = rule.search(description or "")
            if match is not None:
                return rule.count(match)
    return None


# --- Export destinations: where drafted SRs are sent (predraft.workers.export) ---------------------------------------

_DESTINATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check_destination_name(value: str) -> str:
    if not _DESTINATION_NAME.match(value):
        raise ValueError(
            f"destination name {value!r} is not 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
        )
    return value


class DimseDestination(BaseModel):
    """A C-STORE SCP that receives every drafted SR: ``ae_title`` at ``host``:``port``.

    predraft calls as ``calling_ae`` (default: its own ``ae_title``). With ``tls`` the association runs over
    TLS 1.2+; the server's certificate is checked against ``tls_ca`` (default: the system's CAs) and its
    host name; ``tls_certificate`` and ``tls_private_key`` give a client certificate when the SCP wants one.
    """

    model_config = {"extra": "forbid"}

    kind: Literal["dimse"] = "dimse"
    name: str
    ae_title: AETitle
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    calling_ae: AETitle | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    timeout: float = Field(30.0, gt=0, description="Seconds for connecting, association and each response.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_destination_name(value)

    @model_validator(mode="after")
    def _check_tls(self) -> DimseDestination:
        given = [name for name in ("tls_ca", "tls_certificate", "tls_private_key") if getattr(self, name) is not None]
        if given and not self.tls:
            raise ValueError(f"destination {self.name!r}: {', '.join(given)} set but tls is false")
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError(f"destination {self.name!r}: tls_certificate and tls_private_key must be set together")
        for name in given:
            setattr(self, name, getattr(self, name).expanduser().absolute())
        return self


class StowDestination(BaseModel):
    """A DICOMweb server that receives every drafted SR by STOW-RS: ``POST <url>/studies``.

    ``url`` is the service root (``https://pacs/dicom-web``). ``auth`` is ``none``, ``basic`` (``username``
    and ``password``) or ``bearer`` (``token``); credentials never go in the URL. ``ca_bundle`` replaces the
    system's CAs for an https URL.
    """

    model_config = {"extra": "forbid"}

    kind: Literal["stow"] = "stow"
    name: str
    url: str
    auth: Literal["none", "basic", "bearer"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    ca_bundle: Path | None = None
    timeout: float = Field(30.0, gt=0, description="Seconds for connecting and for the answer.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return _check_destination_name(value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"url {value!r} is not an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url holds credentials: give them in auth (basic: username/password, bearer: token)")
        if parts.query or parts.fragment:
            raise ValueError(f"url {value!r} has a query or fragment: give the DICOMweb service root")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_auth(self) -> StowDestination:
        wanted = {"none": set(), "basic": {"username", "password"}, "bearer": {"token"}}[self.auth]
        given = {name for name in ("username", "password", "token") if getattr(self, name) is not None}
        if wanted - given:
            raise ValueError(f"destination {self.name!r}: auth {self.auth!r} needs {', '.join(sorted(wanted - given))}")
        if given - wanted:
            raise ValueError(
                f"destination {self.name!r}: {', '.join(sorted(given - wanted))} given, but auth is {self.auth!r}"
            )
        if self.ca_bundle is not None:
            if urlsplit(self.url).scheme != "https":
                raise ValueError(f"destination {self.name!r}: ca_bundle needs an https:// url")
            self.ca_bundle = self.ca_bundle.expanduser().absolute()
        return self


ExportDestination = Annotated[DimseDestination | StowDestination, Field(discriminator="kind")]


# --- The areas: one model per part of predraft, holding what that part reads ---------------------------------------


class _Area(BaseModel):
    """An area of the settings: unknown keys are refused, and defaults are validated like given values."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ListenerSettings(_Area):
    """The receiving side: the DIMSE listener (address, AE titles, TLS, association limits), the bounds every
    received data set is held to (DIMSE and STOW-RS alike), and the listener's metrics port."""

    host: str = Field("127.0.0.1", description="Address the DIMSE listener binds to.")
    port: int = Field(11112, ge=1, le=65535, description="DIMSE port.")
    ae_title: AETitle = Field("PREDRAFT", description="predraft's own AE title.")
    allowed_calling_aes: list[AETitle] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty allows any, which is refused off loopback.",
    )
    require_called_ae_title: bool = Field(
        False,
        description="Refuse an association whose called AE title is not ae_title (A-ASSOCIATE-RJ, called AE "
        "title not recognised). Off: any called AE title is answered, as Orthanc and most archives do.",
    )
    allowed_addresses: list[str] = Field(
        default_factory=list,
        description="Source addresses or networks (CIDR) allowed to connect to DIMSE; empty allows any.",
    )
    max_pdu: int = Field(262144, ge=0, description="Largest PDU predraft accepts, in bytes (0: unlimited).")
    max_associations: int = Field(
        16, ge=1, description="Concurrent DIMSE associations established, from all callers together."
    )
    max_connections_per_address: int = Field(
        8,
        ge=1,
        description="Open DIMSE connections from one source address, associated or not; more are closed "
        "at once, so one sender cannot take the others' places.",
    )
    association_request_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds from a DIMSE connection's opening until its whole A-ASSOCIATE-RQ is in; "
        "a silent or trickling connection is closed then.",
    )
    idle_timeout_seconds: float = Field(
        60.0, gt=0, description="Seconds an association may wait for its peer's next PDU before it is aborted."
    )
    tls_certificate: Path | None = Field(
        None, description="PEM server certificate; with tls_private_key enables DICOM TLS."
    )
    tls_private_key: Path | None = Field(None, description="PEM private key of tls_certificate.")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle; when set, DICOM TLS clients must present a certificate it signed."
    )
    max_dataset_bytes: int = Field(
        128 * 1024 * 1024,
        ge=1024 * 1024,
        description="Largest data set predraft stores or reads, as received or "
        "after inflating a Deflated transfer syntax (a deflate bomb is refused before it is inflated further).",
    )
    max_sequence_depth: int = Field(
        16, ge=2, le=64, description="Deepest nesting of sequences in a data set predraft stores."
    )
    spool_min_free_bytes: int = Field(
        200_000_000, ge=0, description="Refuse new instances (out of resources) below this much free spool space."
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the DIMSE listener's Prometheus endpoint (/metrics; deploy/ uses 9110); 0: none. "
        "With several listener processes, process i serves on this port plus i.",
    )
    processes: int = Field(
        0,
        ge=0,
        le=MAX_LISTENER_PROCESSES,
        description="DIMSE listener processes sharing the port (one listening socket); 0: one per usable CPU core, "
        f"at most {MAX_LISTENER_PROCESSES}.",
    )

    @model_validator(mode="after")
    def _check_tls_and_callers(self) -> ListenerSettings:
        """TLS files come as a pair (a client CA only with them); addresses parse; off loopback, callers are named."""
        if (self.tls_certificate is None) != (self.tls_private_key is None):
            raise ValueError("tls_certificate and tls_private_key must be set together")
        if self.tls_client_ca is not None and self.tls_certificate is None:
            raise ValueError("tls_client_ca needs tls_certificate and tls_private_key")
        for address in self.allowed_addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError as exc:
                raise ValueError(f"allowed_addresses entry {address!r} is not an address or network") from exc
        if not self.allowed_calling_aes and not _is_loopback(self.host):
            raise ValueError(
                f"dimse_host {self.host!r} is not a loopback address: set allowed_calling_aes "
                "(PREDRAFT_ALLOWED_CALLING_AES='[\"PACS_AE\"]') so that only known callers can store"
            )
        return self

    @property
    def tls_enabled(self) -> bool:
        """Whether the DIMSE listener speaks TLS (a server certificate is configured)."""
        return self.tls_certificate is not None

    @property
    def process_count(self) -> int:
        """How many listener processes run: ``processes``, or with 0 one per CPU core this process may use
        (its affinity, which a container's cpuset narrows), at most MAX_LISTENER_PROCESSES."""
        if self.processes:
            return self.processes
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(cores, MAX_LISTENER_PROCESSES))


class HttpSettings(_Area):
    """Where the HTTP app (worklist, DICOMweb, admin, /healthz: ``predraft.http``) binds."""

    host: str = Field("127.0.0.1", description="Address the HTTP app binds to.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")


class DicomwebSettings(_Area):
    """DICOMweb (STOW/QIDO/WADO, ``predraft.listener.dicomweb``): who may call it and how much one upload holds."""

    tokens: list[SecretStr] = Field(
        default_factory=list, description="Bearer tokens accepted by DICOMweb (STOW/QIDO/WADO)."
    )
    users: dict[str, SecretStr] = Field(
        default_factory=dict, description="HTTP basic-auth users and passwords accepted by DICOMweb."
    )
    max_upload_bytes: int = Field(
        2_000_000_000, ge=1, description="Largest STOW-RS request body, in bytes (larger: 413)."
    )

    @field_validator("tokens")
    @classmethod
    def _check_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(not token.get_secret_value().strip() for token in value):
            raise ValueError(
                "dicomweb_tokens holds an empty token (an unset variable in the JSON list?): an empty "
                "bearer token would open DICOMweb to anyone"
            )
        return value

    @field_validator("users")
    @classmethod
    def _check_users(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        empty = sorted(user for user, password in value.items() if not user or not password.get_secret_value())
        if empty:
            raise ValueError(f"dicomweb_users {empty} have an empty name or password")
        return value


class WorklistSettings(_Area):
    """The worklist (``predraft.worklist``): web sessions, login throttling, the SRs a review issues and the OHIF
    Viewer it may serve."""

    session_secret: SecretStr | None = Field(
        None,
        description="Key of the web sessions' token hashes and CSRF tokens (at least 32 characters); "
        "default: generated once into <var_dir>/session_secret (mode 0600).",
    )
    cookie_secure: bool = Field(
        True,
        description="Send the session cookie over HTTPS only. Browsers treat http://127.0.0.1 and "
        "http://localhost as secure, so the embedded default keeps it on.",
    )
    session_lifetime_minutes: int = Field(
        720, ge=1, le=7 * 24 * 60, description="How long a login lasts before the user must log in again."
    )
    login_failures_per_user: int = Field(
        5,
        ge=1,
        description="Failed logins for one user name within login_failure_window_seconds before "
        "further tries are refused (HTTP 429) until the oldest leaves the window.",
    )
    login_failures_per_address: int = Field(
        20, ge=1, description="The same for one client address (behind a reverse proxy: the proxy's)."
    )
    login_failure_window_seconds: int = Field(
        300, ge=1, le=24 * 3600, description="The moving window in which failed logins are counted."
    )
    verifying_organization: str = Field(
        "Unspecified",
        min_length=1,
        max_length=64,
        description="Verifying Organization (DICOM type 1) of the SRs a radiologist's review issues: the site's name.",
    )
    viewer_dir: Path | None = Field(
        None,
        description="The dist/ folder of an installed OHIF Viewer (`predraft viewer install`), served at /viewer/ "
        "behind the worklist's login; unset: no viewer, and no 'Open in viewer' link.",
    )

    @field_validator("viewer_dir")
    @classmethod
    def _check_viewer_dir(cls, value: Path | None) -> Path | None:
        """A viewer folder is made absolute and must hold the viewer's index.html."""
        if value is None:
            return None
        value = value.expanduser().absolute()
        if not (value / "index.html").is_file():
            raise ValueError(
                f"viewer_dir {value} holds no index.html: give the dist/ folder `predraft viewer install` printed"
            )
        return value

    @field_validator("session_secret")
    @classmethod
    def _check_session_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError(
                "session_secret must be at least 32 characters (or unset: one is generated into the var dir)"
            )
        return value


class WorkersSettings(_Area):
    """The pipeline's workers (``predraft.workers``): the embedded Celery worker, the decode sandbox, and the
    stability thread (run by the listener) that finds ready studies and sends lost work again."""

    concurrency: int = Field(2, ge=1, description="Threads of the embedded Celery worker.")
    pool: Literal["threads", "prefork", "solo"] = Field("threads", description="Celery pool.")
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of a worker's Prometheus endpoint (/metrics; deploy/ uses 9111); 0: "
        "none. Each worker on one host needs its own (predraft worker --metrics-port).",
    )
    decode_timeout_seconds: float = Field(
        60.0, gt=0, description="Longest a pixel decode and preparation may run; then that instance fails."
    )
    decode_memory_bytes: int = Field(
        3 * 1024 * 1024 * 1024,
        ge=1024 * 1024 * 1024,
        description="Memory (address space) a pixel decode and "
        "preparation may use; beyond it that instance fails. The decoding process itself takes about 0.7 GiB.",
    )
    quiet_seconds: float = Field(10.0, gt=0, description="A study is ready after this long without a new instance.")
    expected_views: list[ExpectedViewsRule] = Field(
        default_factory=default_expected_views,
        description="Rules on StudyDescription/RequestedProcedureDescription giving the number of views that "
        "make a study complete before its quiet time; tried in order, the first that matches decides, and a "
        "rule with minimum true means no count (the study waits for its quiet time).",
    )
    stability_poll_seconds: float = Field(1.0, gt=0, description="How often the listener looks for ready studies.")
    sweep_interval_seconds: float = Field(
        30.0, gt=0, description="How often the listener's sweeper looks for pending work that no queue holds."
    )
    sweep_stale_seconds: float = Field(
        120.0, gt=0, description="How long pending work must sit unmoved (and unqueued) before it is sent again."
    )


class ModelSettings(_Area):
    """The networks: the classifier's and the gate's cards, the device they run on and the micro-batcher."""

    card: Path | None = Field(
        None,
        description="Model card (JSON) beside its safetensors weights for the bundled hip pack; default the pack's "
        "own, the demo model (phantoms and public radiographs; not for clinical use)",
    )
    packs_dir: Path | None = Field(
        None,
        description="A site's folder of packs (one folder each, with its pack.toml, card and weights); a site's pack "
        "reads its regions before a bundled one (predraft.models.pack)",
    )
    gate_card: Path | None = Field(
        None,
        description="Body-part gate and hardware check card (JSON, predraft.models.taskcard.TaskCard) beside its "
        "weights; default the bundled gate (trained on FracAtlas)",
    )
    device: str = Field("cpu", description="Torch device for classification: cpu, cuda or cuda:N.")
    voi_window_index: int = Field(0, ge=0, description="Which of an image's VOI windows to apply (0: the first).")
    classify_batch_size: int = Field(64, ge=1, description="Largest batch the classifier's micro-batcher forms.")
    classify_batch_wait_ms: float = Field(
        20.0, ge=0, description="How long the micro-batcher waits for more images before running a partial batch."
    )
    torch_compile: bool = Field(False, description="torch.compile the network (CUDA only).")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", value):
            raise ValueError(f"device {value!r} is not one of cpu, cuda, cuda:N")
        return value

    @model_validator(mode="after")
    def _absolute_card(self) -> ModelSettings:
        """A configured model card and packs folder are made absolute against the working directory (the gate's
        card is taken as given); the packs folder must exist."""
        if self.card is not None:
            self.card = self.card.expanduser().absolute()
        if self.packs_dir is not None:
            self.packs_dir = self.packs_dir.expanduser().absolute()
            if not self.packs_dir.is_dir():
                raise ValueError(f"packs_dir {self.packs_dir} is not a folder")
        return self

    def packs(self, *, verify_weights: bool = False) -> PackRegistry:
        """The installed packs: the bundled ones (the hip pack's card replaced by ``card`` when set) and the site's
        from ``packs_dir``; read from their files on each call, so a changed pack is seen. PackError if one is
        unusable."""
        return installed_packs(self.packs_dir, default_card=self.card, verify_weights=verify_weights)

    @property
    def hip_pack(self) -> InstalledPack:
        """The pack that reads hips and pelves (a site's before the bundled one)."""
        installed = self.packs().for_region(GATE_CLASS)
        if installed is None:  # the bundled hip pack reads it, so only a broken installation gets here
            raise PackError(f"no installed pack reads the region {GATE_CLASS!r}")
        return installed

    @property
    def card_path(self) -> Path:
        """The card of the model that reads hips: the hip pack's (:attr:`hip_pack`)."""
        return self.hip_pack.card_path

    @property
    def gate_card_path(self) -> Path:
        """The gate card in use: the configured one, or the bundled gate's (``models/gate/card.json``)."""
        return self.gate_card or GATE_CARD


class ReportSettings(_Area):
    """How a draft is written (``predraft.reporting``): the site's templates and how views combine per side, over
    each pack's defaults."""

    template_dir: Path | None = Field(
        None, description="Site folder of report templates; a file there replaces the packaged one of that name."
    )
    ai_results_sr: bool = Field(
        True,
        description="Write the AI results SR (TID 1500, IHE AI Results) beside each draft's narrative SR, and export "
        "it with it; off: the narrative SR only.",
    )
    aggregation_view_weights: dict[View, float] = Field(
        default_factory=dict,
        description="Weight of each view when a side's images are combined, over the pack's (views not named keep "
        "the pack's weight).",
    )
    aggregation_disagreement_margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="How much more an image may prefer its own class before the views disagree (default: the "
        "pack's; the hip's 0.25).",
    )
    aggregation_hard_pair_margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="The same margin for the pack's hard pairs (the hip's THA/hemi, post-infectious/THA+fixation), "
        "and the lead the top class of a hard pair needs over the other (default: the pack's; the hip's 0.15).",
    )

    @model_validator(mode="after")
    def _check_templates_and_rule(self) -> ReportSettings:
        """A template folder is made absolute and must exist; the view weights must be positive."""
        if self.template_dir is not None:
            self.template_dir = self.template_dir.expanduser().absolute()
            if not self.template_dir.is_dir():
                raise ValueError(f"template_dir {self.template_dir} is not a folder")
        AggregationRule(view_weights=self.aggregation_view_weights)  # validates the weights
        return self

    def aggregation_rule(self, pack: Pack) -> AggregationRule:
        """The rule that combines the views of one side read by ``pack`` (:mod:`predraft.reporting.aggregate`):
        the pack's defaults with this site's overrides."""
        return AggregationRule.from_pack(
            pack,
            view_weights=self.aggregation_view_weights,
            disagreement_margin=self.aggregation_disagreement_margin,
            hard_pair_margin=self.aggregation_hard_pair_margin,
        )


class ExportSettings(_Area):
    """Export of drafted SRs to the PACS (``predraft.workers.export``): one task per draft and destination."""

    destinations: list[ExportDestination] = Field(
        default_factory=list,
        description="Where every drafted SR is sent: C-STORE SCPs (kind dimse) and STOW-RS servers (kind stow); "
        "empty keeps SRs in the spool only.",
    )
    max_retries: int = Field(
        8, ge=0, description="Retries of an export after a network error or a temporary refusal; then it is dead."
    )
    retry_delay_seconds: float = Field(
        10.0, ge=0, description="Wait before the first retry of an export; doubled for each further retry."
    )
    retry_max_delay_seconds: float = Field(600.0, ge=0, description="Longest wait between two retries.")

    @model_validator(mode="after")
    def _check_unique_names(self) -> ExportSettings:
        """Destination names are unique: they key the exports table."""
        names = [destination.name for destination in self.destinations]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"export_destinations names {repeated} more than once: names must be unique")
        return self

    def destination(self, name: str) -> DimseDestination | StowDestination:
        """The export destination called ``name``; KeyError naming the configured ones if there is none."""
        for destination in self.destinations:
            if destination.name == name:
                return destination
        known = ", ".join(d.name for d in self.destinations) or "none"
        raise KeyError(f"no export destination {name!r} (configured: {known})")


class RetentionSettings(_Area):
    """Spool retention (``predraft.workers.retention``): how long the files of finished studies stay in the spool.
    Unset keeps them forever; database rows are never deleted, only files."""

    images_days: float | None = Field(
        None,
        gt=0,
        description="Days after its last activity that the received images of a finished study (reviewed, or "
        "drafted with every export sent) are deleted from the spool; unset: kept forever.",
    )
    srs_days: float | None = Field(
        None,
        gt=0,
        description="The same for the SR files predraft issued for a finished study (drafts, verified reports); "
        "unset: kept forever.",
    )
    interval_seconds: float = Field(
        3600.0, gt=0, description="How often the listener purges what retention lets go (when either is set)."
    )


# --- Flat names: every PREDRAFT_<NAME> variable, TOML key and keyword, and where its value lives ------------------

#: The one mapping from a setting's flat name (``PREDRAFT_<NAME>`` upper-cased, a top-level TOML key, a keyword of
#: :class:`Settings`) to its place: ``(field,)`` at the top level, ``(area, field)`` in an area. Environment, TOML
#: file and keywords all go through :func:`nest`; validation errors are reported under these names again.
FLAT_FIELDS: dict[str, tuple[str, ...]] = {
    "var_dir": ("var_dir",),
    "database_url": ("database_url",),
    "broker_url": ("broker_url",),
    "spool_dir": ("spool_dir",),
    "log_level": ("log_level",),
    "log_format": ("log_format",),
    "metrics_host": ("metrics_host",),
    "dimse_host": ("listener", "host"),
    "dimse_port": ("listener", "port"),
    "ae_title": ("listener", "ae_title"),
    "allowed_calling_aes": ("listener", "allowed_calling_aes"),
    "require_called_ae_title": ("listener", "require_called_ae_title"),
    "allowed_addresses": ("listener", "allowed_addresses"),
    "dimse_max_pdu": ("listener", "max_pdu"),
    "dimse_max_associations": ("listener", "max_associations"),
    "dimse_max_connections_per_address": ("listener", "max_connections_per_address"),
    "dimse_association_request_timeout_seconds": ("listener", "association_request_timeout_seconds"),
    "dimse_idle_timeout_seconds": ("listener", "idle_timeout_seconds"),
    "tls_certificate": ("listener", "tls_certificate"),
    "tls_private_key": ("listener", "tls_private_key"),
    "tls_client_ca": ("listener", "tls_client_ca"),
    "max_dataset_bytes": ("listener", "max_dataset_bytes"),
    "max_sequence_depth": ("listener", "max_sequence_depth"),
    "spool_min_free_bytes": ("listener", "spool_min_free_bytes"),
    "listener_metrics_port": ("listener", "metrics_port"),
    "dimse_processes": ("listener", "processes"),
    "http_host": ("http", "host"),
    "http_port": ("http", "port"),
    "dicomweb_tokens": ("dicomweb", "tokens"),
    "dicomweb_users": ("dicomweb", "users"),
    "dicomweb_max_upload_bytes": ("dicomweb", "max_upload_bytes"),
    "session_secret": ("worklist", "session_secret"),
    "cookie_secure": ("worklist", "cookie_secure"),
    "session_lifetime_minutes": ("worklist", "session_lifetime_minutes"),
    "login_failures_per_user": ("worklist", "login_failures_per_user"),
    "login_failures_per_address": ("worklist", "login_failures_per_address"),
    "login_failure_window_seconds": ("worklist", "login_failure_window_seconds"),
    "verifying_organization": ("worklist", "verifying_organization"),
    "viewer_dir": ("worklist", "viewer_dir"),
    "worker_concurrency": ("workers", "concurrency"),
    "worker_pool": ("workers", "pool"),
    "worker_metrics_port": ("workers", "metrics_port"),
    "decode_timeout_seconds": ("workers", "decode_timeout_seconds"),
    "decode_memory_bytes": ("workers", "decode_memory_bytes"),
    "quiet_seconds": ("workers", "quiet_seconds"),
    "expected_views": ("workers", "expected_views"),
    "stability_poll_seconds": ("workers", "stability_poll_seconds"),
    "sweep_interval_seconds": ("workers", "sweep_interval_seconds"),
    "sweep_stale_seconds": ("workers", "sweep_stale_seconds"),
    "model": ("model", "card"),
    "gate_model": ("model", "gate_card"),
    "packs_dir": ("model", "packs_dir"),
    "device": ("model", "device"),
    "voi_window_index": ("model", "voi_window_index"),
    "classify_batch_size": ("model", "classify_batch_size"),
    "classify_batch_wait_ms": ("model", "classify_batch_wait_ms"),
    "torch_compile": ("model", "torch_compile"),
    "template_dir": ("report", "template_dir"),
    "ai_results_sr": ("report", "ai_results_sr"),
    "aggregation_view_weights": ("report", "aggregation_view_weights"),
    "aggregation_disagreement_margin": ("report", "aggregation_disagreement_margin"),
    "aggregation_hard_pair_margin": ("report", "aggregation_hard_pair_margin"),
    "export_destinations": ("export", "destinations"),
    "export_max_retries": ("export", "max_retries"),
    "export_retry_delay_seconds": ("export", "retry_delay_seconds"),
    "export_retry_max_delay_seconds": ("export", "retry_max_delay_seconds"),
    "retention_images_days": ("retention", "images_days"),
    "retention_srs_days": ("retention", "srs_days"),
    "retention_interval_seconds": ("retention", "interval_seconds"),
}
_FLAT_NAME_OF = {place: name for name, place in FLAT_FIELDS.items()}


def environment_variable(flat_name: str) -> str:
    """The environment variable that sets the setting called ``flat_name``: ``PREDRAFT_<FLAT_NAME>``."""
    return f"{ENV_PREFIX}{flat_name.upper()}"


def nest(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` keyed by flat names, with each moved to its place in :data:`FLAT_FIELDS`.

    An area given as a table (TOML ``[listener]``) is taken as it is, and a flat name of the same source wins
    over the table's key. Any other key passes through unchanged, for validation to refuse it by its name.
    """
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if key in AREAS and isinstance(value, Mapping):
            nested[key] = dict(value)
    for key, value in values.items():
        place = FLAT_FIELDS.get(key)
        if place is None:
            nested.setdefault(key, value)
        elif len(place) == 1:
            nested[key] = value
        else:
            area, field = place
            nested.setdefault(area, {})[field] = value
    return nested


def field_info(flat_name: str) -> FieldInfo:
    """The declaration (type, default, bounds, description) of the setting called ``flat_name``."""
    *areas, field = FLAT_FIELDS[flat_name]
    model: type[BaseModel] = Settings
    for area in areas:
        model = AREAS[area]
    return model.model_fields[field]


class _NestedSource(PydanticBaseSettingsSource):
    """A settings source whose flat names (``ae_title``) are moved to their areas (``listener.ae_title``) by
    :func:`nest`, so that sources of different precedence merge field by field."""

    def __init__(self, settings_cls: type[BaseSettings], flat: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self.flat = flat

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, "", False  # __call__ answers for the whole source

    def __call__(self) -> dict[str, Any]:
        return nest(self.flat())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.flat!r})"


def _flat_locations(error: ValidationError) -> ValidationError:
    """``error`` with each location in an area (``listener.port``) named by its flat name (``dimse_port``) again,
    as the environment variable and the TOML key spell it; ``error`` itself if it cannot be rebuilt."""
    details: list[InitErrorDetails] = []
    for line in error.errors(include_url=False):
        loc = tuple(line["loc"])
        names = [str(part) for part in loc]
        length = next((length for length in (2, 1) if tuple(names[:length]) in _FLAT_NAME_OF), 0)
        detail: InitErrorDetails = {
            "type": line["type"],
            "loc": (_FLAT_NAME_OF[tuple(names[:length])], *loc[length:]) if length else loc,
            "input": line["input"],
        }
        if "ctx" in line:
            detail["ctx"] = line["ctx"]
        details.append(detail)
    try:
        return ValidationError.from_exception_data(error.title, details)
    except (KeyError, TypeError, ValueError):  # an error type from_exception_data cannot build again
        return error


class Settings(BaseSettings):
    """Every tunable of predraft: a small core every process reads, and one area per part (:data:`AREAS`).

    Paths are made absolute against the working directory. Keywords take flat names as the environment does
    (``Settings(ae_title="X")`` sets ``settings.listener.ae_title``); a validation error names the flat name.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=True)

    var_dir: Path = Field(Path("var"), description="Folder for the embedded database, broker, spool and models.")
    # Defaults under var_dir, filled in by _default_locations before the fields are validated: never None.
    database_url: str = Field("", description="SQLAlchemy URL; default sqlite:///<var_dir>/predraft.sqlite")
    broker_url: str = Field(
        "", description="Celery broker URL; default kombu's SQLAlchemy transport on <var_dir>/broker.sqlite"
    )
    spool_dir: Path = Field(
        Path("spool"), description="Where received instances and drafted SRs live; default <var_dir>/spool"
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: one readable line per record; json: one JSON object per line (for log shippers)."
    )
    metrics_host: str = Field(
        "127.0.0.1", description="Address the listener's and the worker's Prometheus endpoints bind to."
    )

    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    dicomweb: DicomwebSettings = Field(default_factory=DicomwebSettings)
    worklist: WorklistSettings = Field(default_factory=WorklistSettings)
    workers: WorkersSettings = Field(default_factory=WorkersSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _flat_locations(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keywords, then ``PREDRAFT_<FLAT_NAME>`` variables (parsed by each flat name's type), then the TOML file
        named by ``PREDRAFT_CONFIG``: each source's flat names nested by :func:`nest`."""
        flat: list[PydanticBaseSettingsSource] = [init_settings, EnvSettingsSource(_FlatSettings)]
        config_file = os.environ.get(CONFIG_ENV_VAR)
        if config_file:
            path = Path(config_file)
            if not path.is_file():
                raise FileNotFoundError(f"{CONFIG_ENV_VAR}={config_file!r} does not name a readable file")
            flat.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(_NestedSource(settings_cls, source) for source in flat)

    @model_validator(mode="before")
    @classmethod
    def _default_locations(cls, data: Any) -> Any:
        """The database, the broker and the spool default to places under var_dir (unset, None or empty)."""
        if not isinstance(data, dict):
            return data
        var_dir = Path(data.get("var_dir") or "var").expanduser().absolute()
        defaults = {
            "database_url": f"sqlite:///{var_dir / 'predraft.sqlite'}",
            "broker_url": f"sqla+sqlite:///{var_dir / 'broker.sqlite'}",
            "spool_dir": var_dir / "spool",
        }
        return {**data, **{key: value for key, value in defaults.items() if not data.get(key)}}

    @model_validator(mode="after")
    def _resolve_defaults(self) -> Settings:
        """The var dir and the spool are made absolute; DIMSE export destinations call as the listener's AE title
        unless they name their own calling AE."""
        self.var_dir = self.var_dir.expanduser().absolute()
        self.spool_dir = self.spool_dir.expanduser().absolute()
        for destination in self.export.destinations:
            if isinstance(destination, DimseDestination) and destination.calling_ae is None:
                destination.calling_ae = self.listener.ae_title
        return self

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict by area, with passwords in URLs and secrets masked, for printing and logs."""
        data = self.model_dump(mode="json")
        for key in ("database_url", "broker_url"):
            data[key] = redact_url(data[key])
        return data


#: The areas of :class:`Settings` by attribute name, each an area model.
AREAS: dict[str, type[BaseModel]] = {
    name: info.annotation
    for name, info in Settings.model_fields.items()
    if isinstance(info.annotation, type) and issubclass(info.annotation, _Area)
}


class _FlatSettingsBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")


_FLAT_TYPES: dict[str, Any] = {name: (field_info(name).annotation, None) for name in FLAT_FIELDS}
#: Every setting under its flat name and with its declared type, never validated itself: what
#: :class:`EnvSettingsSource` reads ``PREDRAFT_<FLAT_NAME>`` by (JSON for lists and tables, as before the areas),
#: before :func:`nest` moves each value to its place and :class:`Settings` validates it.
_FlatSettings: type[BaseSettings] = create_model("FlatSettings", __base__=_FlatSettingsBase, **_FLAT_TYPES)


def redact_url(url: str | None) -> str | None:
    """Mask the password of a URL such as ``redis://:secret@host/0``."""
    if url is None:
        return None
    return re.sub(r"(//[^:/@]*:)[^@/]*@", r"\1***@", url)


def get_settings(**overrides: Any) -> Settings:
    """Build the settings from the environment, the optional TOML file and ``overrides`` (flat names)."""
    return Settings(**overrides)
