import pandas as pd
import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.duplicates import read_duplicate_groups, write_duplicate_groups


def test_groups_table_round_trips(tmp_path):
    groups = pd.DataFrame(
        {"group": [0, 0, 1, 1], "dataset": ["train", "test", "train", "pubhpa"], "ID": ["a", "a", "b", "1_2_3"]}
    ).assign(distance=[1, 1, 0, 0])
    write_duplicate_groups(tmp_path / "g.csv", groups)
    assert (tmp_path / "g.csv").read_text().splitlines()[:2] == ["group,dataset,ID,distance", "0,train,a,1"]
    pd.testing.assert_frame_equal(read_duplicate_groups(tmp_path / "g.csv"), groups, check_dtype=False)
    assert not [path.name for path in tmp_path.iterdir() if path.name != "g.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("group,dataset,ID\n0,train,a\nx,test,b\n", "g.csv, line 3: group 'x' is not a number"),
        ("group,dataset,ID,distance\n0,train,a,-1\n", "g.csv, line 2: distance '-1' is not a number"),
        ("group,dataset,ID\n0,,a\n", "g.csv, line 2: empty dataset or ID"),
        ("group,ID\n0,a\n", r"g.csv: not a duplicate groups table \(missing column\(s\) dataset\)"),
        ("group,dataset,ID\n0,train,a\n1,train,a\n", "g.csv, line 3: train/a is listed twice"),
    ],
)
def test_malformed_groups_table_names_the_file_and_line(tmp_path, text, message):
    (tmp_path / "g.csv").write_text(text)
    with pytest.raises(InputDataError, match=message):
        read_duplicate_groups(tmp_path / "g.csv")


def test_groups_table_without_distances_is_accepted_and_a_missing_one_named(tmp_path):
    (tmp_path / "g.csv").write_text("group,dataset,ID\n0,train,a\n0,test,b\n")
    assert read_duplicate_groups(tmp_path / "g.csv")["group"].tolist() == [0, 0]
    with pytest.raises(InputDataError, match="missing duplicate groups table"):
        read_duplicate_groups(tmp_path / "none.csv")
