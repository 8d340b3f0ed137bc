"""hosts' SPICE certificate subject (SPICE over TLS)

Revision ID: 0002_spice_subject
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_spice_subject"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spice_subject", sa.String(length=255), nullable=True))
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spice_subject", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_tokens", schema=None) as batch_op:
        batch_op.drop_column("spice_subject")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("spice_subject")
