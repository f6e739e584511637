"""Several DIMSE listener processes on one port (issue 19, item 1), through the real ``predraft listen``.

Which listener process holds an association is read from /proc: the server side of the connection (local
port the DIMSE port, remote port the caller's) is a socket in exactly one process's descriptors.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
import sqlalchemy as sa
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from predraft.listener import status
from predraft.listener.connections import REJECT_LOCAL_LIMIT
from tests.conftest import free_port, poll, wait_until
from tests.e2e.conftest import PREDRAFT, scrape

pytestmark = pytest.mark.slow

UP_TIMEOUT = 120.0
CALLER_AE = "STORESCU"


@dataclass
class Listen:
    process: subprocess.Popen[str]
    env: dict[str, str]
    var_dir: Path
    port: int
    metrics_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def listener_pids(self) -> set[int]:
        """The live listener processes (spawned children of the supervisor, not its resource tracker)."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == self.process.pid and fields[0] != "Z" and "spawn_main" in command:
                pids.add(int(entry.name))
        return pids

    def holder(self, caller_port: int) -> int | None:
        """The listener process holding the server side of the connection from ``caller_port``."""
        inodes = _established_inodes(self.port, caller_port)
        return next((pid for pid in self.listener_pids() if inodes & _socket_inodes(pid)), None)

    def holders(self) -> dict[int, int]:
        """Listener pid -> established DIMSE connections it holds now."""
        inodes = _established_inodes(self.port, None)
        return {pid: len(inodes & _socket_inodes(pid)) for pid in self.listener_pids()}


def _established_inodes(local_port: int, remote_port: int | None) -> set[str]:
    """Socket inodes of established IPv4 TCP connections with ``local_port`` (and ``remote_port``)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
        remote_matches = remote_port is None or int(remote.split(":")[1], 16) == remote_port
        if state == "01" and int(local.split(":")[1], 16) == local_port and remote_matches:
            found.add(inode)
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


@pytest.fixture
def listen(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listen]:
    """``predraft listen`` with two listener processes, on free ports, on the embedded default; an indirect
    parameter sets dimse_max_associations."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREDRAFT_")}
    port, metrics_port = free_port(), free_port()
    env.update(
        {
            "PREDRAFT_VAR_DIR": str(tmp_path / "var"),
            "PREDRAFT_DIMSE_PORT": str(port),
            "PREDRAFT_LISTENER_METRICS_PORT": str(metrics_port),
            "PREDRAFT_DIMSE_PROCESSES": "2",
            "PREDRAFT_DIMSE_MAX_ASSOCIATIONS": str(getattr(request, "param", 16)),
            "PREDRAFT_SPOOL_MIN_FREE_BYTES": "0",
            "PREDRAFT_STABILITY_POLL_SECONDS": "0.5",
        }
    )
    subprocess.run([PREDRAFT, "db", "upgrade"], env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    log_path = tmp_path / "listen.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([PREDRAFT, "listen"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    listener = Listen(process, env, tmp_path / "var", port, metrics_port, log_path)
    try:
        wait_until(
            lambda: "listening as" in listener.log() or process.poll() is not None, timeout=UP_TIMEOUT, what="listen up"
        )
        assert process.poll() is None, listener.log()
        yield listener
    finally:
        children = listener.listener_pids()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            code = process.wait(timeout=40)
            assert code == 0, f"predraft listen exited {code} on SIGINT:\n{listener.log()[-3000:]}"
        assert poll(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), 10), "a listener outlived it"


def _write_instances(folder: Path, count: int, side: int = 256) -> list[Path]:
    """``count`` Secondary Capture instances of one study, ``side`` x ``side`` 16-bit noise (128 KB each)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    study, series = generate_uid(), generate_uid()
    paths = []
    for number in range(count):
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = "PROCESSES^TEST", "P-1", "OT", number + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = side
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (side, side), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = (
            ds.SOPClassUID,
            ds.SOPInstanceUID,
        )
        path = folder / f"i{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _data_set_digest(path: Path) -> str:
    """sha256 of a Part 10 file's data set (what the sender sent), its preamble and file meta left out."""
    with path.open("rb") as stream:
        pydicom.filereader.read_preamble(stream, False)
        pydicom.filereader._read_file_meta_info(stream)
        return hashlib.sha256(stream.read()).hexdigest()


