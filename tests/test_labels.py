import pytest

from hpa_pipeline.errors import InputDataError
from hpa_pipeline.labels import (
    N_CLASSES,
    labels_to_matrix,
    parse_labels,
    read_test_table,
    read_train_table,
)


def test_parse_labels_keeps_order_and_drops_duplicates():
    assert parse_labels("7|1|2|0|7") == [7, 1, 2, 0]


@pytest.mark.parametrize("text", ["19", "-1", "a", "1||2", "", "\u00b2", "1|\u0663"])
def test_unknown_label_is_reported_with_its_place(text):
    with pytest.raises(InputDataError, match="train.csv row 3"):
        parse_labels(text, "train.csv row 3")


def test_matrix_is_multi_hot():
    matrix = labels_to_matrix([[0, 18], [], [5]])
    assert matrix.shape == (3, N_CLASSES)
    assert matrix.sum(axis=1).tolist() == [2, 0, 1]


def test_train_table_reports_unknown_label_with_row_and_id(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ID,Label\na,1|2\nb,7|25\n")
    with pytest.raises(InputDataError, match=r"train.csv row 3 \(ID b\): unknown label '25'"):
        read_train_table(path)


def test_duplicate_ids_are_reported(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ID,Label\na,1\nb,2\na,3\n")
    with pytest.raises(InputDataError, match="duplicate ID.*a"):
        read_train_table(path)


def test_missing_column_is_reported(tmp_path):
    path = tmp_path / "sample_submission.csv"
    path.write_text("Image,Label\na,1\n")
    with pytest.raises(InputDataError, match="missing column.*ID"):
        read_test_table(path)


def test_train_table_keeps_file_order(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("ID,Label\nz,1\na,0|18\n")
    table = read_train_table(path)
    assert table["ID"].tolist() == ["z", "a"]
    assert table["labels"].tolist() == [[1], [0, 18]]


def test_the_tasks_have_their_class_names():
    from hpa_pipeline.labels import class_names, n_classes

    assert n_classes("hpa2021-cells") == 19 and n_classes("hpa2018-images") == 28
    names = class_names("hpa2018-images")
    assert names[0] == "Nucleoplasm" and names[18] == "Microtubule organizing center" and names[27] == "Rods & rings"
    with pytest.raises(InputDataError, match="unknown task 'hpa2019'"):
        class_names("hpa2019")


def test_2018_train_table_reads_space_separated_targets_into_the_index_form(tmp_path):
    from hpa_pipeline.labels import read_label_table

    (tmp_path / "train.csv").write_text("Id,Target\na,16 0\nb,27\n")
    table = read_label_table(tmp_path / "train.csv", "train", "hpa2018-images")
    assert table["ID"].tolist() == ["a", "b"] and table["Label"].tolist() == ["16|0", "27"]
    assert table["labels"].tolist() == [[16, 0], [27]]


@pytest.mark.parametrize(
    ("row", "message"),
    [("b,28", r"train.csv row 3 \(Id b\): unknown label '28' in '28' \(classes are 0..27\)"), ("b,", "row 3 .*''")],
)
def test_2018_train_table_reports_bad_targets_with_file_and_row(tmp_path, row, message):
    from hpa_pipeline.labels import read_train_table_2018

    (tmp_path / "train.csv").write_text(f"Id,Target\na,1\n{row}\n")
    with pytest.raises(InputDataError, match=message):
        read_train_table_2018(tmp_path / "train.csv")
