"""Issue 14's first acceptance point: a seeded fuzz run against a real ``predraft serve``.

At least 1,000 mutants (tests.fuzz.mutator) of every real fixture go in over DIMSE and 200 over STOW-RS, then a
clean study; afterwards C-ECHO still answers, every worker is online and drafting (the clean study is drafted),
no study is left in ``ready`` or ``drafting``, no HTTP answer was 5xx, and no mutant's canary patient name or ID
appears in the serve log or any log file under var/. A summary of every outcome is printed so that a failure
says which mutants (by their mutation kinds) did what.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import shutil
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
import requests
from pynetdicom import AE, _config
from pynetdicom.association import Association

from tests.e2e.conftest import Deployment, _start
from tests.fuzz.mutator import PROPOSED_SOP_CLASSES, SYNTAXES, Mutant, mutants
from tests.fuzz.seeds import CLEAN_SEED, cached_seeds

pytestmark = pytest.mark.slow

DIMSE_MUTANTS = 1000
STOW_MUTANTS = 200
DIMSE_SEED, STOW_SEED = 14, 1414
#: Studies the mutants of one transport share (consecutive mutants, in blocks).
DIMSE_STUDIES, STOW_STUDIES = 30, 10
MAX_DATASET_BYTES = 32 * 1024 * 1024
BOMB_BYTES = MAX_DATASET_BYTES + 1024 * 1024
#: C-STOREs per association before the client releases it and opens the next.
STORES_PER_ASSOCIATION = 100
#: Most mutants in one STOW-RS request.
STOW_BATCH = 4
TOKEN = "fuzz-token"
BOUNDARY = "predraft-fuzz-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
HTTP_TIMEOUT = 60
DIMSE_TIMEOUT = 60
#: Bound on the wait for every study to settle after the last input.
SETTLE_SECONDS = 150
UNSETTLED_STATES = frozenset({"receiving", "ready", "drafting"})
STUCK_STATES = frozenset({"ready", "drafting"})
CLEAN_STUDY_UID = "1.2.826.0.1.3680043.10.1414.14"
SERVER_ERROR = 500
#: Store Instances Response attributes (PS3.18 10.5.3), as DICOM JSON keys.
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE, REFERENCED_SOP_INSTANCE_UID = "00081199", "00081198", "00081155"
ECHOSCU = "/usr/bin/echoscu"


@pytest.fixture
def fuzz_server(tmp_path: Path) -> Iterator[Deployment]:
    """``predraft serve`` with short quiet and decode times, a 32 MiB data set bound and a STOW token."""
    yield from _start(
        tmp_path,
        {
            "PREDRAFT_QUIET_SECONDS": "2",
            "PREDRAFT_MAX_DATASET_BYTES": str(MAX_DATASET_BYTES),
            "PREDRAFT_DECODE_TIMEOUT_SECONDS": "10",
            "PREDRAFT_DICOMWEB_TOKENS": f'["{TOKEN}"]',
        },
    )


# ------------------------------------------------------------------------------------------------------ DIMSE


def _client() -> AE:
    """A storage SCU proposing every SOP class and transfer syntax a mutant's meta may name, one per context."""
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = DIMSE_TIMEOUT
    for sop_class in PROPOSED_SOP_CLASSES:
        for syntax in SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


def _store(assoc: Association, path: Path) -> str:
    """The outcome of one C-STORE of the file at ``path``, its data set sent as it is: a status as hex, or
    what kept it from having one."""
    try:
        answer = assoc.send_c_store(path)
    except ValueError as exc:  # no accepted presentation context for its SOP class and syntax
        return "no-context" if "presentation context" in str(exc) else f"client-error:{exc}"[:60]
    except AttributeError:
        return "unsendable"
    if "Status" not in answer:
        return "aborted" if assoc.is_aborted else "no-response"
    return f"0x{answer.Status:04X}"


def send_dimse(port: int, batch: Iterable[Mutant], folder: Path) -> dict[str, str]:
    """C-STORE every mutant (its file's data set as it is) on successive associations, re-opening one that
    was refused, aborted or released; the outcome of each by mutant name."""
    ae, outcomes, assoc, stores = _client(), {}, None, 0
    folder.mkdir()
    for mutant in batch:
        path = folder / f"{mutant.name[:80]}.dcm"
        path.write_bytes(mutant.data)
        if assoc is None or not assoc.is_established or stores >= STORES_PER_ASSOCIATION:
            if assoc is not None and assoc.is_established:
                assoc.release()
            assoc, stores = ae.associate("127.0.0.1", port, ae_title="PREDRAFT"), 0
        if not assoc.is_established:
            outcomes[mutant.name] = "association-refused"
            continue
        outcomes[mutant.name] = _store(assoc, path)
        stores += 1
        path.unlink()
    if assoc is not None and assoc.is_established:
        assoc.release()
    return outcomes


