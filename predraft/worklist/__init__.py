"""The radiologist worklist: a FastAPI router with Jinja pages, mounted on the HTTP app by
:func:`predraft.worklist.app.install`.

A layer of its own, above the workers (it queues the exports of verified SRs) and below the shell that
mounts it (docs/architecture.md, "Layers").

Modules: ``auth`` (sessions, CSRF, the session secret), ``users`` (argon2 accounts, used by ``predraft
users``), ``worklist``, ``study``, ``review`` (the review service), ``stats``, ``images`` (thumbnails and
Grad-CAM overlays), ``present`` (labels and formats), ``viewer`` (the optional OHIF Viewer at ``/viewer/``),
``routes`` (thin handlers). Templates in
``templates/`` (autoescaped), CSS and JS in ``static/``.

Every route but ``/login`` and ``/static`` needs a session (the viewer's too); DICOMweb (``/dicomweb``) keeps its
own auth (and takes a session for reads), and ``/healthz`` stays open.
"""
