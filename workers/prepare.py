"""Preparing one received instance in the workers: :func:`predraft.models.prepare.prepare_file` bounded by a sandbox."""

from __future__ import annotations

from pathlib import Path

from predraft.models.prepare import OutOfScopeError, PreparedInstance, prepare_file
from predraft.workers.sandbox import DecodeFailure, Sandbox


def prepare_bounded(
    path: Path,
    *,
    input_size: int,
    gate_size: int | None = None,
    voi_window_index: int = 0,
    with_halves: bool = False,
    with_implant_crop: bool = False,
    sandbox: Sandbox,
) -> PreparedInstance:
    """prepare_file run in ``sandbox``'s child, bounded in time and memory (the workers' entry point).

    Raises OutOfScopeError as prepare_file does; every other failure (an unreadable file, pixel data that
    will not decode, a decoder that panics, crashes, hangs or runs out of memory) is a DecodeFailure with
    its reason, and ``sandbox`` is ready for the next image.
    """
    try:
        return sandbox.call(
            prepare_file,
            path,
            input_size=input_size,
            gate_size=gate_size,
            voi_window_index=voi_window_index,
            with_halves=with_halves,
            with_implant_crop=with_implant_crop,
        )
    except DecodeFailure as failure:
        if failure.error_type == OutOfScopeError.__name__:
            raise OutOfScopeError(failure.detail) from None
        raise
