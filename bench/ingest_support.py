"""Helpers of bench/ingest.py: the instances it sends, the receivers it starts, and dcmtk's storescu.

Kept apart from the bench itself so the bench reads as what it measures. Everything here starts real
processes on free ports and stops them by their own process id (or process group, for ``storescp --fork``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = REPO_ROOT.parent / "shared" / "data" / "real"
LARGE_SOURCE = REAL_DATA / "RG2_UNC.dcm"
PREDRAFT = str(Path(sys.executable).parent / "predraft")
#: Debian's Orthanc (1.10.1 here) is in /usr/sbin, which an ordinary user's PATH may lack.
ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/local/sbin")

#: Side of the small instances, in pixels (16-bit: 32 KiB of pixel data, about 34 KB a file).
SMALL_SIDE = 128
SMALL_LIMIT_BYTES = 50_000
#: The largest PDU storescu sends (dcmtk's ceiling); storescp is told to accept it, as predraft does.
DCMTK_MAX_PDU = 131072
#: The calling and called AE titles used throughout.
CALLING_AE = "BENCH_SCU"
STORESCP_AE = "STORESCP"
PREDRAFT_AE = "PREDRAFT"
BARE_AE = "BARE_PYNETDICOM"
ORTHANC_AE = "ORTHANC"
STARTUP_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 1800.0
POLL_INTERVAL_S = 0.1
#: dcmtk's tools turn Nagle's algorithm off when this is in their environment.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_tools(*, orthanc: bool = True) -> None:
    """Raise SystemExit naming what is missing (dcmtk's tools, the predraft script, the RG2 file, and
    Orthanc unless ``orthanc`` is false)."""
    missing = [tool for tool in ("storescu", "storescp", "echoscu") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"dcmtk's {', '.join(missing)} not on PATH (apt-get install dcmtk)")
    if not Path(PREDRAFT).is_file():
        raise SystemExit(f"{PREDRAFT} not found: run with the project's .venv/bin/python")
    if not LARGE_SOURCE.is_file():
        raise SystemExit(f"{LARGE_SOURCE} is absent (../shared/data/real is not checked out)")
    if orthanc and ORTHANC is None:
        raise SystemExit("Orthanc is not installed (apt-get install orthanc), or pass --skip-orthanc")


def dcmtk_version() -> str:
    result = subprocess.run(["storescu", "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0].strip("$ ") if result.stdout else "unknown"


def orthanc_version() -> str | None:
    """``Orthanc --version``'s version, or None where Orthanc is not installed."""
    if ORTHANC is None:
        return None
    result = subprocess.run([ORTHANC, "--version"], capture_output=True, text=True, check=False)
    first = (result.stdout or result.stderr).splitlines()
    return first[0].split()[-1] if first else "unknown"


# --- instances -----------------------------------------------------------------------------------------


def _fresh_identity(ds: pydicom.Dataset, study_uid: str, series_uid: str) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()


def write_copies(template: pydicom.Dataset, count: int, out_dir: Path, stem: str) -> list[Path]:
    """``count`` copies of ``template`` in one new study and series, each with a fresh SOP Instance UID."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for index in range(count):
        _fresh_identity(template, study_uid, series_uid)
        template.InstanceNumber = index + 1
        path = out_dir / f"{stem}_{index:05d}.dcm"
        template.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def large_template() -> pydicom.Dataset:
    """RG2_UNC as it is: a 2140 x 1760 16-bit CR, 7.5 MB."""
    return pydicom.dcmread(LARGE_SOURCE)


def small_template() -> pydicom.Dataset:
    """RG2 subsampled (nearest neighbour) to SMALL_SIDE x SMALL_SIDE, still a 16-bit CR: under 50 KB a file."""
    ds = pydicom.dcmread(LARGE_SOURCE)
    pixels = ds.pixel_array
    rows = np.linspace(0, pixels.shape[0] - 1, SMALL_SIDE).round().astype(int)
    columns = np.linspace(0, pixels.shape[1] - 1, SMALL_SIDE).round().astype(int)
    small = np.ascontiguousarray(pixels[np.ix_(rows, columns)], dtype=pixels.dtype)
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        if keyword in ds:
            spacing = [float(value) for value in ds[keyword].value]
            setattr(
                ds,
                keyword,
                [
                    round(spacing[0] * pixels.shape[0] / SMALL_SIDE, 6),
                    round(spacing[1] * pixels.shape[1] / SMALL_SIDE, 6),
                ],
            )
    ds.Rows, ds.Columns = small.shape
    ds.PixelData = small.tobytes()
    return ds


# --- receivers -----------------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A running C-STORE SCP: where to send, and how to count what it has filed (the files matching
    ``pattern`` under ``store_dir``, or what ``counter`` answers where the receiver keeps an index)."""

    name: str
    ae_title: str
    port: int
    store_dir: Path
    pattern: str
    notes: str
    counter: Callable[[], int] | None = field(default=None, repr=False)

    def stored(self) -> int:
        if self.counter is not None:
            return self.counter()
        return sum(1 for _ in self.store_dir.glob(self.pattern))


