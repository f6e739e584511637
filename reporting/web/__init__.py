"""The radiologist worklist: a FastAPI router with Jinja pages, mounted on the HTTP app by
:func:`reporting.web.app.install`.

Here rather than in a top-level ``web/``: the layout puts the worklist with the rest of the reporting stage
(``reporting/web/``, docs ARCHITECTURE.md), beside the SR writer whose verified SRs it issues.

Modules: ``auth`` (sessions, CSRF, the session secret), ``users`` (argon2 accounts, used by ``predraft
users``), ``worklist``, ``study``, ``review`` (the review service), ``stats``, ``images`` (thumbnails and
Grad-CAM overlays), ``present`` (labels and formats), ``routes`` (thin handlers). Templates in
``templates/`` (autoescaped), CSS and JS in ``static/``.

Every route but ``/login`` and ``/static`` needs a session; DICOMweb (``/dicomweb``) keeps its own auth, and
``/healthz`` stays open.
"""
