"""REST API /api/v1/images: upload (streamed), list, show, remove boot media.

Uploading and removing are for the system admin; listing and reading for whoever may make
VMs or templates (they pick images for them). An upload is the raw file as the request
body (`POST /api/v1/images?name=NAME&format=iso|raw|qcow2`): it is written to the store
as it comes, in constant memory, hashed on the way, then checked with qemu-img; nothing
is kept unless it passes.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from multiconsole import streaming
from multiconsole.engine import drives, images
from multiconsole.engine.api import current_user, db, grants
from multiconsole.engine.auth import ROLE_ADMIN, VM_OPERATOR
from multiconsole.engine.db import Image
from multiconsole.engine.errors import Conflict, EngineError
from multiconsole.engine.permissions import Forbidden, Grants, require_admin
from multiconsole.engine.schemas import ImageOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", dependencies=[Depends(current_user)])


def may_use_images(g: Grants) -> bool:
    """Whoever may create a VM or template somewhere: admin or vm_operator on the system or a cluster."""
    if g.system & {ROLE_ADMIN, VM_OPERATOR}:
        return True
    return any(t == "cluster" and roles & {ROLE_ADMIN, VM_OPERATOR} for (t, _), roles in g.objects.items())


def _require_reader(g: Grants) -> None:
    if not may_use_images(g):
        raise Forbidden(None, "only those who may create VMs or templates see images")


def _out(session: Session, image: Image, with_users: bool = False) -> ImageOut:
    out = ImageOut.model_validate(image, from_attributes=True)
    if with_users:
        out.used_by = drives.users_of(session, image.id)
    return out


@router.get("/images", response_model=list[ImageOut])
def list_images(session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    _require_reader(g)
    return [_out(session, i) for i in session.scalars(select(Image).order_by(Image.name))]


@router.get("/images/{key}", response_model=ImageOut)
def get_image(key: str, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)):
    _require_reader(g)
    return _out(session, drives.get_image(session, key), with_users=True)


@router.delete("/images/{key}", status_code=204)
def delete_image(
    key: str, request: Request, session: Session = Depends(db, scope="function"), g: Grants = Depends(grants)
):
    """Remove an image no VM or template uses (hosts' caches keep their copies)."""
    require_admin(g, "remove images")
    image = drives.get_image(session, key)
    users = drives.users_of(session, image.id)
    if users:
        raise Conflict("image", f"image {image.name!r} is in use by {', '.join(users)}")
    session.delete(image)
    session.commit()
    request.app.state.image_store.remove(image.id)
    log.info("image removed name=%s by=%s", image.name, g.user.name)


def _limit(request: Request) -> int:
    return getattr(request.app.state.settings, "image_max_bytes", 64 << 30)


@router.post(
    "/images",
    response_model=ImageOut,
    status_code=201,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {}}, "required": True}},
)
async def upload_image(
    request: Request,
    name: str = Query(..., max_length=512, description="the image's name"),
    format: str | None = Query(None, description="iso, raw or qcow2; detected when not given"),
    session: Session = Depends(db, scope="function"),
    g: Grants = Depends(grants),
):
    """Upload an image: the request body is the file itself."""
    require_admin(g, "upload images")
    images.check_name(name)
    declared = images.check_declared(format)
    limit = _limit(request)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise images.TooLarge("file", f"the image is larger than the limit of {limit} bytes")

    def before() -> None:
        if session.scalar(select(Image.id).where(Image.name == name)) is not None:
            raise Conflict("name", f"an image named {name!r} already exists")
        session.commit()  # no database connection is held while the body streams in

    await run_in_threadpool(before)
    store: images.ImageStore = request.app.state.image_store
    upload = await run_in_threadpool(store.upload, limit)
    try:
        await streaming.drain(request.stream(), upload.write)
        received = await run_in_threadpool(upload.finish)
        if received.size == 0:
            raise images.ImageRefused("file", "the upload is empty")
        facts = await run_in_threadpool(images.inspect, received.path, declared, received.head)

        def keep() -> Image:
            image = Image(
                name=name,
                format=facts.format,
                size=received.size,
                virtual_size=facts.virtual_size,
                sha256=received.sha256,
                created_by=g.user.name,
            )
            session.add(image)
            try:
                session.flush()
            except IntegrityError:
                session.rollback()
                raise Conflict("name", f"an image named {name!r} already exists") from None
            store.keep(received, image.id)
            try:
                session.commit()
            except BaseException:
                store.remove(image.id)
                raise
            return image

        image = await run_in_threadpool(keep)
    except ClientDisconnect:
        upload.discard()
        raise EngineError("file", "the upload was cut short", 400) from None
    except OSError as err:  # the disk is full or failing: nothing kept, try again later
        upload.discard()
        log.warning("image upload failed name=%s: %s", name, err.strerror or err)
        raise images.StoreFull(err) from None
    except BaseException:
        upload.discard()
        raise
    log.info("image uploaded name=%s format=%s bytes=%d by=%s", name, image.format, image.size, g.user.name)
    return _out(session, image)
