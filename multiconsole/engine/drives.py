"""A VM's (or template's) boot media: a CD-ROM, disks and a boot order.

Stored as JSON on the VM or template:

    {"cdrom": <image id> | None,
     "disks": [{"id": <disk id>, "image": <image id> | None, "size_gib": int | None}],
     "boot": ["cdrom", "disk"]}

A disk with an image is a copy-on-write qcow2 overlay of it, made on the host; a disk
without one is an empty qcow2 of `size_gib`. A template's disks have no ids: each VM made
from it gets its own disks (and ids). The API names images by name or id.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from multiconsole.engine.db import Image, Template, Vm
from multiconsole.engine.errors import EngineError, NotFound

BOOT_DEVICES = ("cdrom", "disk", "network")
MAX_DISKS = 8
DISK_GIB_MAX = 4096


def get_image(session: Session, key: str, field: str = "image") -> Image:
    image = session.get(Image, key) or session.scalar(select(Image).where(Image.name == key))
    if image is None:
        raise NotFound(field, f"no image {key!r}")
    return image


def from_fields(session: Session, fields: dict[str, Any], base: dict | None, fresh_ids: bool) -> dict | None:
    """The drives after applying API fields (cdrom, disks, boot) over `base`.

    `fresh_ids`: the disks are new (a VM's own, not a template's) and get ids."""
    if not any(k in fields for k in ("cdrom", "disks", "boot")):
        return _with_ids(base, fresh_ids) if base else base
    drives = dict(base or {"cdrom": None, "disks": [], "boot": []})
    if "cdrom" in fields:
        key = fields["cdrom"]
        if key:
            image = get_image(session, key, "cdrom")
            if image.format != "iso":
                raise EngineError(
                    "cdrom", f"image {image.name!r} is {image.format}, a CD-ROM needs an iso", 422
                )
            drives["cdrom"] = image.id
        else:
            drives["cdrom"] = None
    if fields.get("disks") is not None:
        if len(fields["disks"]) > MAX_DISKS:
            raise EngineError("disks", f"at most {MAX_DISKS} disks", 422)
        disks = []
        for i, d in enumerate(fields["disks"]):
            where = f"disks.{i}"
            image_key, size = d.get("image"), d.get("size_gib")
            if bool(image_key) == bool(size):
                raise EngineError(
                    where, "give an image (a copy-on-write overlay) or a size_gib (an empty disk)", 422
                )
            disk: dict[str, Any] = {"image": None, "size_gib": None}
            if image_key:
                image = get_image(session, image_key, f"{where}.image")
                if image.format == "iso":
                    raise EngineError(
                        f"{where}.image", f"image {image.name!r} is an ISO: use it as the cdrom", 422
                    )
                disk["image"] = image.id
            else:
                if not isinstance(size, int) or not 0 < size <= DISK_GIB_MAX:
                    raise EngineError(f"{where}.size_gib", f"must be 1..{DISK_GIB_MAX}", 422)
                disk["size_gib"] = size
            # The same disk in the same place stays the same disk (its overlay, what it holds).
            old = (base or {}).get("disks", [])
            if (
                i < len(old)
                and old[i].get("id")
                and all(old[i].get(k) == disk[k] for k in ("image", "size_gib"))
            ):
                disk["id"] = old[i]["id"]
            disks.append(disk)
        drives["disks"] = disks
    if fields.get("boot") is not None:
        boot = list(fields["boot"])
        for dev in boot:
            if dev not in BOOT_DEVICES:
                raise EngineError("boot", f"{dev!r} is not one of {', '.join(BOOT_DEVICES)}", 422)
        if len(set(boot)) != len(boot):
            raise EngineError("boot", "each device at most once", 422)
        drives["boot"] = boot
    if "cdrom" in drives.get("boot", []) and not drives.get("cdrom"):
        raise EngineError("boot", "boots from a cdrom, but there is no cdrom image", 422)
    if "disk" in drives.get("boot", []) and not drives.get("disks"):
        raise EngineError("boot", "boots from a disk, but there is no disk", 422)
    if not drives.get("boot"):
        drives["boot"] = [d for d, has in (("cdrom", drives["cdrom"]), ("disk", drives["disks"])) if has]
    return _with_ids(drives, fresh_ids)


def _with_ids(drives: dict, fresh_ids: bool) -> dict:
    disks = []
    for d in drives.get("disks", []):
        d = dict(d)
        if fresh_ids:
            d.setdefault("id", str(uuid.uuid4()))
            if d["id"] is None:
                d["id"] = str(uuid.uuid4())
        else:
            d.pop("id", None)
        disks.append(d)
    return {**drives, "disks": disks}


def for_new_vm(drives: dict | None) -> dict | None:
    """A template's drives as a new VM's: the same media, disks of its own."""
    if not drives:
        return drives
    return _with_ids(
        {**drives, "disks": [{k: v for k, v in d.items() if k != "id"} for d in drives["disks"]]}, True
    )


def image_ids(drives: dict | None) -> list[str]:
    if not drives:
        return []
    ids = [drives["cdrom"]] if drives.get("cdrom") else []
    ids += [d["image"] for d in drives.get("disks", []) if d.get("image")]
    return list(dict.fromkeys(ids))


def has_disks(drives: dict | None) -> bool:
    return bool(drives and drives.get("disks"))


def users_of(session: Session, image_id: str) -> list[str]:
    """The VMs and templates whose drives use the image ("vm NAME", "template NAME")."""
    found = []
    for kind, model in (("VM", Vm), ("template", Template)):
        for name, drives in session.execute(
            select(model.name, model.drives).where(model.drives.is_not(None))
        ):
            if image_id in image_ids(drives):
                found.append(f"{kind} {name}")
    return found


def describe(session: Session, drives: dict | None) -> dict:
    """The drives as the API shows them: image names beside ids."""
    drives = drives or {"cdrom": None, "disks": [], "boot": []}

    def image(image_id: str | None) -> dict | None:
        if not image_id:
            return None
        img = session.get(Image, image_id)
        return {"id": image_id, "name": img.name if img else None}

    return {
        "cdrom": image(drives.get("cdrom")),
        "disks": [
            {"id": d.get("id"), "image": image(d.get("image")), "size_gib": d.get("size_gib")}
            for d in drives.get("disks", [])
        ],
        "boot": list(drives.get("boot", [])),
    }
