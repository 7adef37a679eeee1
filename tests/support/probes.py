"""Jobs a test enqueues to look inside a real work horse (by dotted path, like any job)."""

from __future__ import annotations

from django.db import close_old_connections, connections


def horse_inherited_connections() -> list[str]:
    """The database aliases whose connection this horse holds open before it touched the database,
    then what every job does first (jobs.upload_transfer): close the connections it finds.

    Such a connection can only be its parent's, copied by the fork: closing it would end the
    parent's session on PostgreSQL (the close goes over the shared socket).
    """
    inherited = [db.alias for db in connections.all(initialized_only=True) if db.connection is not None]
    close_old_connections()
    return inherited
