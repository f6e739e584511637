"""predraft: drafts preliminary reports of orthopedic hip hardware from radiographs.

The application shell: settings, database schema and session, the CLI and ``serve``.
"""

__version__ = "0.1.0"
