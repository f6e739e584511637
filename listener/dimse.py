"""The DIMSE listener: a pynetdicom SCP for C-ECHO and C-STORE of CR and DX radiographs.

The C-STORE handler is thin: it reads the header, writes the encoded dataset to the spool (fsync,
atomic rename), records the instance, and only then returns Success. It never decodes pixels. Any
unexpected error becomes a failure status, not a dead association.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, _config, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from listener import status
from listener.ingest import InstanceHeader, record_instance
from listener.spool import Spool, SpoolFullError
from models.taxonomy import RADIOGRAPH_SOP_CLASSES
from predraft.db import session_scope
from predraft.settings import Settings

log = logging.getLogger(__name__)

# pynetdicom logs C-STORE request identifiers (patient name and ID) unless told not to.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False


@dataclass
class StoreHandler:
    """Handles EVT_C_STORE: spool, record, then answer."""

    spool: Spool
    database_url: str

    def __call__(self, event: evt.Event) -> int:
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        try:
            ds = event.dataset
            header = InstanceHeader.from_dataset(ds, str(event.context.transfer_syntax))
        except Exception as exc:  # undecodable or incomplete data set
            log.warning("C-STORE from %s refused: cannot understand the data set: %s", calling_ae, exc)
            return status.CANNOT_UNDERSTAND
        if header.sop_class_uid != str(event.request.AffectedSOPClassUID):
            log.warning("C-STORE from %s refused: SOP class %s in a %s request", calling_ae,
                        header.sop_class_uid, event.request.AffectedSOPClassUID)
            return status.DATASET_DOES_NOT_MATCH_SOP_CLASS
        try:
            data = event.encoded_dataset(include_meta=True)
            path = self.spool.write(self.spool.instance_path(header.study_uid, header.sop_instance_uid), data)
            with session_scope(self.database_url) as session:
                result = record_instance(session, header=header, spool_path=str(path), size_bytes=len(data),
                                         calling_ae=calling_ae)
        except SpoolFullError as exc:
            log.error("C-STORE refused: %s", exc)
            return status.OUT_OF_RESOURCES
        except OSError as exc:
            log.error("C-STORE failed writing the spool: %s", exc)
            return status.OUT_OF_RESOURCES
        except Exception:
            log.exception("C-STORE of instance %s failed", header.sop_instance_uid)
            return status.PROCESSING_FAILURE
        log.info("stored instance %s (study row %d%s)", header.sop_instance_uid, result.study_id,
                 ", duplicate" if result.duplicate else "")
        return status.SUCCESS


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    for sop_class in RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    if settings.allowed_calling_aes:
        ae.require_calling_aet = settings.allowed_calling_aes
    ae.maximum_associations = 10
    return ae


def start_dimse_server(settings: Settings) -> ThreadedAssociationServer:
    """Start the SCP in background threads and return its server (``.server_address``, ``.shutdown()``)."""
    spool = Spool(settings.spool_dir)
    handler = StoreHandler(spool=spool, database_url=settings.database_url)
    ae = make_ae(settings)
    server = ae.start_server((settings.dimse_host, settings.dimse_port), block=False,
                             evt_handlers=[(evt.EVT_C_STORE, handler)])
    return server
