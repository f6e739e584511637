"""docs/conformance.md, the DICOM conformance statement, against the code's own tables, so that it cannot drift.

The statement marks each table the code decides with a ``<!-- conformance: NAME -->`` comment on the line before
it. Each check below reads one such table and compares it, as a set (or, for transfer syntaxes, as an ordered
list), with what the code does: the listener's presentation contexts (``make_ae``), the contexts the export
proposes (``send_dimse``, run against a recording AE), the implementation identifiers, the named DIMSE statuses
and STOW-RS failure reasons, the DICOMweb routes, the listener's settings, the SR SOP classes the reporting
builders return, and the codes of the private scheme. A row missing or added on either side fails, naming what
to change; :func:`test_a_row_removed_from_the_statement_is_found` shows that it does, for every table.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import highdicom as hd
import pytest
from fastapi import FastAPI
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage, generate_uid
from pynetdicom import AE
from pynetdicom._globals import APPLICATION_CONTEXT_NAME

import predraft
import predraft.reporting
from predraft.core.settings import FLAT_FIELDS, DimseDestination, Settings, environment_variable, field_info
from predraft.listener import status as dimse_status
from predraft.listener.dicomweb import router as dicomweb_router
from predraft.listener.dicomweb import status as stow_status
from predraft.listener.dimse import PREFERRED_TRANSFER_SYNTAXES, make_ae
from predraft.models.pack import BUNDLED_PACKS, PRIVATE_SCHEME, pack_folders, read_pack
from predraft.reporting import wording
from predraft.workers import export

STATEMENT = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
SHOWN = "docs/conformance.md"
MARKER = re.compile(r"<!--\s*conformance:\s*([\w-]+)\s*-->")
#: The SOP class of each highdicom SR class a reporting builder may return.
SR_SOP_CLASSES: dict[str, str] = {
    hd.sr.EnhancedSR.__name__: EnhancedSRStorage,
    hd.sr.ComprehensiveSR.__name__: ComprehensiveSRStorage,
    hd.sr.Comprehensive3DSR.__name__: Comprehensive3DSRStorage,
}
#: The transfer syntax highdicom writes an SR in unless told otherwise (the reporting builders never tell it).
SR_TRANSFER_SYNTAX = str(inspect.signature(hd.sr.ComprehensiveSR.__init__).parameters["transfer_syntax_uid"].default)
#: Listener settings that are no part of DICOM conformance.
UNDOCUMENTED_LISTENER_SETTINGS = frozenset({"listener_metrics_port"})

Row = dict[str, str]
Tables = dict[str, list[Row]]


# --- Reading the statement ---------------------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def plain(cell: str) -> str:
    """A cell's text without the backticks of code spans."""
    return cell.replace("`", "").strip()


def read_tables(text: str) -> Tables:
    """Every table of ``text`` marked ``<!-- conformance: NAME -->``, as rows keyed by the header's cells."""
    lines = text.splitlines()
    tables: Tables = {}
    for index, line in enumerate(lines):
        marker = MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        name = marker.group(1)
        assert name not in tables, f"{SHOWN} marks two tables '{name}': keep one"
        start = index + 1
        while start < len(lines) and not lines[start].strip():
            start += 1
        end = start
        while end < len(lines) and lines[end].lstrip().startswith("|"):
            end += 1
        block = lines[start:end]
        assert len(block) >= 2, f"{SHOWN}: no Markdown table follows <!-- conformance: {name} -->"
        header = _cells(block[0])
        rows = []
        for row in block[2:]:
            cells = _cells(row)
            assert len(cells) == len(header), f"{SHOWN}, table '{name}': row {row!r} has not {len(header)} cells"
            rows.append(dict(zip(header, cells, strict=True)))
        tables[name] = rows
    return tables


def table(tables: Tables, name: str) -> list[Row]:
    assert name in tables, f"{SHOWN} has no table marked <!-- conformance: {name} -->: put the marker back before it"
    return tables[name]


