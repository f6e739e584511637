"""A tiny task for bench/broker.py: it marks its index as done by creating a file."""

from __future__ import annotations

import os
from pathlib import Path

from celery import shared_task


@shared_task(name="bench.touch")
def touch(index: int) -> None:
    Path(os.environ["BENCH_DONE_DIR"], str(index)).touch()