def _storescu(listen: Listen, files: list[Path]) -> subprocess.Popen[str]:
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (apt-get install dcmtk)")
    command = ["storescu", "-v", "-aet", CALLER_AE, "-aec", "PREDRAFT", "127.0.0.1", str(listen.port), *map(str, files)]
    return subprocess.Popen(
        command, env={**os.environ, "TCP_NODELAY": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _acknowledged(output: str) -> list[Path]:
    """The files storescu -v reports a success response for (each "Sending file" then its response)."""
    acknowledged, current = [], None
    for line in output.splitlines():
        if match := re.search(r"Sending file: (.+\.dcm)", line):
            current = Path(match.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acknowledged.append(current)
            current = None
    return acknowledged


def _associate(listen: Listen) -> Association:
    ae = AE(ae_title=CALLER_AE)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", listen.port, ae_title="PREDRAFT")


def _caller_port(assoc: Association) -> int:
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    return int(assoc.dul.socket.socket.getsockname()[1])


def _stored_uids(listen: Listen) -> set[str]:
    engine = sa.create_engine(f"sqlite:///{listen.var_dir / 'predraft.sqlite'}")
    try:
        with engine.connect() as connection:
            return {row[0] for row in connection.execute(sa.text("SELECT sop_instance_uid FROM instances"))}
    finally:
        engine.dispose()


def test_a_sigkilled_listener_process_loses_nothing_acknowledged_and_the_others_keep_serving(listen, tmp_path):
    files = _write_instances(tmp_path / "send", 240)
    batches = [files[index::6] for index in range(6)]
    first = listen.listener_pids()
    assert len(first) == 2, listen.log()
    senders = [_storescu(listen, batch) for batch in batches]
    incoming = listen.var_dir / "spool" / "incoming"
    # Once some instances are in, kill a listener process that holds an association mid-transfer.
    wait_until(lambda: sum(1 for _ in incoming.rglob("*.dcm")) >= 40, timeout=120, what="40 instances stored")
    holders = listen.holders()
    victim = max(holders, key=lambda pid: holders[pid])
    assert holders[victim] > 0, f"no listener process holds an association: {holders}"
    survivor = (first - {victim}).pop()
    os.kill(victim, signal.SIGKILL)
    outputs = [sender.communicate(timeout=300)[0] for sender in senders]

    # Every instance a sender was told is stored is in the spool, the very data set it sent, and in the database.
    acknowledged = [path for output in outputs for path in _acknowledged(output)]
    assert len(acknowledged) >= 40
    assert len(acknowledged) < len(files), "the kill cut no association short"
    in_database = _stored_uids(listen)
    for path in acknowledged:
        sent = pydicom.dcmread(path, stop_before_pixels=True)
        stored = incoming / sent.StudyInstanceUID / f"{sent.SOPInstanceUID}.dcm"
        assert stored.is_file(), f"{path.name} was acknowledged but is not in the spool"
        assert _data_set_digest(stored) == _data_set_digest(path), f"{path.name} is not intact"
        assert sent.SOPInstanceUID in in_database, f"{path.name} was acknowledged but not recorded"
    # The dead process's partly received files went with it.
    assert poll(lambda: not (listen.var_dir / "spool" / "receiving" / str(victim)).exists(), 10)

    # The supervisor started it again; the survivor and the restarted process both take C-STOREs.
    wait_until(lambda: len(listen.listener_pids()) == 2, timeout=60, what="the killed listener process restarted")
    restarted = (listen.listener_pids() - {survivor}).pop()
    assert restarted != victim and survivor in listen.listener_pids()
    wait_until(lambda: f"(pid {restarted}) serving" in listen.log(), timeout=60, what="the restarted process serving")
    assert "died (killed by SIGKILL)" in listen.log()
    served: set[int] = set()
    extra = _write_instances(tmp_path / "after", 40)
    for path in extra:
        assoc = _associate(listen)
        assert assoc.is_established
        served.add(listen.holder(_caller_port(assoc)) or 0)
        answer = assoc.send_c_store(pydicom.dcmread(path))
        assoc.release()
        assert answer.Status == status.SUCCESS
        if {survivor, restarted} <= served:
            break
    assert {survivor, restarted} <= served, f"C-STOREs went to {served} only"
    # The stability check and the sweeper run in the supervisor alone, once, a restart notwithstanding.
    assert listen.log().count("study-stability monitor and sweeper started") == 1
    assert f"sweeper started (pid {listen.process.pid})" in listen.log()
    # One metrics endpoint sums both processes, the killed one's counts included.
    samples = scrape(listen.metrics_port)
    stored_count = samples[
        ("predraft_instances_received_total", frozenset({("transport", "dimse"), ("outcome", "stored")}))
    ]
    assert stored_count >= len(acknowledged) + 2


def test_associations_arriving_together_are_held_two_and_two(listen):
    """Four associations at once: the process with fewer connections takes each next one, so each holds two
    (dealt by a hash of their ports, three or four went to one process half the time)."""
    for _ in range(3):
        with ThreadPoolExecutor(max_workers=4) as pool:
            held = list(pool.map(lambda _: _associate(listen), range(4)))
        try:
            assert all(assoc.is_established for assoc in held)
            assert sorted(listen.holders().values()) == [2, 2], listen.holders()
        finally:
            for assoc in held:
                if assoc.is_established:
                    assoc.release()
        assert poll(lambda: sum(listen.holders().values()) == 0, 10), "associations still held after release"


@pytest.mark.parametrize("listen", [2], indirect=True, ids=["max_associations=2"])
def test_max_associations_holds_for_all_listener_processes_together(listen):
    held: dict[int, Association] = {}
    for _ in range(40):  # until one association is held in each process
        assoc = _associate(listen)
        assert assoc.is_established, "refused with fewer than max_associations open"
        pid = listen.holder(_caller_port(assoc))
        assert pid is not None
        if pid in held:
            assoc.release()
        else:
            held[pid] = assoc
        if len(held) == 2:
            break
    assert len(held) == 2, "every association went to one listener process"
    # Each process holds one of the two: counted per process, each would take one more.
    for _ in range(6):
        refused = _associate(listen)
        assert refused.is_rejected
        answer = refused.acceptor.primitive
        assert (answer.result, answer.result_source, answer.diagnostic) == REJECT_LOCAL_LIMIT

    next(iter(held.values())).release()

    def admitted() -> bool:
        assoc = _associate(listen)
        if assoc.is_established:
            assoc.release()
        return bool(assoc.is_established or assoc.is_released)

    assert poll(admitted, 10, interval=0.2), "a slot given back is not taken again"
    for assoc in held.values():
        if assoc.is_established:
            assoc.release()
