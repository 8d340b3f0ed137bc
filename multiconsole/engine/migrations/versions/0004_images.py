"""images (boot media), VMs' and templates' drives, the host that keeps a VM's disks

Revision ID: 0004_images
Revises: 0002_spice_subject
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_images"
down_revision = "0003_vm_exit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drives", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("disk_host_id", sa.String(length=36), nullable=True))
        batch_op.create_foreign_key(
            "fk_vms_disk_host_id", "hosts", ["disk_host_id"], ["id"], ondelete="SET NULL"
        )
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drives", sa.JSON(), nullable=True))
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("shared_dir", sa.String(length=1024), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_column("shared_dir")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("drives")
    with op.batch_alter_table("vms", schema=None) as batch_op:
        batch_op.drop_constraint("fk_vms_disk_host_id", type_="foreignkey")
        batch_op.drop_column("disk_host_id")
        batch_op.drop_column("drives")
    op.drop_table("images")
