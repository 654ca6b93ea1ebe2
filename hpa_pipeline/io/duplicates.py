"""The duplicate groups CSV (``results/duplicates/groups.csv``: group, dataset, ID, distance): images that
show the same field, found by perceptual hash. Written by the data stage, read by the folds and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.files import atomic_file

#: ``distance``: Hamming distance in bits to the nearest other member of the group.
GROUP_COLUMNS = ("group", "dataset", "ID", "distance")


def write_duplicate_groups(path: str | Path, groups: pd.DataFrame) -> None:
    """Write the groups of :func:`find_duplicate_groups` as CSV atomically."""
    with atomic_file(path, "w", newline="") as handle:
        groups.loc[:, list(GROUP_COLUMNS)].to_csv(handle, index=False)


def read_duplicate_groups(path: str | Path) -> pd.DataFrame:
    """Read a groups CSV (``group,dataset,ID``; ``distance`` optional).

    Raises:
        InputDataError: the file is missing, lacks a column, or has a bad group number or an empty
            dataset or ID (the message names the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing duplicate groups table {path} (run duplicate-groups first)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    required = GROUP_COLUMNS[:3]
    missing = [column for column in required if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: not a duplicate groups table (missing column(s) {', '.join(missing)})")
    numbers = [column for column in ("group", "distance") if column in table.columns]
    for line, row in enumerate(table.itertuples(index=False), start=2):
        row = row._asdict()
        for column in numbers:
            if not row[column].isdigit():
                raise InputDataError(f"{path}, line {line}: {column} {row[column]!r} is not a number >= 0")
        if not row["dataset"] or not row["ID"]:
            raise InputDataError(f"{path}, line {line}: empty dataset or ID")
    repeated = np.flatnonzero(table.duplicated(["dataset", "ID"]).to_numpy())
    if len(repeated):
        line = int(repeated[0]) + 2
        raise InputDataError(
            f"{path}, line {line}: {table['dataset'].iloc[line - 2]}/{table['ID'].iloc[line - 2]} is listed twice"
        )
    for column in numbers:
        table[column] = table[column].astype(np.int64)
    return table
