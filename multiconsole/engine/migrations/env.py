"""Alembic environment: the engine hands us its connection (see db.migrate)."""

from alembic import context

from multiconsole.engine.db import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
