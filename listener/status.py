"""Named DIMSE status codes used by the listener (PS3.4 Annex B and C)."""

SUCCESS = 0x0000
#: Refused: out of resources (the spool is below its free-space floor).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class.
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: cannot understand (the data set could not be decoded or lacks its UIDs).
CANNOT_UNDERSTAND = 0xC000
#: Failure: processing failure (an unexpected error while storing or recording).
PROCESSING_FAILURE = 0x0110
#: Refused: SOP class not supported (DX For Processing, or anything predraft does not store).
SOP_CLASS_NOT_SUPPORTED = 0x0122
