"""Images as data URIs, so the report is one file that opens anywhere.

Large images are shrunk (longest side ``max_side``) and re-encoded as JPEG:
a full-size COCO image per sample would make a report of a few hundred samples
hundreds of megabytes. Boxes are drawn in the image's *original* pixel
coordinates (the SVG's viewBox is the original size), so shrinking never moves
a box. Each image is embedded once however many samples use it.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

# Files at most this large, in a format every browser shows and needing no shrinking, are embedded as they are.
KEEP_AS_IS_BYTES = 300_000
BROWSER_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


@dataclass(frozen=True)
class EmbeddedImage:
    """An image ready for the page: ``width`` and ``height`` are the original pixel size."""

    uri: str
    width: int
    height: int


def embed_image(path: Path, max_side: int = 640) -> EmbeddedImage:
    """``path`` as a data URI (shrunk to ``max_side`` when larger), with its original size.

    Raises ``OSError`` (a missing or unreadable file) for the caller to report.
    """
    with Image.open(path) as image:
        width, height = image.size
        mime = BROWSER_FORMATS.get(image.format or "")
        if mime and max(width, height) <= max_side and path.stat().st_size <= KEEP_AS_IS_BYTES:
            return EmbeddedImage(_uri(mime, path.read_bytes()), width, height)
        rgb = image.convert("RGB")
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        rgb = rgb.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=85)
    return EmbeddedImage(_uri("image/jpeg", buffer.getvalue()), width, height)


def _uri(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
