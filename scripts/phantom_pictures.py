"""Write docs/images/phantoms/<class>.png: one plain phantom AP hip per hardware class, for the README.

Usage: .venv/bin/python scripts/phantom_pictures.py [OUT_DIR]  (default docs/images/phantoms)

Each picture is the right hip of the same phantom patient (so only the hardware differs), rendered by
predraft.models.phantoms.render_picture without acquisition variation, cropped to the hip and reduced to 300 x 360
pixels, 8-bit grey.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from predraft.models.phantoms import render_picture
from predraft.models.taxonomy import CLASS_ORDER, View

REPO = Path(__file__).resolve().parents[1]
SIZE = (300, 360)
SEED = 3


def picture(hardware: str) -> Image.Image:
    image = render_picture(hardware, view=View.AP_HIP, seed=SEED, size=900)
    height, width = image.shape
    # the hip and proximal femur: drop the top of the iliac wing and the distal shaft
    crop = image[int(0.08 * height) : int(0.08 * height) + int(width * SIZE[1] / SIZE[0]), :]
    pixels = np.rint(np.clip(crop, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(pixels).resize(SIZE, Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else REPO / "docs" / "images" / "phantoms"
    out_dir.mkdir(parents=True, exist_ok=True)
    for hardware in CLASS_ORDER:
        path = out_dir / f"{hardware.value}.png"
        picture(hardware.value).save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
