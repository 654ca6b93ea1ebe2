import numpy as np
import pandas as pd
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.folds import read_folds, read_labelled_images, write_folds


def test_fold_table_round_trip(tmp_path):
    path = tmp_path / "sub" / "folds.csv"
    ids = ["a_1", "0012", "c"]
    write_folds(path, ids, np.array([2, 0, 1]))
    table = read_folds(path)
    assert table["ID"].tolist() == ids  # IDs stay strings (leading zeros kept)
    assert table["fold"].tolist() == [2, 0, 1] and table["fold"].dtype == np.int64
    assert [p.name for p in path.parent.iterdir()] == ["folds.csv"]  # no temp file left


def test_fold_table_errors_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match="missing fold table"):
        read_folds(tmp_path / "none.csv")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"ID": ["a", "b"], "fold": ["0", "x"]}).to_csv(bad, index=False)
    with pytest.raises(InputDataError, match=r"bad\.csv row 3"):
        read_folds(bad)
    with pytest.raises(InputDataError, match="2 IDs but 1"):
        write_folds(tmp_path / "f.csv", ["a", "b"], np.array([0]))


def test_folds_of_other_images_are_refused(demo_stores, tmp_path):
    root = demo_stores["root"]
    folds = (root / "folds/train.csv").read_text().splitlines()
    (tmp_path / "folds.csv").write_text("\n".join([folds[0], *reversed(folds[1:])]) + "\n")
    with pytest.raises(InputDataError, match="does not list the images"):
        read_labelled_images([root / "train/index.csv"], [tmp_path / "folds.csv"])


def test_trainable_flags_round_trip_and_default_to_true(tmp_path):
    write_folds(tmp_path / "f.csv", ["a", "b"], np.array([0, 1]), np.array([True, False]))
    assert read_folds(tmp_path / "f.csv")["trainable"].tolist() == [True, False]
    (tmp_path / "old.csv").write_text("ID,fold\na,0\n")
    assert read_folds(tmp_path / "old.csv")["trainable"].tolist() == [True]
    (tmp_path / "bad.csv").write_text("ID,fold,trainable\na,0,1\nb,1,yes\n")
    with pytest.raises(InputDataError, match=r"bad\.csv row 3: trainable 'yes'"):
        read_folds(tmp_path / "bad.csv")
