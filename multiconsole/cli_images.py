"""`multiconsole image upload | list | show | delete`: boot media on the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from multiconsole.cli_engine import Run, _details, _table, _text, command, usage_error

image_app = typer.Typer(
    help="Images: ISO installers and disk images (raw, qcow2) for VMs' CD-ROMs and disks.",
    no_args_is_help=True,
)
FORMATS = ("iso", "raw", "qcow2")


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _image_details(run: Run, i: dict) -> None:
    _details(
        run,
        [
            ("image", i["name"]),
            ("id", i["id"]),
            ("format", i["format"]),
            ("size", f"{_size(i['size'])} ({i['size']} bytes)"),
            ("virtual size", f"{_size(i['virtual_size'])} ({i['virtual_size']} bytes)"),
            ("sha256", i["sha256"]),
            ("uploaded by", i.get("created_by")),
            ("uploaded", i.get("created_at")),
            ("used by", ", ".join(i.get("used_by") or []) or None),
        ],
    )


@command(image_app, "upload")
def image_upload(
    run: Run,
    file: Annotated[Path, typer.Argument(help="the ISO or disk image file", exists=True, dir_okay=False)],
    name: Annotated[str | None, typer.Option("--name", help="the image's name (default: the file's)")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="iso, raw or qcow2 (default: detected by the engine)")
    ] = None,
) -> None:
    """Upload an image, streamed with a progress bar; the engine checks it with qemu-img."""
    if fmt is not None and fmt not in FORMATS:
        usage_error(f"--format must be one of {', '.join(FORMATS)}")
    size = file.stat().st_size
    columns: list[Any] = [
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=run.console, transient=True, disable=run.as_json) as bar:
        task = bar.add_task(f"uploading {file.name}", total=size)
        image = run.client.upload_image(file, name or file.name, fmt, lambda n: bar.advance(task, n))

    def render() -> None:
        run.say(f"image {image['name']} uploaded ({image['format']}, {_size(image['size'])})")
        _image_details(run, image)

    run.show(image, render)


@command(image_app, "list")
def image_list(run: Run) -> None:
    """List the images."""
    images = run.get("images")

    def render() -> None:
        t = _table("Name", "Format", "Size", "Virtual size", "sha256")
        for i in images:
            t.add_row(i["name"], i["format"], _size(i["size"]), _size(i["virtual_size"]), i["sha256"][:16])
        run.console.print(t)

    run.show(images, render)


@command(image_app, "show")
def image_show(run: Run, name: Annotated[str, typer.Argument(help="image name or id")]) -> None:
    """Show an image and what uses it."""
    image = run.get("images", name)
    run.show(image, lambda: _image_details(run, image))


def _delete(run: Run, name: str) -> None:
    run.delete("images", name)
    run.show(None, lambda: run.say(f"image {_text(name)} removed"))


@command(image_app, "delete")
def image_delete(run: Run, name: Annotated[str, typer.Argument(help="image name or id")]) -> None:
    """Remove an image (refused while a VM or template uses it)."""
    _delete(run, name)


@command(image_app, "remove")
def image_remove(run: Run, name: Annotated[str, typer.Argument(help="image name or id")]) -> None:
    """Remove an image (the same as delete)."""
    _delete(run, name)
