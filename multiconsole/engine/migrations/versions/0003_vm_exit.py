"""why a VM went down (vdsm's exit code, reason, message); when a console session last changed

Revision ID: 0003_vm_exit
Revises: 0002_spice_subject
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_vm_exit"
down_revision = "0002_spice_subject"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("exit_code", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("exit_reason", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("exit_message", sa.String(length=1024), nullable=True))
    with op.batch_alter_table("vm_consoles", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("vm_consoles", schema=None) as batch_op:
        batch_op.drop_column("session_at")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_column("exit_message")
        batch_op.drop_column("exit_reason")
        batch_op.drop_column("exit_code")