def _echo_ok(ae_title: str, port: int) -> bool:
    result = subprocess.run(
        ["echoscu", "-aet", CALLING_AE, "-aec", ae_title, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_S,
        env=DCMTK_ENV,
        check=False,
    )
    return result.returncode == 0


def _wait_until_echo(process: subprocess.Popen[bytes], ae_title: str, port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{ae_title} exited {process.returncode} at start:\n{log.read_text()[-3000:]}")
        if _echo_ok(ae_title, port):
            return
        time.sleep(POLL_INTERVAL_S)
    raise RuntimeError(f"{ae_title} did not answer C-ECHO within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes], stop_signal: signal.Signals, *, group: bool) -> None:
    if process.poll() is None:
        if group:
            os.killpg(process.pid, stop_signal)
        else:
            process.send_signal(stop_signal)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()


#: Settings the bench passes through to ``predraft listen`` from its own environment (``--processes``).
PASSED_SETTINGS = ("PREDRAFT_DIMSE_PROCESSES",)


def environment_without_settings() -> dict[str, str]:
    """This process's environment less every PREDRAFT_ setting (but :data:`PASSED_SETTINGS`), so that a bench
    starts from the defaults."""
    return {
        key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_") or key in PASSED_SETTINGS
    }


def predraft_env(var_dir: Path, port: int) -> dict[str, str]:
    """The environment of ``predraft listen``: its own var dir, no drafting (an hour of quiet), quiet logs."""
    env = environment_without_settings()
    env.update(
        {
            "PREDRAFT_VAR_DIR": str(var_dir),
            "PREDRAFT_DIMSE_PORT": str(port),
            "PREDRAFT_AE_TITLE": PREDRAFT_AE,
            "PREDRAFT_SPOOL_MIN_FREE_BYTES": "0",
            "PREDRAFT_QUIET_SECONDS": "3600",
            "PREDRAFT_LOG_LEVEL": "WARNING",
        }
    )
    return env


@contextmanager
def predraft_listener(work: Path) -> Iterator[Receiver]:
    """``predraft db upgrade`` then ``predraft listen``, the real commands, on a fresh var dir and free port."""
    var_dir, port, log = work / "predraft-var", free_port(), work / "predraft.log"
    env = predraft_env(var_dir, port)
    subprocess.run(
        [PREDRAFT, "db", "upgrade"], env=env, cwd=work, check=True, capture_output=True, timeout=STARTUP_TIMEOUT_S
    )
    with log.open("wb") as stream:
        process = subprocess.Popen([PREDRAFT, "listen"], env=env, cwd=work, stdout=stream, stderr=subprocess.STDOUT)
    try:
        _wait_until_echo(process, PREDRAFT_AE, port, log)
        yield Receiver(
            "predraft",
            PREDRAFT_AE,
            port,
            var_dir / "spool" / "incoming",
            "*/*.dcm",
            "predraft listen: fsync of each file and its folder, then a SQLite commit "
            "(WAL, synchronous=FULL), before the success status",
        )
    finally:
        _stop(process, signal.SIGINT, group=False)


@contextmanager
def bare_pynetdicom(work: Path) -> Iterator[Receiver]:
    """bench/bare_pynetdicom_scp.py: predraft's DIMSE set-up with a handler that only renames the file."""
    out_dir, port, log = work / "bare-out", free_port(), work / "bare.log"
    env = environment_without_settings()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "bare_pynetdicom_scp.py"),
        str(port),
        BARE_AE,
        str(out_dir),
    ]
    with log.open("wb") as stream:
        process = subprocess.Popen(command, env=env, cwd=work, stdout=stream, stderr=subprocess.STDOUT)
    try:
        _wait_until_echo(process, BARE_AE, port, log)
        yield Receiver(
            "pynetdicom_bare",
            BARE_AE,
            port,
            out_dir,
            "*.dcm",
            "pynetdicom with predraft's AE, server class and chunked receive; the handler renames "
            "the file and answers success: no parse, no fsync, no database",
        )
    finally:
        _stop(process, signal.SIGINT, group=False)


@contextmanager
def dcmtk_storescp(work: Path, *, fork: bool) -> Iterator[Receiver]:
    """dcmtk's storescp writing into a fresh folder; ``fork``: one child process per association."""
    out_dir, port, log = work / "storescp-out", free_port(), work / "storescp.log"
    out_dir.mkdir()
    command = [
        "storescp",
        "-aet",
        STORESCP_AE,
        "-pdu",
        str(DCMTK_MAX_PDU),
        "-dhl",
        "-od",
        str(out_dir),
        *(["--fork"] if fork else []),
        str(port),
    ]
    with log.open("wb") as stream:
        # its own process group, so the children of --fork stop with it
        process = subprocess.Popen(
            command, env=DCMTK_ENV, cwd=work, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_echo(process, STORESCP_AE, port, log)
        yield Receiver(
            "storescp",
            STORESCP_AE,
            port,
            out_dir,
            "*",
            f"dcmtk storescp -pdu {DCMTK_MAX_PDU}{' --fork' if fork else ''}: no fsync "
            "(the file is written and closed, not synced)",
        )
    finally:
        _stop(process, signal.SIGTERM, group=True)


#: No proxy for the loopback REST calls, whatever the environment names.
_LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _orthanc_get(http_port: int, path: str) -> dict:
    with _LOCAL_HTTP.open(f"http://127.0.0.1:{http_port}{path}", timeout=STOP_TIMEOUT_S) as response:
        return json.loads(response.read())


def orthanc_config(work: Path, dicom_port: int, http_port: int) -> dict:
    """Orthanc as a durable C-STORE SCP: its own storage and SQLite index under ``work``, fsync of each file
    (SyncStorageArea, its default since 1.7.4), no compression, no plugins, any caller may store, the REST
    API on loopback only and without authentication (it only counts what arrived), and the largest PDU
    storescu sends (MaximumPduLength, as storescp ``-pdu`` and predraft are given). ``TcpNoDelay`` is the
    HTTP server's option; its DICOM side reads ``TCP_NODELAY=1`` from the environment, as dcmtk does."""
    return {
        "Name": "predraft-bench",
        "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"),
        "TemporaryDirectory": str(work / "orthanc-tmp"),
        "StorageCompression": False,
        "SyncStorageArea": True,
        "Plugins": [],
        "LuaScripts": [],
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "DicomServerEnabled": True,
        "DicomAet": ORTHANC_AE,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomModalities": {},
        "MaximumPduLength": DCMTK_MAX_PDU,
        "SaveJobs": False,
    }


def _wait_until_orthanc_answers(process: subprocess.Popen[bytes], http_port: int, dicom_port: int, log: Path) -> None:
    """Until its REST API answers /system (and names the DICOM port given), then until it answers C-ECHO."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited {process.returncode} at start:\n{log.read_text()[-3000:]}")
        try:
            system = _orthanc_get(http_port, "/system")
            break
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Orthanc's REST API did not answer within {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(POLL_INTERVAL_S)
    if system.get("DicomPort") != dicom_port or system.get("DicomAet") != ORTHANC_AE:
        raise RuntimeError(f"Orthanc's /system does not name DICOM port {dicom_port} and {ORTHANC_AE}: {system}")
    _wait_until_echo(process, ORTHANC_AE, dicom_port, log)


@contextmanager
def orthanc_receiver(work: Path) -> Iterator[Receiver]:
    """Debian's Orthanc on a fresh storage folder and SQLite index, free DICOM and HTTP ports, TCP_NODELAY on
    its DICOM side; what it holds is counted through its REST API (/statistics)."""
    if ORTHANC is None:
        raise RuntimeError("Orthanc is not installed (apt-get install orthanc)")
    dicom_port, http_port, log = free_port(), free_port(), work / "orthanc.log"
    config = orthanc_config(work, dicom_port, http_port)
    for folder in ("StorageDirectory", "IndexDirectory", "TemporaryDirectory"):
        Path(config[folder]).mkdir(parents=True)
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [ORTHANC, str(config_path)], env=DCMTK_ENV, cwd=work, stdout=stream, stderr=subprocess.STDOUT
        )
    try:
        _wait_until_orthanc_answers(process, http_port, dicom_port, log)
        yield Receiver(
            "orthanc",
            ORTHANC_AE,
            dicom_port,
            Path(config["StorageDirectory"]),
            "",
            f"Orthanc {orthanc_version()}: SyncStorageArea (fsync of each file), SQLite index, no compression, "
            f"no plugins, MaximumPduLength {DCMTK_MAX_PDU}, DicomThreadsCount at its default (4), "
            "TCP_NODELAY=1",
            counter=lambda: int(_orthanc_get(http_port, "/statistics")["CountInstances"]),
        )
    finally:
        _stop(process, signal.SIGTERM, group=False)


# --- sending ---------------------------------------------------------------------------------------------


def split(paths: Sequence[Path], parts: int) -> list[list[Path]]:
    """``paths`` dealt into ``parts`` lists of (nearly) equal length."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, not {parts}")
    return [list(paths[index::parts]) for index in range(parts)]


def send_concurrently(receiver: Receiver, batches: Sequence[Sequence[Path]]) -> float:
    """One storescu process per batch, all started together; seconds from the first start to the last exit.

    Raises RuntimeError when a storescu fails or reports a failed store."""
    commands = [
        ["storescu", "-aet", CALLING_AE, "-aec", receiver.ae_title, "127.0.0.1", str(receiver.port), *map(str, batch)]
        for batch in batches
    ]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    errors = [process.communicate(timeout=SEND_TIMEOUT_S)[1] for process in processes]
    elapsed = time.perf_counter() - start
    for process, error in zip(processes, errors, strict=True):
        if process.returncode != 0 or "Store Failed" in error:
            raise RuntimeError(f"storescu to {receiver.name} exited {process.returncode}: {error[-2000:]}")
    return elapsed
