import numpy as np

from hpa_pipeline.io.masks import read_labels, resize_labels
from hpa_pipeline.io.stores import atomic_store, open_store


def test_resize_invents_no_label_and_copies_at_the_same_size():
    labels = np.zeros((6, 9), np.uint16)
    labels[1:4, 2:7] = 3
    labels[4:6, 0:2] = 7
    same = resize_labels(labels, 6, 9)
    assert np.array_equal(same, labels) and same is not labels
    bigger = resize_labels(labels, 12, 18)
    assert set(np.unique(bigger).tolist()) == {0, 3, 7}
    assert np.array_equal(bigger[::2, ::2], labels)
    assert set(np.unique(resize_labels(labels, 3, 4)).tolist()) <= {0, 3, 7}


def test_read_labels_resizes_only_when_asked(tmp_path):
    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with atomic_store(tmp_path / "m.zarr", "masks") as group:
        array = group.create_group("labels").create_array("0", shape=labels.shape, dtype="uint16")
        array[...] = labels
    masks = open_store(tmp_path / "m.zarr", "masks")
    assert np.array_equal(read_labels(masks, 0), labels)
    assert np.array_equal(read_labels(masks, 0, (3, 4)), labels)
    assert read_labels(masks, 0, (6, 8)).shape == (6, 8)
