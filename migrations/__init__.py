"""Alembic environment and migration history of the catalogue (installed as ``registry.migrations``).

``HEAD`` is the newest revision id; a test checks it against the scripts, so that opening a
catalogue can compare schema versions without loading Alembic's script directory.
"""

HEAD = "0002_signatures"
