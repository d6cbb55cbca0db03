"""uploads: HTTP file upload slots and files

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('uploads',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('owner', sa.String(length=1023), nullable=False),
    sa.Column('token', sa.String(length=64), nullable=False),
    sa.Column('filename', sa.String(length=1023), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content_type', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('uploaded_at', sa.Float(), nullable=True),
    sa.Column('path', sa.String(length=1023), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('path', name='uq_uploads_path'),
    sa.UniqueConstraint('token', name='uq_uploads_token')
    )
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.create_index('ix_uploads_created', ['created_at'], unique=False)
        batch_op.create_index('ix_uploads_owner_created', ['owner', 'created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('uploads', schema=None) as batch_op:
        batch_op.drop_index('ix_uploads_owner_created')
        batch_op.drop_index('ix_uploads_created')

    op.drop_table('uploads')