def differences(name: str, documented: AbstractSet[object], actual: AbstractSet[object], source: str) -> list[str]:
    """What differs between a table's rows and the code's, worded as what to change."""
    problems = []
    if missing := actual - documented:
        problems.append(f"{SHOWN}, table '{name}', lacks what {source} has: add rows for {sorted(missing, key=str)}")
    if extra := documented - actual:
        problems.append(
            f"{SHOWN}, table '{name}', lists what {source} does not have: remove the rows of "
            f"{sorted(extra, key=str)} (or change the code, if the statement is right)"
        )
    return problems


# --- What the code says ------------------------------------------------------------------------------------------


class _Proposed(Exception):
    """Raised where the export would open its association: the presentation contexts are all requested by then."""


@dataclass(frozen=True)
class CodeFacts:
    """The facts the checks compare the statement with, each read from the code."""

    scp_contexts: dict[str, tuple[str, ...]]  # abstract syntax: accepted transfer syntaxes, in order of preference
    scp_default_roles: bool  # no context overrides pynetdicom's default roles (the listener is SCP only)
    implementation: dict[str, str]
    builders: set[tuple[str, str]]  # (module.function, SOP class UID) of every function returning an SR
    scu_contexts: set[tuple[str, str]]  # (abstract syntax, transfer syntax) the export proposes for those SRs


def sr_builders() -> set[tuple[str, str]]:
    """Every function of ``predraft.reporting`` whose return annotation is a highdicom SR class, with that class's
    SOP class UID. An SR class this test does not know fails, naming the table to extend."""
    found = set()
    for info in pkgutil.iter_modules(predraft.reporting.__path__):
        module = importlib.import_module(f"predraft.reporting.{info.name}")
        for name, function in inspect.getmembers(module, inspect.isfunction):
            if function.__module__ != module.__name__:
                continue
            returned = inspect.signature(function).return_annotation
            returned = returned if isinstance(returned, str) else getattr(returned, "__name__", "")
            class_name = returned.rsplit(".", 1)[-1]
            if class_name in SR_SOP_CLASSES:
                found.add((f"{module.__name__}.{name}", SR_SOP_CLASSES[class_name]))
            else:
                assert not (class_name.endswith("SR") and hasattr(hd.sr, class_name)), (
                    f"{module.__name__}.{name} returns hd.sr.{class_name}: add its SOP class to SR_SOP_CLASSES here"
                )
    return found


def proposed_contexts(sop_classes: set[str], folder: Path, monkeypatch: pytest.MonkeyPatch) -> set[tuple[str, str]]:
    """The presentation contexts ``workers/export.py`` proposes for an SR file of each of ``sop_classes``, written
    in the transfer syntax predraft's SRs are in."""
    proposed: set[tuple[str, str]] = set()

    class RecordingAE(AE):
        def associate(self, *args: Any, **kwargs: Any) -> NoReturn:
            proposed.update(
                (str(context.abstract_syntax), str(syntax))
                for context in self.requested_contexts
                for syntax in context.transfer_syntax
            )
            raise _Proposed

    monkeypatch.setattr(export, "AE", RecordingAE)
    destination = DimseDestination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)
    for sop_class in sorted(sop_classes):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = UID(sop_class), generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = UID(SR_TRANSFER_SYNTAX)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with pytest.raises(_Proposed):
            export.send_dimse(destination, path)
    return proposed


@pytest.fixture
def code(clean_settings_env: Path, monkeypatch: pytest.MonkeyPatch) -> CodeFacts:
    ae = make_ae(Settings())
    contexts = ae.supported_contexts
    builders = sr_builders()
    return CodeFacts(
        scp_contexts={str(c.abstract_syntax): tuple(str(s) for s in c.transfer_syntax) for c in contexts},
        scp_default_roles=all(c.scu_role is None and c.scp_role is None for c in contexts),
        implementation={
            "Implementation Class UID": str(ae.implementation_class_uid),
            "Implementation Version Name": str(ae.implementation_version_name),
            "Application Context Name": APPLICATION_CONTEXT_NAME,
        },
        builders=builders,
        scu_contexts=proposed_contexts({uid for _, uid in builders}, clean_settings_env, monkeypatch),
    )


