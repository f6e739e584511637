"""The pynetdicom ceiling for bench/ingest.py: predraft's own DIMSE set-up with nothing behind it.

Same AE and server as ``predraft listen`` (``predraft.listener.dimse.make_server``: contexts, PDU size, timeouts,
TCP_NODELAY, the connection bounds and the association threads that wait rather than poll), same chunked
receive into a file; but the C-STORE handler only renames the received file into OUTPUT_DIR and answers
success: no parse, no fsync, no database. It stores the way storescp does (written and closed, not synced),
so predraft's rate over this one is what predraft's own work costs, and this one's rate over storescp's is
what a listener built on pynetdicom as predraft builds it can reach on the machine.

    python bench/bare_pynetdicom_scp.py PORT AE_TITLE OUTPUT_DIR     (runs until SIGINT or SIGTERM)
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from pynetdicom import evt

from predraft.core.settings import Settings
from predraft.listener import status
from predraft.listener.dimse import make_server


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    port, ae_title, output = int(argv[0]), argv[1], Path(argv[2])
    output.mkdir(parents=True, exist_ok=True)
    receiving = output.parent / f"{output.name}-receiving"
    receiving.mkdir(exist_ok=True)
    tempfile.tempdir = str(receiving)  # on the output's file system, as predraft points it at the spool's
    numbers = itertools.count()

    def store(event: evt.Event) -> int:
        os.replace(event.dataset_path, output / f"{next(numbers)}.dcm")
        return status.SUCCESS

    settings = Settings(ae_title=ae_title, dimse_host="127.0.0.1", dimse_port=port, var_dir=output.parent / "var")
    server = make_server(settings, store)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
