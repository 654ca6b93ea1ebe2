import pytest

from hpa_pipeline.data.synth2018 import PATTERN, image_classes_2018, write_demo_dataset_2018
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS
from hpa_pipeline.labels import read_label_table


def test_every_class_has_its_own_look():
    assert sorted(PATTERN) == list(range(28))
    assert len(set(PATTERN.values())) == 28  # (pattern, variant) pairs differ


def test_an_image_holds_one_class_per_pattern_and_one_altered_look():
    import numpy as np

    for seed in range(200):
        classes = image_classes_2018(np.random.default_rng(seed), seed % 28)
        assert len({PATTERN[c][0] for c in classes}) == len(classes)
        assert sum(1 for c in classes if PATTERN[c][1]) <= 1


def test_dataset_in_the_2018_layout_is_reproducible(tmp_path):
    write_demo_dataset_2018(tmp_path / "a", n_train=6, n_test=2, image_size=64, seed=1, progress=False)
    write_demo_dataset_2018(tmp_path / "b", n_train=6, n_test=2, image_size=64, seed=1, progress=False)
    train = read_label_table(tmp_path / "a" / "train.csv", "train", "hpa2018-images")
    test = read_label_table(tmp_path / "a" / "sample_submission.csv", "test", "hpa2018-images")
    assert len(train) == 6 and len(test) == 2
    assert (tmp_path / "a" / "sample_submission.csv").read_text().startswith("Id,Predicted\n")
    truth = read_label_table(tmp_path / "a" / "truth" / "test.csv", "train", "hpa2018-images")
    assert truth["ID"].tolist() == test["ID"].tolist()
    for image_id in train["ID"]:
        for channel in CHANNELS:
            name = f"train/{image_id}_{channel}.png"
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no partial folder
    with pytest.raises(InputDataError, match="exists already"):
        write_demo_dataset_2018(tmp_path / "a", n_train=1, n_test=1, image_size=64, progress=False)