# ---------------------------------------------------------------------------------------------------- STOW-RS


def _multipart(parts: Iterable[bytes]) -> bytes:
    body = b"".join(
        b"--%s\r\nContent-Type: application/dicom\r\n\r\n%s\r\n" % (BOUNDARY.encode(), part) for part in parts
    )
    return body + b"--%s--\r\n" % BOUNDARY.encode()


def _listed_uids(response: requests.Response, sequence: str) -> set[str]:
    """The ReferencedSOPInstanceUIDs of one sequence of a Store Instances Response (DICOM JSON), if any."""
    try:
        items = response.json().get(sequence, {}).get("Value", [])
    except (ValueError, AttributeError):
        return set()
    return {uid for item in items for uid in item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value", [])}


def _stow_outcome(response: requests.Response, mutant: Mutant, stored: set[str], failed: set[str]) -> str:
    """``<HTTP status>:stored``, ``:failed`` or ``:unlisted`` (its UID not in the response) for one part."""
    listed = (
        "stored" if mutant.sop_instance_uid in stored else "failed" if mutant.sop_instance_uid in failed else "unlisted"
    )
    return f"{response.status_code}:{listed}"


def send_stow(http_port: int, batch: list[Mutant], seed: int) -> dict[str, str]:
    """POST the mutants to /dicomweb/studies, one to STOW_BATCH per request; each one's outcome by name."""
    rng, outcomes, index = random.Random(seed), {}, 0
    url = f"http://127.0.0.1:{http_port}/dicomweb/studies"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": MULTIPART}
    while index < len(batch):
        request = batch[index : index + rng.randint(1, STOW_BATCH)]
        index += len(request)
        try:
            response = requests.post(
                url, data=_multipart(m.data for m in request), headers=headers, timeout=HTTP_TIMEOUT
            )
        except requests.RequestException as exc:
            outcomes.update((mutant.name, f"no-answer:{type(exc).__name__}") for mutant in request)
            continue
        stored, failed = _listed_uids(response, REFERENCED_SOP_SEQUENCE), _listed_uids(response, FAILED_SOP_SEQUENCE)
        outcomes.update((mutant.name, _stow_outcome(response, mutant, stored, failed)) for mutant in request)
    return outcomes


# ----------------------------------------------------------------------------------------------------- checks


def send_clean_study(port: int, seeds: dict[str, bytes], folder: Path) -> str:
    """RG2_UNC (512 px) in a study of its own, sent last; its outcome."""
    ds = pydicom.dcmread(io.BytesIO(seeds[CLEAN_SEED]))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = CLEAN_STUDY_UID, f"{CLEAN_STUDY_UID}.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{CLEAN_STUDY_UID}.1.1"
    ds.PatientName, ds.PatientID, ds.StudyDescription = "FZCLEANSTUDY^LASTSENT", "ZQCLEAN0000001", "HIP 1 VIEW"
    path = folder / "clean.dcm"
    ds.save_as(path, enforce_file_format=True)
    assoc = _client().associate("127.0.0.1", port, ae_title="PREDRAFT")
    if not assoc.is_established:
        return "association-refused"
    try:
        return _store(assoc, path)
    finally:
        assoc.release()


def studies(server: Deployment) -> list[dict]:
    result = server.cli("studies", "ls", "--json", "--limit", "10000", check=False)
    assert result.returncode in (0, 1), f"predraft studies ls exited {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def wait_until_settled(server: Deployment, clean_sent: bool, timeout: float = SETTLE_SECONDS) -> list[dict]:
    """Poll until no study is receiving, ready or drafting and the clean study, if it was stored, is among them
    (or ``timeout``, or ``predraft serve`` has exited); the studies as last seen."""
    deadline, rows = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        rows = studies(server)
        if server.process.poll() is not None:
            return rows
        clean_seen = any(row["study_uid"] == CLEAN_STUDY_UID for row in rows) or not clean_sent
        if clean_seen and not any(row["state"] in UNSETTLED_STATES for row in rows):
            return rows
        time.sleep(1)
    return rows


def echo(port: int) -> subprocess.CompletedProcess[str]:
    assert shutil.which(ECHOSCU), f"dcmtk's echoscu is not at {ECHOSCU} (scripts/test.sh installs dcmtk)"
    return subprocess.run(
        [ECHOSCU, "-aec", "PREDRAFT", "-to", "20", "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60
    )


def canaries_of(batch: Iterable[Mutant]) -> dict[str, str]:
    """Every canary string (the patient name, each of its parts of 8 or more characters, the patient ID),
    lower-cased, to the mutant it belongs to."""
    found = {}
    for mutant in batch:
        for canary in (mutant.patient_name, *mutant.patient_name.split("^"), mutant.patient_id):
            if len(canary) >= 8:
                found[canary.lower()] = mutant.name
    return found


def logs(server: Deployment) -> dict[str, str]:
    """The serve log and every log file under var/, by path, lower-cased."""
    paths = [
        server.log_path,
        *(
            path
            for path in server.var_dir.rglob("*")
            if path.is_file() and (path.suffix == ".log" or "log" in path.parent.name)
        ),
    ]
    return {str(path): path.read_text(errors="replace").lower() for path in paths}


def leaks(server: Deployment, canaries: dict[str, str]) -> list[str]:
    """``path: canary (mutant)`` for each canary found in a log."""
    pattern = re.compile("|".join(map(re.escape, canaries)))
    return [
        f"{path}: {match.group()} ({canaries[match.group()]})"
        for path, text in logs(server).items()
        for match in pattern.finditer(text)
    ]


#: Where predraft stores the text of what went wrong: no received value may be quoted there either.
ERROR_TEXTS = {
    "studies": ("error",),
    "instances": ("error",),
    "events": ("message",),
    "dead_letters": ("error", "traceback"),
    "exports": ("last_error",),
}


def stored_leaks(server: Deployment, canaries: dict[str, str]) -> list[str]:
    """``table.column: canary (mutant)`` for each canary found in a stored error text or event."""
    pattern = re.compile("|".join(map(re.escape, canaries)))
    return [
        f"{table}.{column}: {match.group()} ({canaries[match.group()]})"
        for table, columns in ERROR_TEXTS.items()
        for column in columns
        for (text,) in _database_rows(server, f"SELECT {column} FROM {table}")  # noqa: S608 -- names above
        for match in pattern.finditer(text or "")
    ]


def _database_rows(server: Deployment, query: str) -> list[tuple]:
    """Rows of a read-only query of the embedded database (diagnostics only)."""
    with closing(sqlite3.connect(f"file:{server.var_dir / 'predraft.sqlite'}?mode=ro", uri=True)) as connection:
        return connection.execute(query).fetchall()


def _error_head(error: str | None) -> str:
    return " ".join((error or "").split()[:6])[:70]


def diagnostics(server: Deployment, batch: Iterable[Mutant]) -> str:
    """Instance states and errors by mutation kind, and every study in error with the kinds stored in it."""
    by_uid = {mutant.sop_instance_uid: mutant for mutant in batch}
    instances = _database_rows(
        server,
        "SELECT i.sop_instance_uid, i.state, i.error, s.study_uid FROM instances i JOIN studies s ON s.id = i.study_id",
    )
    states = Counter(
        (state, kind)
        for uid, state, _, _ in instances
        for kind in (by_uid[uid].kinds or ("clean",) if uid in by_uid else ("unknown-uid",))
    )
    errors = Counter(_error_head(error) for _, state, error, _ in instances if state == "error")
    lines = [
        f"instances by (state, kind): {dict(sorted(states.items()))}",
        f"instance errors: {dict(errors.most_common(15))}",
    ]
    kinds_in_study: dict[str, Counter] = {}
    for uid, _, _, study_uid in instances:
        kinds_in_study.setdefault(study_uid, Counter()).update(by_uid[uid].kinds if uid in by_uid else ("?",))
    for study_uid, error in _database_rows(server, "SELECT study_uid, error FROM studies WHERE state = 'error'"):
        lines.append(
            f"study {study_uid} in error: {_error_head(error)!r}; kinds stored in it: "
            f"{dict(kinds_in_study.get(study_uid, Counter()))}"
        )
    return "\n".join(lines)


def summary(outcomes: dict[str, dict[str, str]], rows: list[dict], kinds_of: dict[str, tuple[str, ...]]) -> str:
    lines = []
    for transport, by_name in outcomes.items():
        lines.append(f"{transport}: {dict(Counter(by_name.values()).most_common())}")
        by_kind: dict[str, Counter] = {}
        for name, status in by_name.items():
            for kind in kinds_of[name] or ("clean",):
                by_kind.setdefault(kind, Counter())[status] += 1
        lines.extend(f"  {kind}: {dict(count.most_common())}" for kind, count in sorted(by_kind.items()))
    lines.append(f"studies by state: {dict(Counter(row['state'] for row in rows))}")
    return "\n".join(lines)


def checks(
    server: Deployment,
    outcomes: dict[str, dict[str, str]],
    rows: list[dict],
    clean_status: str,
    echoed: subprocess.CompletedProcess[str],
    workers: subprocess.CompletedProcess[str],
    batch: Iterable[Mutant],
) -> list[str]:
    """Every acceptance check that failed, each with what was seen: all of them, not just the first."""
    failures = []
    if server.process.poll() is not None:
        failures.append(
            f"predraft serve exited with code {server.process.returncode}: "
            f"{[line for line in server.log_path.read_text().splitlines() if 'ERROR' in line][-5:]}"
        )
    if echoed.returncode != 0:
        failures.append(f"C-ECHO failed (exit {echoed.returncode}): {echoed.stderr.strip()[-300:]}")
    if workers.returncode != 0:
        failures.append(f"predraft workers reports problems: {workers.stdout[-1500:]}")
    clean = server.study(CLEAN_STUDY_UID)
    if clean_status != "0x0000" or not clean or clean["state"] != "drafted":
        failures.append(
            f"the clean study sent last is not drafted: C-STORE {clean_status}, "
            f"state {clean and clean['state']}, error {clean and clean['error']}"
        )
    stuck = [(row["study_uid"], row["state"]) for row in rows if row["state"] in STUCK_STATES]
    if stuck:
        failures.append(f"studies stuck after {SETTLE_SECONDS} s: {stuck}")
    # A study may end in error when none of its images could be read ("no image could be classified"), never
    # because drafting failed: one image's odd header must not cost the others their draft.
    failed_drafts = [
        (row["study_uid"], detail["error"])
        for row in rows
        if row["state"] == "error"
        and (detail := server.study(row["study_uid"]))
        and str(detail["error"]).startswith("drafting")
    ]
    if failed_drafts:
        failures.append(f"studies whose drafting failed: {failed_drafts}")
    server_errors = Counter(
        status for status in outcomes["stow"].values() if not status[:3].isdigit() or int(status[:3]) >= SERVER_ERROR
    )
    if server_errors:
        failures.append(f"STOW-RS answered 5xx or not at all: {dict(server_errors)}")
    leaked = leaks(server, canaries_of(batch))
    if leaked:
        failures.append(f"canary patient names or IDs in the logs ({len(leaked)}): {leaked[:20]}")
    stored = stored_leaks(server, canaries_of(batch))
    if stored:
        failures.append(f"canary patient names or IDs in stored error texts ({len(stored)}): {stored[:20]}")
    return failures


def test_fuzzed_inputs_never_stop_the_site(
    fuzz_server: Deployment,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for logger in ("pynetdicom", "pydicom"):  # a refused context, an abort, a seed's decoder trials: no news here
        caplog.set_level(logging.CRITICAL, logger=logger)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's data set as it is
    started = time.monotonic()
    seeds = cached_seeds(tmp_path_factory.getbasetemp())
    dimse = list(mutants(seeds, DIMSE_SEED, DIMSE_MUTANTS, studies=DIMSE_STUDIES, bomb_bytes=BOMB_BYTES))
    stow = list(mutants(seeds, STOW_SEED, STOW_MUTANTS, transport="stow", studies=STOW_STUDIES, bomb_bytes=BOMB_BYTES))
    generated = time.monotonic()

    outcomes = {
        "dimse": send_dimse(fuzz_server.dimse_port, dimse, tmp_path / "outbox"),
        "stow": send_stow(fuzz_server.http_port, stow, STOW_SEED),
    }
    clean_status = send_clean_study(fuzz_server.dimse_port, seeds, tmp_path)
    sent = time.monotonic()
    rows = wait_until_settled(fuzz_server, clean_sent=clean_status == "0x0000")
    settled = time.monotonic()
    echoed = echo(fuzz_server.dimse_port)
    workers = fuzz_server.cli("workers", "--json", check=False)
    report = summary(outcomes, rows, {m.name: m.kinds for m in (*dimse, *stow)})
    print(diagnostics(fuzz_server, (*dimse, *stow)))
    print(report)
    print(f"seconds: generate {generated - started:.0f}, send {sent - generated:.0f}, settle {settled - sent:.0f}")

    assert len(outcomes["dimse"]) >= DIMSE_MUTANTS and len(outcomes["stow"]) >= STOW_MUTANTS
    assert {m.seed for m in dimse} == set(seeds), "every real file is a seed"
    failures = checks(fuzz_server, outcomes, rows, clean_status, echoed, workers, (*dimse, *stow))
    assert not failures, "\n".join(["fuzz run checks failed:", *failures, report])
