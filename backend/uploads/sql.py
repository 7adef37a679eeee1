"""The few pieces the hand-written SQL of the hot paths shares (transitions, selectors)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sized

from django.db import connection


def sql_in_placeholders(values: Sized) -> str:
    """The placeholders of an IN list of `values`: "%s, %s, %s" (the values go as parameters)."""
    return ", ".join(["%s"] * len(values))


def sql_has_returning() -> bool:
    """Whether the database takes INSERT ... ON CONFLICT and UPDATE ... RETURNING: PostgreSQL, and
    SQLite from 3.35 (Django 5.2 runs on SQLite from 3.31, where RETURNING is a syntax error)."""
    if connection.vendor == "postgresql":
        return True
    return connection.vendor == "sqlite" and sqlite3.sqlite_version_info >= (3, 35)
