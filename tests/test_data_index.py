import numpy as np
import pytest
from conftest import write_rgby

from hpa_pipeline.data.index import build_index, check_disjoint, index_image_folder, write_folder_index
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.index import read_index, shard_ids, write_index


def test_shards_are_contiguous_blocks_in_table_order(tiny_dataset, tmp_path):
    index = build_index(tiny_dataset / "train", tiny_dataset / "train.csv", "train", n_shards=2)
    assert index["ID"].tolist() == [f"img{i}" for i in range(5)]
    assert index["shard"].tolist() == [0, 0, 0, 1, 1]
    write_index(tmp_path / "index.csv", index)
    again = read_index(tmp_path / "index.csv")
    assert shard_ids(again, 1) == ["img3", "img4"]
    assert again["Label"].tolist()[4] == "1|18"


def test_more_shards_than_images_leaves_empty_shards(tiny_dataset):
    index = build_index(tiny_dataset / "test", tiny_dataset / "sample_submission.csv", "test", n_shards=4)
    assert index["shard"].tolist() == [0, 2]
    assert shard_ids(index, 1) == []


def test_id_without_images_is_reported_before_any_work(tiny_dataset):
    with open(tiny_dataset / "train.csv", "a") as table:
        table.write("ghost,3\n")
    (tiny_dataset / "train" / "img2_green.png").unlink()
    with pytest.raises(InputDataError) as error:
        build_index(tiny_dataset / "train", tiny_dataset / "train.csv", "train", n_shards=1)
    message = str(error.value)
    assert "img2_green.png" in message and "ghost_red.png" in message and "ghost_yellow.png" in message


def test_missing_image_folder_is_named(tmp_path):
    (tmp_path / "train.csv").write_text("ID,Label\na,1\n")
    with pytest.raises(InputDataError, match="missing image folder .*nowhere"):
        build_index(tmp_path / "nowhere", tmp_path / "train.csv", "train", n_shards=1)


def test_index_names_its_dataset(tiny_dataset):
    index = build_index(tiny_dataset / "train", tiny_dataset / "train.csv", "train", 1, dataset="pubhpa")
    assert set(index["dataset"]) == {"pubhpa"}
    assert set(build_index(tiny_dataset / "train", tiny_dataset / "train.csv", "train", 1)["dataset"]) == {"train"}


def test_an_extra_set_reusing_an_id_of_another_dataset_is_refused(tiny_dataset, tmp_path):
    train = build_index(tiny_dataset / "train", tiny_dataset / "train.csv", "train", 1)
    write_index(tmp_path / "train.csv", train)
    extra = train.iloc[[1, 3]].assign(dataset="pubhpa")
    with pytest.raises(InputDataError, match=r"extra\.csv lists image ID\(s\) img1, img3 that dataset train"):
        check_disjoint(extra, tmp_path / "extra.csv", [tmp_path / "train.csv"])
    check_disjoint(extra.assign(ID=["x", "y"]), tmp_path / "extra.csv", [tmp_path / "train.csv"])


def test_an_index_without_dataset_column_asks_for_a_rebuild(tmp_path):
    (tmp_path / "index.csv").write_text("ID,shard,Label\na,0,1\n")
    with pytest.raises(InputDataError, match="no dataset column.*rerun index_images"):
        read_index(tmp_path / "index.csv")


def _dataset_2018(root, tiny_dataset):
    """The tiny dataset's images with 2018-layout tables (Id,Target / Id,Predicted)."""
    (tiny_dataset / "train.csv").write_text("Id,Target\n" + "".join(f"img{i},{i} 27\n" for i in range(5)))
    (tiny_dataset / "sample_submission.csv").write_text("Id,Predicted\ntest0,0\ntest1,0\n")
    return tiny_dataset


def test_2018_index_has_the_same_columns_as_the_2021_one(tiny_dataset):
    data = _dataset_2018(tiny_dataset, tiny_dataset)
    index = build_index(data / "train", data / "train.csv", "train", n_shards=1, task="hpa2018-images")
    assert index.columns.tolist() == ["ID", "shard", "Label", "dataset"] and index["Label"].tolist()[2] == "2|27"
    test = build_index(data / "test", data / "sample_submission.csv", "test", n_shards=1, task="hpa2018-images")
    assert test["ID"].tolist() == ["test0", "test1"]


