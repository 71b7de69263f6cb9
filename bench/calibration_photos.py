"""A calibration folder for ``--precision int8`` from the test photos: random crops (35-100 % of
the area) and mirror images of each, as JPEG files. ``python -m bench.calibration_photos DIR``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from harness.processes import ROOT

TESTDATA = ROOT.parent / "shared" / "testdata"
PHOTOS = ("shuttle.jpg", "flower.jpg", "airdale.jpg")


def write_crops(folder: Path, per_photo: int = 40, seed: int = 22, source: Path = TESTDATA) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for name in PHOTOS:
        photo = Image.open(source / name).convert("RGB")
        width, height = photo.size
        for index in range(per_photo):
            scale = np.sqrt(rng.uniform(0.35, 1.0))
            w, h = max(32, int(width * scale)), max(32, int(height * scale))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            crop = photo.crop((left, top, left + w, top + h))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            path = folder / f"{index:03d}-{name}"
            crop.save(path, quality=92)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A calibration folder for --precision int8: random crops and mirror images of "
        "the test photos, as JPEG files."
    )
    parser.add_argument("folder", type=Path, help="where to write the images (made if missing)")
    parser.add_argument("--per-photo", type=int, default=40, help="crops of each test photo")
    args = parser.parse_args(argv)
    print(len(write_crops(args.folder, args.per_photo)), "images written to", args.folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