# --- The checks: one per marked table, each returning what differs -----------------------------------------------


def _name(uid: str) -> str:
    return UID(uid).name.removesuffix(" SOP Class")


def check_scp_contexts(tables: Tables, code: CodeFacts) -> list[str]:
    rows = table(tables, "scp-contexts")
    documented = {plain(row["Abstract syntax UID"]): row for row in rows}
    problems = differences(
        "scp-contexts", set(documented), set(code.scp_contexts), "the listener's AE (listener/dimse.py make_ae)"
    )
    for uid in sorted(set(documented) & set(code.scp_contexts)):
        row = documented[uid]
        if plain(row["Abstract syntax"]) != _name(uid):
            problems.append(f"{SHOWN}, table 'scp-contexts': {uid} is {_name(uid)!r}, not {row['Abstract syntax']!r}")
        if plain(row["Role"]) != "SCP" or not code.scp_default_roles:
            problems.append(f"{SHOWN}, table 'scp-contexts': the listener takes the SCP role only ({uid})")
        syntaxes = plain(row["Transfer syntaxes"]).lower()
        listed = tuple(plain(r["UID"]) for r in table(tables, syntaxes)) if syntaxes in tables else None
        if listed != code.scp_contexts[uid]:
            problems.append(
                f"{SHOWN}: the transfer syntaxes the listener accepts for {uid}, in order of preference, are "
                f"{list(code.scp_contexts[uid])}; its row names table {row['Transfer syntaxes']!r}, which lists "
                f"{list(listed) if listed is not None else 'nothing (no such table)'}: update that table"
            )
    return problems


def _check_syntax_table(tables: Tables, name: str, expected: tuple[str, ...], source: str) -> list[str]:
    rows = table(tables, name)
    listed = tuple(plain(row["UID"]) for row in rows)
    problems = differences(name, set(listed), set(expected), source)
    if not problems and listed != expected:
        problems.append(f"{SHOWN}, table '{name}': the order of preference is {list(expected)} ({source})")
    if [plain(row["#"]) for row in rows] != [str(n) for n in range(1, len(rows) + 1)]:
        problems.append(f"{SHOWN}, table '{name}': number the rows 1 to {len(rows)}")
    for row in rows:
        uid = plain(row["UID"])
        if plain(row["Transfer syntax"]) != UID(uid).name:
            problems.append(f"{SHOWN}, table '{name}': {uid} is {UID(uid).name!r}, not {row['Transfer syntax']!r}")
    return problems


def check_ts_storage(tables: Tables, code: CodeFacts) -> list[str]:
    return _check_syntax_table(
        tables, "ts-storage", PREFERRED_TRANSFER_SYNTAXES, "listener/dimse.py PREFERRED_TRANSFER_SYNTAXES"
    )


def check_ts_verification(tables: Tables, code: CodeFacts) -> list[str]:
    verification = "1.2.840.10008.1.1"
    expected = code.scp_contexts.get(verification, ())
    return _check_syntax_table(tables, "ts-verification", expected, "the listener's Verification context")


def check_scu_contexts(tables: Tables, code: CodeFacts) -> list[str]:
    rows = table(tables, "scu-contexts")
    documented = {(plain(row["Abstract syntax UID"]), plain(row["Transfer syntax UID"])) for row in rows}
    problems = differences(
        "scu-contexts",
        set(documented),
        set(code.scu_contexts),
        "workers/export.py send_dimse, for the SRs predraft builds",
    )
    for row in rows:
        for column, uid_column in (
            ("Abstract syntax", "Abstract syntax UID"),
            ("Transfer syntax", "Transfer syntax UID"),
        ):
            if plain(row[column]) != _name(plain(row[uid_column])):
                problems.append(
                    f"{SHOWN}, table 'scu-contexts': {row[uid_column]} is {_name(plain(row[uid_column]))!r}"
                )
        if plain(row["Role"]) != "SCU":
            problems.append(f"{SHOWN}, table 'scu-contexts': the export is SCU ({row['Abstract syntax UID']})")
    return problems


