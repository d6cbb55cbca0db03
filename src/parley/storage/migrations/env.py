"""Alembic environment: migrations run on the connection the caller hands over."""

from __future__ import annotations

from alembic import context

from parley.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)

with context.begin_transaction():
    context.run_migrations()
