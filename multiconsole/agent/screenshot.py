"""Screenshots of a VM's screen: what libvirt hands over (PPM from QEMU, PNG from the test
driver) turned into a PNG, optionally scaled down for a thumbnail."""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# A 4096x2160 PPM is 26.5 MB: anything far beyond is not a screen.
MAX_BYTES = 64 * 1024 * 1024
MAX_WIDTH_RANGE = (16, 4096)


@dataclass(frozen=True)
class Png:
    data: bytes
    width: int
    height: int


class NotAnImage(ValueError):
    """libvirt's screenshot could not be read as an image."""


def scaled_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    """The size fitting `max_width`, aspect ratio kept; never larger than the original."""
    if max_width is None or width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def to_png(data: bytes, max_width: int | None = None) -> Png:
    """Any image Pillow reads (PPM, PNG ...) as a PNG, at most `max_width` pixels wide."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            image = im if im.mode in ("RGB", "RGBA", "L") else im.convert("RGB")
            size = scaled_size(image.width, image.height, max_width)
            if size != image.size:
                image = image.resize(size, Image.Resampling.LANCZOS)
            out = io.BytesIO()
            image.save(out, format="PNG")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise NotAnImage(f"the screenshot is not a readable image: {err}") from None
    return Png(out.getvalue(), size[0], size[1])
