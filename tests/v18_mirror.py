"""A local mirror of the HPA v18 image server, for the tests of the 2018 external set's download.

The 2018 demo does not download (a mirror would lengthen it), so the mirror lives with the tests.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from hpa_pipeline.data.synth2018 import N_CLASSES_2018, image_classes_2018, render_image_2018
from hpa_pipeline.io.channels import CHANNELS

#: How the HPA v18 server colours each channel file: the channel's plane in the R, G, B planes of an RGB JPEG.
V18_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
}
V18_LIST_NAME = "HPAv18RGBY_WithoutUncertain_wodpl.csv"


def write_v18_mirror(
    out_dir: str | Path,
    *,
    n_images: int,
    image_size: int = 128,
    cells_per_image: tuple[int, int] = (3, 6),
    seed: int = 0,
) -> list[str]:
    """Write a local mirror of the HPA v18 server for the 2018 task's download: the list and the JPEGs.

    ``out_dir/HPAv18RGBY_WithoutUncertain_wodpl.csv`` (``Id,Target``) and, for Id ``{folder}_{name}``,
    ``out_dir/server/{folder}/{name}_{color}.jpg``: RGB JPEGs with the channel in its display colour
    (``V18_COLOURS``), as the server serves them. Download with ``source: hpa_v18`` and
    ``base_url: out_dir/server``.

    Returns:
        The Ids, in list order.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    rows = []
    for index in range(n_images):
        rng = np.random.default_rng([seed, 18, index])
        classes = image_classes_2018(rng, int(rng.integers(N_CLASSES_2018)))
        n_cells = int(rng.integers(cells_per_image[0], cells_per_image[1] + 1))
        channels, shown = render_image_2018(rng, image_size, n_cells, classes)
        folder, name = 40000 + index, f"{1000 + index}_C{index % 9 + 1}_1"
        server = out_dir / "server" / str(folder)
        server.mkdir(parents=True, exist_ok=True)
        for channel, plane in zip(CHANNELS, channels):
            rgb = np.stack([plane * weight for weight in V18_COLOURS[channel]], axis=-1).astype(np.uint8)
            Image.fromarray(rgb, "RGB").save(server / f"{name}_{channel}.jpg", format="JPEG", quality=90)
        rows.append([f"{folder}_{name}", " ".join(str(c) for c in shown)])
    with open(out_dir / V18_LIST_NAME, "w", newline="", encoding="utf-8") as table:
        csv.writer(table, lineterminator="\n").writerows([["Id", "Target"], *rows])
    return [row[0] for row in rows]