def test_2018_bad_inputs_name_the_file_and_row(tiny_dataset):
    data = _dataset_2018(tiny_dataset, tiny_dataset)
    (data / "train.csv").write_text("Id,Target\nimg0,1\nimg1,28\n")
    with pytest.raises(InputDataError, match=r"train.csv row 3 \(Id img1\): unknown label '28'"):
        build_index(data / "train", data / "train.csv", "train", n_shards=1, task="hpa2018-images")
    (data / "train.csv").write_text("Id,Target\nimg0,1\nimg1,2\n")
    (data / "train" / "img1_yellow.png").unlink()
    with pytest.raises(
        InputDataError, match=r"train.csv lists images whose files are missing: .*img1_yellow.png \(row 3\)"
    ):
        build_index(data / "train", data / "train.csv", "train", n_shards=1, task="hpa2018-images")
    (data / "sample_submission.csv").write_text("Id,Predicted\ntest0,0\nghost,0\n")
    with pytest.raises(InputDataError, match=r"sample_submission.csv lists .*ghost_red.png \(row 3\)"):
        build_index(data / "test", data / "sample_submission.csv", "test", n_shards=1, task="hpa2018-images")


def test_a_downloaded_v18_set_indexes_in_the_2018_task(tmp_path):
    from v18_mirror import V18_LIST_NAME, write_v18_mirror

    from hpa_pipeline.data.download import download_images, read_v18_table, write_download_outputs

    ids = write_v18_mirror(tmp_path / "mirror", n_images=3, image_size=48)
    table = read_v18_table(tmp_path / "mirror" / V18_LIST_NAME)
    images = tmp_path / "hpav18"
    result = download_images(table, str(tmp_path / "mirror" / "server"), images, workers=1, source="hpa_v18")
    write_download_outputs(result, table, tmp_path / "labels.csv", tmp_path / "failed.csv", 0.0, source="hpa_v18")
    index = build_index(images, tmp_path / "labels.csv", "train", 2, dataset="hpav18", task="hpa2018-images")
    assert index["ID"].tolist() == ids
    assert index["Label"].tolist() == table["Label"].tolist()
    assert index["dataset"].tolist() == ["hpav18"] * 3 and index["shard"].tolist() == [0, 0, 1]


def test_a_folder_without_a_table_is_indexed_in_id_order(tiny_dataset):
    folder = tiny_dataset / "train"
    (folder / "notes.txt").write_text("not an image")
    index = index_image_folder(folder, images_per_shard=2)
    assert index["ID"].tolist() == [f"img{i}" for i in range(5)]
    assert index["shard"].tolist() == [0, 0, 1, 1, 2]
    assert set(index["dataset"]) == {"test"} and set(index["Label"]) == {""}


def test_a_folder_image_without_a_channel_is_named(tiny_dataset):
    folder = tiny_dataset / "train"
    (folder / "img3_yellow.png").unlink()
    with pytest.raises(InputDataError, match=f"missing channel file\\(s\\) in {folder}: {folder / 'img3_yellow.png'}$"):
        index_image_folder(folder, images_per_shard=4)


def test_an_empty_folder_says_what_files_it_expects(tmp_path):
    (tmp_path / "new").mkdir()
    with pytest.raises(
        InputDataError, match=r"no images in .*new: expected files named \{ID\}_\{red,green,blue,yellow\}"
    ):
        index_image_folder(tmp_path / "new", images_per_shard=4)


def test_a_folder_is_indexed_without_a_table_into_consecutive_shards(tmp_path):
    folder = tmp_path / "new"
    for image_id in ("c", "a", "b"):
        write_rgby(folder, image_id, np.zeros((4, 8, 8), np.uint8))
    shard_files = [tmp_path / "shard-0.csv", tmp_path / "shard-1.csv"]
    write_folder_index(folder, 2, "annotate", tmp_path / "index.csv", shard_files)
    assert (
        tmp_path / "index.csv"
    ).read_text() == "ID,shard,Label,dataset\na,0,,annotate\nb,0,,annotate\nc,1,,annotate\n"
    assert read_index(shard_files[0])["ID"].tolist() == ["a", "b"]
    assert (tmp_path / "shard-1.csv").read_text() == "ID,shard,Label,dataset\nc,1,,annotate\n"
    with pytest.raises(InputDataError, match=f"{folder} now makes 2 shard\\(s\\) of 2 images, the workflow planned 3"):
        write_folder_index(folder, 2, "annotate", tmp_path / "again.csv", [*shard_files, tmp_path / "shard-2.csv"])
    assert not (tmp_path / "again.csv").exists()
