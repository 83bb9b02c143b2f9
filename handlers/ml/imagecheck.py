"""Decoding one image fully, in a module that imports nothing but PIL: the image check's
worker processes are spawned fresh and import only this, not torch."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def check_one(path: Path) -> str | None:
    """None when the image decodes fully, else the reason (truncated files raise here)."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # any decoder failure is a bad file, whatever its type
        return f"{type(e).__name__}: {e}"
    return None
