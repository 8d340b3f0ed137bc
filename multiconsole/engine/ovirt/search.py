"""oVirt's search queries, the part scripts use: `name=myvm`, `name=web*`, `status=up`,
`cluster=Default`, joined by `and`. A term we do not understand is a 400 naming it, not a
silently wider answer."""

from __future__ import annotations

import re
import shlex

from sqlalchemy import ColumnElement, and_, func

from multiconsole.engine.errors import EngineError
from multiconsole.engine.ovirt import xml

TERM_RE = re.compile(r"^\s*([A-Za-z_.]+)\s*(!=|=)\s*(.*?)\s*$")
MAX_QUERY = 512
# The largest `max` a list takes: what both databases hold in an INTEGER (a larger one overflowed: 500).
MAX_RESULTS = 2**31 - 1


def _like(value: str) -> str:
    """oVirt's `*` wildcard as SQL LIKE, with LIKE's own characters escaped."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def _glob(value: str) -> str:
    """oVirt's `*` wildcard as SQLite's GLOB (case-sensitive, where SQLite's LIKE is not)."""
    return "".join(f"[{c}]" if c in "?[" else c for c in value)


def parse(query: str) -> list[tuple[str, str, str]]:
    """(key, operator, value) of each term."""
    if len(query) > MAX_QUERY:
        raise EngineError("search", f"the query is longer than {MAX_QUERY} characters", 400)
    try:
        words = shlex.split(query, posix=True)
    except ValueError as err:
        raise EngineError("search", f"cannot read the query: {err}", 400) from None
    # Rejoin `name = x` written with spaces, then split on `and`.
    terms, current = [], []
    for word in words:
        if word.lower() == "and":
            terms.append(" ".join(current))
            current = []
        else:
            current.append(word)
    terms.append(" ".join(current))
    out = []
    for term in terms:
        if not term.strip():
            if len(terms) == 1:
                return []
            raise EngineError("search", "an 'and' without a term beside it", 400)
        m = TERM_RE.match(term)
        if m is None:
            raise EngineError("search", f"{term!r} is not a term like name=value", 400)
        out.append((m.group(1).lower(), m.group(2), m.group(3)))
    return out


def where(
    query: str | None,
    columns: dict[str, ColumnElement],
    values: dict[str, dict[str, str]] | None = None,
    case_sensitive: bool = True,
    dialect: str = "postgresql",
) -> ColumnElement[bool] | None:
    """A WHERE clause for `query`; `values` translates a key's oVirt values to ours."""
    if not query:
        return None
    clauses = []
    for key, op, value in parse(query):
        column = columns.get(key)
        if column is None:
            raise EngineError(
                "search", f"cannot search by {key!r}: only by {', '.join(sorted(columns))}", 400
            )
        if values and key in values:
            mapped = values[key].get(value.lower())
            if mapped is None:
                raise EngineError(
                    "search", f"{key} {value!r} is not one of {', '.join(sorted(values[key]))}", 400
                )
            value = mapped
        if case_sensitive and dialect == "sqlite":
            clause = column.op("GLOB")(_glob(value))
        elif case_sensitive:
            clause = column.like(_like(value), escape="\\")
        else:
            clause = func.lower(column).like(_like(value.lower()), escape="\\")
        clauses.append(~clause if op == "!=" else clause)
    return and_(*clauses)


def filtered(session, q, query: str | None, columns: dict, values: dict | None, case_sensitive: str | None):
    """`q` narrowed by the `search` and `case_sensitive` query parameters (oVirt's default:
    case-sensitive)."""
    sensitive = xml.boolean(case_sensitive, "case_sensitive")
    dialect = session.get_bind().dialect.name
    clause = where(query, columns, values, True if sensitive is None else sensitive, dialect)
    return q.where(clause) if clause is not None else q