def _named_codes(module: object, prefix: str = "") -> set[object]:
    """(name, ``0xNNNN``) of the module's integer constants whose names start with ``prefix``."""
    return {
        (name, f"0x{value:04X}")
        for name, value in vars(module).items()
        if name.isupper() and name.startswith(prefix) and isinstance(value, int)
    }


def _documented_codes(rows: list[Row]) -> set[object]:
    return {(plain(row["Constant"]), f"0x{int(plain(row['Code']), 16):04X}") for row in rows}


def check_dimse_status(tables: Tables, code: CodeFacts) -> list[str]:
    return differences(
        "dimse-status",
        _documented_codes(table(tables, "dimse-status")),
        _named_codes(dimse_status),
        "listener/status.py",
    )


def check_stow_failure_reasons(tables: Tables, code: CodeFacts) -> list[str]:
    return differences(
        "stow-failure-reasons",
        _documented_codes(table(tables, "stow-failure-reasons")),
        _named_codes(stow_status, "FAILURE_"),
        "listener/dicomweb/status.py",
    )


def check_implementation(tables: Tables, code: CodeFacts) -> list[str]:
    documented = {(plain(row["Item"]), plain(row["Value"])) for row in table(tables, "implementation")}
    return differences("implementation", documented, set(code.implementation.items()), "the listener's AE")


