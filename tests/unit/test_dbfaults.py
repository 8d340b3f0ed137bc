"""What database errors mean for a client (engine/dbfaults.py), from errors SQLite really raises."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, exc
from sqlalchemy.orm import Session

from multiconsole.engine import dbfaults
from multiconsole.engine.db import Base, Cluster, User


@pytest.fixture
def session(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_a_taken_name_is_a_409_naming_the_field_and_the_name(session):
    session.add(Cluster(name="prod", compat_level="4.7"))
    session.commit()
    session.add(Cluster(name="prod", compat_level="4.7"))
    with pytest.raises(exc.IntegrityError) as raised:
        session.flush()
    err = dbfaults.as_engine_error(raised.value)
    assert (err.status, err.field, err.reason) == (409, "name", "a cluster named 'prod' already exists")


def test_a_taken_name_in_an_update_names_the_field(session):
    session.add_all([User(name="ann", password_hash="x"), User(name="bob", password_hash="x")])
    session.commit()
    session.query(User).filter_by(name="bob").one().name = "ann"
    with pytest.raises(exc.IntegrityError) as raised:
        session.flush()
    err = dbfaults.as_engine_error(raised.value)
    assert (err.status, err.field, err.reason) == (409, "name", "a user with this name already exists")


def _operational(message: str) -> exc.OperationalError:
    return exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


def test_faults_that_pass_are_503s_with_retry_after():
    full = dbfaults.as_engine_error(_operational("database or disk is full"))
    assert (full.status, full.reason) == (503, dbfaults.DISK_FULL)
    assert int(full.headers["Retry-After"]) >= 1
    down = dbfaults.as_engine_error(_operational("unable to open database file"))
    assert (down.status, down.reason) == (503, dbfaults.DATABASE_UNAVAILABLE)
    pool = dbfaults.as_engine_error(exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"))
    assert pool.status == 503 and "no database connection is free" in pool.reason


def test_a_bug_stays_a_500():
    assert dbfaults.as_engine_error(exc.ProgrammingError("SELECT", {}, sqlite3.ProgrammingError("x"))) is None
    assert dbfaults.as_engine_error(exc.ArgumentError("bad")) is None
