"""Write DRIVE as a user's generic PNG split folder, <out>/{training,test}/{images,masks}/<stem>.png.

Used to time `triptych pdcr benchmark --data folder:<out>` on a split folder that is not DRIVE's
layout (issue 16). The data stay outside the repository (DRIVE's licence).

Example: .venv/bin/python benchmarks/pdcr_drive_as_png.py ../shared/data/drive /tmp/drive_png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image


def main(src: Path, dst: Path) -> None:
    for split in ("training", "test"):
        (dst / split / "images").mkdir(parents=True, exist_ok=True)
        (dst / split / "masks").mkdir(parents=True, exist_ok=True)
        for tif in sorted((src / split / "images").glob("*.tif")):
            stem = tif.stem.split("_")[0]
            Image.open(tif).convert("RGB").save(dst / split / "images" / f"{stem}.png")
            manual = (
                np.asarray(Image.open(src / split / "1st_manual" / f"{stem}_manual1.gif").convert("L")) > 0
            )
            Image.fromarray(manual.astype(np.uint8) * 255).save(dst / split / "masks" / f"{stem}.png")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
