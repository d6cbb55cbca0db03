"""muc_rooms: persistent chat rooms and their affiliations

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('muc_rooms',
    sa.Column('jid', sa.String(length=1023), nullable=False),
    sa.Column('config', sa.Text(), nullable=False),
    sa.Column('subject', sa.Text(), nullable=False),
    sa.Column('subject_by', sa.String(length=1023), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('jid')
    )
    op.create_table('muc_affiliations',
    sa.Column('room', sa.String(length=1023), nullable=False),
    sa.Column('jid', sa.String(length=1023), nullable=False),
    sa.Column('affiliation', sa.String(length=16), nullable=False),
    sa.Column('nick', sa.String(length=1023), nullable=True),
    sa.UniqueConstraint('room', 'jid', name='uq_muc_affiliation')
    )


def downgrade() -> None:
    op.drop_table('muc_affiliations')
    op.drop_table('muc_rooms')
