"""The Failure Reason (0008,1197) values of a STOW-RS Store Instances Response (PS3.18 Table I.2-2), and
the one for each :class:`predraft.listener.receive.ReceiveStatus` that is a failure."""

from __future__ import annotations

from predraft.listener.receive import ReceiveStatus

FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_SOP_CLASS_MISMATCH = 0xA900
#: A part whose Study Instance UID is not the one of ``POST /studies/{study}``. PS3.18 10.5 calls this a
#: conflict and has no code of its own for it: it is a data set that does not match the request (A9xx).
FAILURE_STUDY_UID_MISMATCH = 0xA900
FAILURE_CANNOT_UNDERSTAND = 0xC000
FAILURE_PROCESSING = 0x0110
FAILURE_SOP_CLASS_NOT_SUPPORTED = 0x0122

FAILURE_REASON_OF = {
    ReceiveStatus.CANNOT_UNDERSTAND: FAILURE_CANNOT_UNDERSTAND,
    ReceiveStatus.SOP_CLASS_MISMATCH: FAILURE_SOP_CLASS_MISMATCH,
    ReceiveStatus.SOP_CLASS_NOT_SUPPORTED: FAILURE_SOP_CLASS_NOT_SUPPORTED,
    ReceiveStatus.OUT_OF_RESOURCES: FAILURE_OUT_OF_RESOURCES,
    ReceiveStatus.PROCESSING_FAILURE: FAILURE_PROCESSING,
}
