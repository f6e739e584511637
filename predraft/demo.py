"""``predraft demo``: write the synthetic three-view study, C-STORE it to the listener, print the draft."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]  # made at import

from predraft.core.db import session_scope
from predraft.core.settings import Settings
from predraft.core.studies import study_detail
from predraft.models.phantoms import write_demo_study

DEMO_CALLING_AE = "PREDRAFT-DEMO"
_DONE_STATES = {"drafted", "error", "out_of_scope"}


class DemoError(RuntimeError):
    """The demo study could not be sent, or no draft came back in time."""


def send_files(paths: list[Path], *, host: str, port: int, called_ae: str, calling_ae: str) -> None:
    """C-STORE ``paths`` over one association; raise DemoError on any failure status."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise DemoError(f"no association with {called_ae}@{host}:{port}; is `predraft serve` running?")
    try:
        for path in paths:
            status = assoc.send_c_store(pydicom.dcmread(path))
            if not status or status.Status != 0x0000:
                code = f"0x{status.Status:04X}" if status else "none (connection lost)"
                raise DemoError(f"C-STORE of {path.name} answered status {code}")
    finally:
        assoc.release()


def run_demo(settings: Settings, *, timeout: float = 180.0) -> str:
    """Send the demo study and return its draft text (waits for the quiet time and the workers)."""
    folder = settings.var_dir / "demo" / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    images = write_demo_study(folder)
    study_uid = str(pydicom.dcmread(images[0].path, stop_before_pixels=True).StudyInstanceUID)
    send_files(
        [image.path for image in images],
        host=settings.listener.host,
        port=settings.listener.port,
        called_ae=settings.listener.ae_title,
        calling_ae=DEMO_CALLING_AE,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            detail = study_detail(session, study_uid)
        if detail and detail["state"] in _DONE_STATES:
            if detail["draft"] is None:
                raise DemoError(f"study {study_uid} ended {detail['state']}: {detail['error']}")
            return f"Study {study_uid} drafted; SR at {detail['draft']['sr_path']}\n\n{detail['draft']['text']}"
        time.sleep(0.5)
    raise DemoError(f"no draft for study {study_uid} within {timeout:.0f} s")