def _route(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def check_dicomweb_routes(tables: Tables, code: CodeFacts) -> list[str]:
    app = FastAPI()
    app.include_router(dicomweb_router)
    actual = {
        (method.upper(), _route(path)) for path, operations in app.openapi()["paths"].items() for method in operations
    }
    documented = {
        (plain(row["Method"]).upper(), _route(plain(row["Path"]))) for row in table(tables, "dicomweb-routes")
    }
    return differences("dicomweb-routes", documented, actual, "the DICOMweb router (listener/dicomweb/)")


def _default(flat_name: str) -> str:
    info = field_info(flat_name)
    if info.default_factory is not None:
        return "empty"
    if isinstance(info.default, bool):  # as the environment variable spells it
        return str(info.default).lower()
    return "unset" if info.default is None else str(info.default)


def check_listener_settings(tables: Tables, code: CodeFacts) -> list[str]:
    listener = {name for name, place in FLAT_FIELDS.items() if place[0] == "listener"} - UNDOCUMENTED_LISTENER_SETTINGS
    documented = {(plain(row["Setting"]), plain(row["Default"])) for row in table(tables, "listener-settings")}
    actual = {(environment_variable(name), _default(name)) for name in listener}
    return differences("listener-settings", documented, actual, "predraft/core/settings.py ListenerSettings")


def check_created_sr(tables: Tables, code: CodeFacts) -> list[str]:
    rows = table(tables, "created-sr")
    documented = {(plain(row["Built by"]), plain(row["SOP class UID"])) for row in rows}
    problems = differences("created-sr", documented, set(code.builders), "the SR builders of predraft.reporting")
    problems.extend(
        f"{SHOWN}, table 'created-sr': {row['SOP class UID']} is {_name(plain(row['SOP class UID']))!r}"
        for row in rows
        if plain(row["SOP class"]) != _name(plain(row["SOP class UID"]))
    )
    return problems


def private_codes() -> set[object]:
    """(value, meaning) of every 99PREDRAFT code of the bundled packs and of reporting/wording.py."""
    found: set[object] = set()
    for folder in pack_folders(BUNDLED_PACKS):
        pack = read_pack(folder)
        pack_codes = [c.code for c in pack.classes] + [
            pack.indeterminate.code,
            pack.sr_title,
            getattr(pack, "site", None),
        ]
        found.update((c.value, c.meaning) for c in pack_codes if c is not None and c.scheme == PRIVATE_SCHEME)
    found.update(
        (c.value, c.meaning)
        for c in vars(wording).values()
        if isinstance(c, Code) and c.scheme_designator == PRIVATE_SCHEME
    )
    return found


def check_private_codes(tables: Tables, code: CodeFacts) -> list[str]:
    documented = {(plain(row["Code value"]), plain(row["Code meaning"])) for row in table(tables, "private-codes")}
    return differences(
        "private-codes", documented, private_codes(), "models/packs/*/pack.toml and reporting/wording.py"
    )


def check_revisions(tables: Tables, code: CodeFacts) -> list[str]:
    versions = {plain(row["predraft version"]) for row in table(tables, "revisions")}
    if predraft.__version__ in versions:
        return []
    return [f"{SHOWN}, table 'revisions': add a row for predraft {predraft.__version__} (predraft/__init__.py)"]


CHECKS: dict[str, Callable[[Tables, CodeFacts], list[str]]] = {
    "scp-contexts": check_scp_contexts,
    "ts-storage": check_ts_storage,
    "ts-verification": check_ts_verification,
    "scu-contexts": check_scu_contexts,
    "implementation": check_implementation,
    "dimse-status": check_dimse_status,
    "stow-failure-reasons": check_stow_failure_reasons,
    "dicomweb-routes": check_dicomweb_routes,
    "listener-settings": check_listener_settings,
    "created-sr": check_created_sr,
    "private-codes": check_private_codes,
    "revisions": check_revisions,
}


@pytest.fixture(scope="module")
def statement() -> str:
    return STATEMENT.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", CHECKS)
def test_the_statement_says_what_the_code_does(name: str, statement: str, code: CodeFacts) -> None:
    problems = CHECKS[name](read_tables(statement), code)
    assert not problems, "\n".join(problems)


def test_every_marked_table_is_checked(statement: str) -> None:
    assert set(read_tables(statement)) == set(CHECKS), (
        f"{SHOWN} marks tables {sorted(read_tables(statement))}; this test checks {sorted(CHECKS)}: a marked table "
        "needs a check here, and a check needs its table"
    )


def test_the_code_gives_every_check_something_to_compare(code: CodeFacts) -> None:
    """The facts are read from the code, not found empty by a broken reader (which would pass an empty table)."""
    assert "1.2.840.10008.1.1" in code.scp_contexts and ComprehensiveSRStorage in code.scp_contexts
    assert ("predraft.reporting.sr.build_draft_sr", ComprehensiveSRStorage) in code.builders
    assert {syntax for sop_class, syntax in code.scu_contexts if sop_class == ComprehensiveSRStorage}
    assert _named_codes(dimse_status) and _named_codes(stow_status, "FAILURE_") and private_codes()


def _without_row(text: str, name: str, index: int) -> str:
    """``text`` less the ``index``-th body row of the table marked ``name``."""
    lines = text.splitlines()
    marker = next(
        i for i, line in enumerate(lines) if (found := MARKER.fullmatch(line.strip())) and found.group(1) == name
    )
    header = next(i for i in range(marker + 1, len(lines)) if lines[i].lstrip().startswith("|"))
    del lines[header + 2 + index]
    return "\n".join(lines)


def _rows(statement: str) -> Iterator[tuple[str, int]]:
    for name, rows in read_tables(statement).items():
        yield from ((name, index) for index in (0, len(rows) - 1))


@pytest.mark.parametrize("name", CHECKS)
def test_a_row_removed_from_the_statement_is_found(name: str, statement: str, code: CodeFacts) -> None:
    for table_name, index in _rows(statement):
        if table_name == name:
            assert CHECKS[name](read_tables(_without_row(statement, name, index)), code), (
                f"removing row {index} of table '{name}' went unnoticed"
            )


def test_a_row_the_code_lacks_is_found(statement: str, code: CodeFacts) -> None:
    ct_image_storage = "1.2.840.10008.5.1.4.1.1.2"  # a SOP class no radiograph pipeline stores
    row = "| Verification | `1.2.840.10008.1.1` | TS-VERIFICATION | SCP | None |"
    assert row in statement, "the Verification row of table 'scp-contexts' changed: update this test's copy"
    added = statement.replace(row, f"{row}\n| CT Image Storage | `{ct_image_storage}` | TS-STORAGE | SCP | None |")
    problems = check_scp_contexts(read_tables(added), code)
    assert any("remove the rows" in problem and ct_image_storage in problem for problem in problems), problems
