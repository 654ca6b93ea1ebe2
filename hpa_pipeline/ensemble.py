"""The ensemble stage (rules/ensemble.smk): the equal-weight average of models' out-of-fold
predictions, which a later stage trains on as pseudo labels.

Members are joined by cell identity (image ID, mask value); two members with different cells are an
error naming the image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hpa_pipeline.io.predictions import average_predictions, read_predictions, write_predictions

log = logging.getLogger(__name__)


def average_ensemble(member_paths: Sequence[Path], name: str, out_path: Path) -> None:
    """Average the members' ``oof.zarr`` stores (TTA views first) into the ensemble's store."""
    sources = [str(path) for path in member_paths]
    average = average_predictions([read_predictions(path) for path in member_paths], sources)
    write_predictions(out_path, average, ensemble=name, members=sources)
    log.info(
        "ensemble %s: %d members, %d images, %d cells -> %s",
        name,
        len(sources),
        len(average.ids),
        average.n_cells,
        out_path,
    )
