"""What a database error means for the client: 503 for faults that pass, 409 for a unique name
taken by a concurrent request. Pure: reads the error, touches nothing.

- the pool has no free connection (every request thread holds one): 503, retry soon;
- PostgreSQL stopped or restarting, a connection it closed: 503 "database unavailable";
- a full disk (SQLite's SQLITE_FULL, PostgreSQL's 53100): 503 "no space left for the database";
- a unique constraint (two creates of one name at once; the check before the insert saw
  neither): 409 naming the field, as the check itself would have.
"""

from __future__ import annotations

import re

from sqlalchemy import exc as sa
from sqlalchemy.orm.exc import StaleDataError

from multiconsole.engine.errors import Conflict, EngineError, Unavailable

DATABASE_UNAVAILABLE = "database unavailable"
DISK_FULL = "no space left for the database"
# What the rows of each table are called in messages.
THINGS = {
    "vms": "VM",
    "clusters": "cluster",
    "hosts": "host",
    "templates": "template",
    "users": "user",
    "permissions": "permission",
    "login_tokens": "login token",
    "enrollment_tokens": "enrolment token",
}
# Columns whose field has another name in the API.
FIELDS = {"token_hash": "token"}

_SQLITE_UNIQUE = re.compile(r"UNIQUE constraint failed: (\w+)\.(\w+)")
_PG_KEY = re.compile(r"Key \((?:\w+\.)?(\w+)\)=\((.*)\) already exists")
_INSERT = re.compile(r"INSERT INTO (\w+) \(([^)]*)\)", re.IGNORECASE)


def as_engine_error(err: sa.SQLAlchemyError) -> EngineError | None:
    """The client's error for a database error; None for what is a bug (a 500)."""
    if isinstance(err, sa.TimeoutError):
        return Unavailable(None, "the engine is busy: no database connection is free; try again", 2)
    if isinstance(err, sa.IntegrityError):
        return _integrity(err)
    if isinstance(err, StaleDataError):  # a row this request changes was removed meanwhile
        return Conflict(None, "what this request changes was changed or removed meanwhile; try again")
    if not isinstance(err, sa.DBAPIError):
        return None
    orig = err.orig
    text = str(orig).lower()
    if getattr(orig, "sqlstate", None) == "53100" or "disk is full" in text or "no space left" in text:
        return Unavailable(None, DISK_FULL, 30)
    if "database is locked" in text or "database is busy" in text:
        return Unavailable(None, "the database is busy; try again", 2)
    if isinstance(err, (sa.OperationalError, sa.InterfaceError)) or err.connection_invalidated:
        return Unavailable(None, DATABASE_UNAVAILABLE, 5)
    return None


def _integrity(err: sa.IntegrityError) -> EngineError:
    orig = err.orig
    text = str(orig)
    table = column = value = None
    if m := _SQLITE_UNIQUE.search(text):
        table, column = m.groups()
        value = _inserted(err, table, column)
    elif getattr(orig, "sqlstate", None) == "23505":
        diag = getattr(orig, "diag", None)
        table = getattr(diag, "table_name", None)
        if m := _PG_KEY.search(getattr(diag, "message_detail", None) or text):
            column, value = m.groups()
    if column is None:
        # A row that another request removed or still uses (a foreign key), or another rule.
        return Conflict(None, "the change conflicts with another made at the same time; try again")
    what = THINGS.get(table or "", "row")
    field = FIELDS.get(column, column)
    if column == "name" and value is not None:
        reason = f"a {what} named {value!r} already exists"
    else:
        reason = f"a {what} with this {field} already exists"
    return Conflict(field, reason)


def _inserted(err: sa.IntegrityError, table: str, column: str) -> str | None:
    """The value an INSERT gave `column` (SQLite's message names the column, not the value)."""
    m = _INSERT.search(err.statement or "")
    params = err.params
    if not m or m.group(1) != table or not isinstance(params, (tuple, list)):
        return None
    columns = [c.strip().strip('"') for c in m.group(2).split(",")]
    if column in columns and len(params) == len(columns):
        value = params[columns.index(column)]
        return value if isinstance(value, str) else None
    return None
