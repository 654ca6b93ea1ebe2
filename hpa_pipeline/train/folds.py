"""Cross-validation folds: multilabel-stratified, seeded, stored as a small CSV (ID, fold)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.io.files import atomic_file


def make_folds(label_matrix: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign every row to a fold with ``MultilabelStratifiedKFold(shuffle=True, random_state=seed)``.

    Same splitter and seed as the original, so fold f holds the same rows in every stage.

    Args:
        label_matrix: (n, 19) multi-hot labels, in the canonical row order.
        n_folds: number of folds (>= 2).
        seed: the splitter's random state.

    Returns:
        (n,) int64 fold index per row.
    """
    labels = np.asarray(label_matrix)
    if labels.ndim != 2:
        raise InputDataError(f"label matrix of shape {labels.shape}: expected (n_images, n_classes)")
    if n_folds < 2:
        raise ConfigError(f"n_folds = {n_folds}: expected at least 2")
    if len(labels) < n_folds:
        raise ConfigError(f"n_folds = {n_folds} but only {len(labels)} images: every fold needs at least one image")
    # imported here: scikit-learn behind it costs a second and only the folds job needs it
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.full(len(labels), -1, dtype=np.int64)
    for fold, (_, valid) in enumerate(splitter.split(np.arange(len(labels)), labels)):
        folds[valid] = fold
    return folds


def write_folds(path: str | Path, ids: Sequence[str], folds: np.ndarray) -> None:
    """Write the fold table (columns ``ID``, ``fold``) atomically: temp file, then rename.

    Args:
        path: destination CSV.
        ids: image IDs.
        folds: (n,) fold index per ID.
    """
    path = Path(path)
    folds = np.asarray(folds)
    if len(ids) != len(folds):
        raise InputDataError(f"{path}: {len(ids)} IDs but {len(folds)} fold indices")
    table = pd.DataFrame({"ID": list(ids), "fold": folds.astype(np.int64)})
    with atomic_file(path, "w", newline="") as handle:
        table.to_csv(handle, index=False)


def read_folds(path: str | Path) -> pd.DataFrame:
    """Read a fold table written by ``write_folds``.

    Returns:
        DataFrame with ``ID`` (str) and ``fold`` (int64), in file order.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"missing fold table {path}")
    try:
        table = pd.read_csv(path, dtype={"ID": str}, keep_default_na=False)
    except Exception as exc:
        raise InputDataError(f"cannot read fold table {path}: {exc}") from exc
    missing = [column for column in ("ID", "fold") if column not in table.columns]
    if missing:
        raise InputDataError(f"{path}: missing column(s) {', '.join(missing)}")
    folds = pd.to_numeric(table["fold"], errors="coerce")
    if folds.isna().any() or (folds < 0).any() or (folds != folds.round()).any():
        bad = int(np.flatnonzero(folds.isna() | (folds < 0) | (folds != folds.round()))[0])
        raise InputDataError(f"{path} row {bad + 2}: fold {table['fold'].iloc[bad]!r} is not a fold index")
    if table["ID"].duplicated().any():
        raise InputDataError(f"{path}: duplicate ID {table['ID'][table['ID'].duplicated()].iloc[0]!r}")
    return pd.DataFrame({"ID": table["ID"].astype(str), "fold": folds.astype(np.int64)})
