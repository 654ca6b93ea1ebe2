import pandas as pd
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.index import read_index, shard_ids, write_index


def test_round_trip_keeps_ids_as_text_and_empty_labels(tmp_path):
    index = pd.DataFrame({"ID": ["0012", "a_b"], "shard": [0, 1], "Label": ["", "3|18"], "dataset": "train"})
    write_index(tmp_path / "index.csv", index)
    again = read_index(tmp_path / "index.csv")
    assert again["ID"].tolist() == ["0012", "a_b"]
    assert again["Label"].tolist() == ["", "3|18"]
    assert shard_ids(again, 0) == ["0012"] and shard_ids(again, 2) == []
    assert [p.name for p in tmp_path.iterdir()] == ["index.csv"]


def test_missing_file_or_columns_name_the_file(tmp_path):
    with pytest.raises(InputDataError, match="missing image index .*nothing.csv"):
        read_index(tmp_path / "nothing.csv")
    (tmp_path / "other.csv").write_text("ID,fold\na,0\n")
    with pytest.raises(InputDataError, match="other.csv: not an image index .*shard, Label"):
        read_index(tmp_path / "other.csv")
