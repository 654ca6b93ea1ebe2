"""The annotation outputs: tables, AnnData, OME-Zarr images and overviews read back with their readers."""

import json
import logging
import re
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from ome_zarr.format import FormatV04
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from PIL import Image

from hpa_pipeline.annotate.outputs import CHANNELS, AnnotationWriter, ImageAnnotation, _class_colour
from hpa_pipeline.errors import ConfigError, InputDataError
from hpa_pipeline.labels import CLASS_NAMES, CLASS_NAMES_2018, TASK_CELLS, TASK_IMAGES

HEIGHT, WIDTH = 96, 128
RADIUS = 9
THRESHOLDS = [0.5] * len(CLASS_NAMES)
PROVENANCE = {"bundle": "demo.bundle", "bundle_version": 3, "settings": {"images_per_shard": 2}}


def _annotation(image_id: str, centres: list[tuple[int, int]], dtype=np.uint8, seed: int = 0, n_classes: int = 19):
    """An image of disc cells (mask values 2, 4, 6, ...) with known probabilities: cell k's top class is
    class 3k (mod n_classes) at probability 0.9, every other class 0.1 except class 1 at 0.6."""
    rng = np.random.default_rng(seed)
    top = 60000 if dtype == np.uint16 else 200
    channels = rng.integers(0, top // 4, (4, HEIGHT, WIDTH)).astype(dtype)
    labels = np.zeros((HEIGHT, WIDTH), np.int32)
    y, x = np.mgrid[:HEIGHT, :WIDTH]
    for number, (cy, cx) in enumerate(centres):
        labels[(y - cy) ** 2 + (x - cx) ** 2 <= RADIUS**2] = 2 * (number + 1)
    channels[1][labels > 0] = top  # the protein lights up in the cells
    instance = np.asarray([2 * (number + 1) for number in range(len(centres))], np.int32)
    bbox, area = [], []
    for value in instance:
        rows, cols = np.nonzero(labels == value)
        bbox.append([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1])
        area.append(rows.size)
    bbox = np.asarray(bbox, np.int32).reshape(-1, 4)
    probabilities = np.full((len(centres), n_classes), 0.1, np.float32)
    probabilities[:, 1] = 0.6
    for number in range(len(centres)):
        probabilities[number, (3 * number) % n_classes] = 0.9
    return ImageAnnotation(
        image_id=image_id,
        channels=channels,
        labels=labels,
        instance=instance,
        bbox=bbox,
        area=np.asarray(area, np.int64),
        touches_edge=(bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == HEIGHT) | (bbox[:, 3] == WIDTH),
        probabilities=probabilities,
        area_factor=np.minimum(1.0, np.asarray(area, np.float64) / 250.0),
        image_probabilities=np.linspace(0.05, 0.95, n_classes, dtype=np.float32),
    )


def _images() -> list[ImageAnnotation]:
    return [
        _annotation("img-a", [(20, 20), (30, 70), (70, 40), (80, 120)]),  # the last one touches the edge
        _annotation("img-b", [(48, 30), (48, 64), (48, 100)], dtype=np.uint16, seed=1),
        _annotation("img-empty", [], seed=2),
    ]


def _writer(out: Path, run_key: str = "key-1", task: str = TASK_CELLS) -> AnnotationWriter:
    names = CLASS_NAMES if task == TASK_CELLS else CLASS_NAMES_2018
    return AnnotationWriter(
        out,
        task=task,
        class_names=names,
        class_thresholds=[0.5] * len(names),
        run_key=run_key,
        provenance=PROVENANCE,
    )


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("annotations")
    with _writer(out) as writer:
        for image in _images():
            writer.add(image)
    return out


def test_cell_table_columns_are_the_documented_ones(written):
    cells = pd.read_parquet(written / "cells.parquet")
    assert list(cells.columns) == [
        "image_id", "cell", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area",
        "touches_edge", *CLASS_NAMES, "area_factor", *(f"score: {name}" for name in CLASS_NAMES),
        "top_class", "top_probability", "labels",
    ]  # fmt: skip
    docs = (Path(__file__).resolve().parents[1] / "docs" / "annotations.md").read_text()
    for column in ["centroid_y", "bbox_y1", "touches_edge", "area_factor", "score: {class}", "top_class", "labels"]:
        assert f"`{column}`" in docs


def test_cell_table_holds_each_cell_of_each_image_in_order(written):
    cells = pd.read_parquet(written / "cells.parquet")
    a, b, _ = _images()
    assert cells["image_id"].tolist() == ["img-a"] * 4 + ["img-b"] * 3
    assert cells["cell"].tolist() == [2, 4, 6, 8, 2, 4, 6]
    first = cells.iloc[0]
    y, x = np.nonzero(a.labels == 2)
    assert (first["centroid_y"], first["centroid_x"]) == (y.mean(), x.mean()) == (20.0, 20.0)
    np.testing.assert_array_equal(cells[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy()[:4], a.bbox)
    assert cells["area"].tolist() == [*a.area, *b.area]
    assert cells["touches_edge"].tolist() == [False, False, False, True, False, False, False]
    probabilities = np.concatenate([a.probabilities, b.probabilities])
    np.testing.assert_array_equal(cells[list(CLASS_NAMES)].to_numpy(np.float32), probabilities)
    factor = np.concatenate([a.area_factor, b.area_factor])
    np.testing.assert_array_equal(cells["area_factor"], factor)
    scores = cells[[f"score: {name}" for name in CLASS_NAMES]].to_numpy()
    np.testing.assert_array_equal(scores, probabilities.astype(np.float64) * factor[:, None])
    assert cells["top_class"].tolist()[:4] == [CLASS_NAMES[0], CLASS_NAMES[3], CLASS_NAMES[6], CLASS_NAMES[9]]
    assert cells["top_probability"].tolist() == [np.float32(0.9)] * 7
    assert cells["labels"].tolist()[:2] == [
        "Nucleoplasm|Nuclear membrane",
        "Nuclear membrane|Nucleoli fibrillar center",
    ]


def test_cell_csv_holds_the_parquet_rows(written):
    parquet = pd.read_parquet(written / "cells.parquet")
    csv = pd.read_csv(written / "cells.csv", keep_default_na=False)
    assert list(csv.columns) == list(parquet.columns)
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False, check_exact=False, rtol=1e-7)


def test_images_csv_lists_every_image_with_its_cell_count_and_labels(written):
    images = pd.read_csv(written / "images.csv", keep_default_na=False)
    a = _images()[0]
    assert list(images.columns) == ["image_id", "n_cells", "height", "width", *CLASS_NAMES, "labels"]
    assert images["image_id"].tolist() == ["img-a", "img-b", "img-empty"]
    assert images["n_cells"].tolist() == [4, 3, 0]
    assert images[["height", "width"]].to_numpy().tolist() == [[HEIGHT, WIDTH]] * 3
    np.testing.assert_allclose(images.loc[0, list(CLASS_NAMES)].to_numpy(float), a.image_probabilities, rtol=1e-7)
    above = [name for name, p in zip(CLASS_NAMES, a.image_probabilities, strict=True) if p >= 0.5]
    assert images["labels"].tolist() == ["|".join(above)] * 3


def test_h5ad_holds_cells_by_classes_with_metadata(written):
    adata = anndata.read_h5ad(written / "cells.h5ad")
    cells = pd.read_parquet(written / "cells.parquet")
    assert adata.shape == (7, len(CLASS_NAMES))
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X, cells[list(CLASS_NAMES)].to_numpy(np.float32))
    assert adata.obs_names.tolist()[:2] == ["img-a_2", "img-a_4"]
    assert adata.var_names.tolist() == list(CLASS_NAMES)
    assert adata.var["threshold"].tolist() == THRESHOLDS
    np.testing.assert_array_equal(adata.obs["area"], cells["area"])
    assert adata.obs["top_class"].tolist() == cells["top_class"].tolist()
    np.testing.assert_array_equal(
        adata.layers["area_scaled"], cells[[f"score: {name}" for name in CLASS_NAMES]].to_numpy()
    )
    np.testing.assert_array_equal(adata.obsm["spatial"], cells[["centroid_x", "centroid_y"]].to_numpy())
    assert adata.uns["provenance"]["bundle"] == "demo.bundle"
    assert adata.uns["provenance"]["settings"]["images_per_shard"] == 2
    assert adata.uns["run_key"] == "key-1"


def _nodes(path: Path) -> dict[str, object]:
    """The library reader's nodes of an OME-Zarr image, by their path below it."""
    reader = Reader(parse_url(str(path), fmt=FormatV04()))
    return {str(node.zarr.path).removeprefix(str(path)).strip("/"): node for node in reader()}


def test_ome_zarr_holds_named_coloured_channels_as_a_pyramid(written):
    a = _images()[0]
    path = written / "images" / "img-a.ome.zarr"
    nodes = _nodes(path)
    image = nodes[""]
    assert image.metadata["channel_names"] == [name for name, _, _ in CHANNELS]
    assert image.metadata["colormap"] == [
        [[0, 0, 0], [1.0, 0.0, 0.0]],
        [[0, 0, 0], [0.0, 1.0, 0.0]],
        [[0, 0, 0], [0.0, 0.0, 1.0]],
        [[0, 0, 0], [1.0, 1.0, 0.0]],
    ]
    assert [level.shape for level in image.data] == [(4, 96, 128), (4, 48, 64)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), a.channels)
    attrs = json.loads((path / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    assert [axis["name"] for axis in attrs["multiscales"][0]["axes"]] == ["c", "y", "x"]
    assert [channel["description"] for channel in attrs["omero"]["channels"]] == [
        "microtubules",
        "protein of interest",
        "nucleus",
        "endoplasmic reticulum",
    ]
    b_image = _nodes(written / "images" / "img-b.ome.zarr")[""]
    np.testing.assert_array_equal(np.asarray(b_image.data[0]), _images()[1].channels)
    assert b_image.data[0].dtype == np.uint16


def test_ome_zarr_cell_labels_carry_each_cells_class_and_probabilities(written):
    a = _images()[0]
    labels = _nodes(written / "images" / "img-a.ome.zarr")["labels/cells"]
    np.testing.assert_array_equal(np.asarray(labels.data[0]), a.labels)
    assert [level.shape for level in labels.data] == [(96, 128), (48, 64)]
    assert set(np.unique(np.asarray(labels.data[1]))) <= set(np.unique(a.labels))
    properties = labels.metadata["properties"]
    assert sorted(properties) == [2, 4, 6, 8]
    assert properties[4]["top_class"] == CLASS_NAMES[3]
    assert properties[4]["top_probability"] == pytest.approx(0.9)
    assert [np.float32(properties[4][name]) for name in CLASS_NAMES] == a.probabilities[1].tolist()
    colour = [channel / 255 for channel in _class_colour(3)] + [1.0]
    assert labels.metadata["color"][4] == colour


def test_ome_zarr_is_valid_ngff_0_4(written):
    import zarr

    models = pytest.importorskip("ome_zarr_models.v04")
    group = zarr.open_group(written / "images" / "img-a.ome.zarr", mode="r")
    image = models.Image.from_zarr(group)
    assert [channel.label for channel in image.attributes.omero.channels] == ["red", "green", "blue", "yellow"]
    label = models.ImageLabel.from_zarr(group["labels/cells"])
    assert [item.label_value for item in label.attributes.image_label.properties] == [2, 4, 6, 8]


def test_overview_outlines_cells_in_their_class_colour_with_a_legend_of_present_classes(written):
    png = Image.open(written / "overview" / "img-a.png")
    assert json.loads(png.text["legend"]) == [CLASS_NAMES[0], CLASS_NAMES[3], CLASS_NAMES[6], CLASS_NAMES[9]]
    pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[1] > WIDTH  # the legend panel on the right of the image
    assert tuple(pixels[30, 70 + RADIUS]) == _class_colour(3)  # cell 4's right edge
    assert tuple(pixels[20 - RADIUS, 20]) == _class_colour(0)  # cell 2's top edge
    assert tuple(pixels[30, 70]) != _class_colour(3)  # the inside is the image, not outline
    empty = Image.open(written / "overview" / "img-empty.png")
    assert json.loads(empty.text["legend"]) == []


def test_index_html_links_each_image_once(written):
    page = (written / "overview" / "index.html").read_text()
    links = re.findall(r'<a href="([^"]+)">', page)
    assert links == ["img-a.png", "img-b.png", "img-empty.png"]
    assert all((written / "overview" / link).is_file() for link in links)
    assert "Nucleoplasm (1)" in page and "no cells" in page


def test_images_task_writes_the_image_table_and_images_without_cells(tmp_path):
    annotation = _annotation("img-2018", [], n_classes=len(CLASS_NAMES_2018))
    annotation.labels = None
    with _writer(tmp_path, task=TASK_IMAGES) as writer:
        writer.add(annotation)
    assert sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith(".")) == [
        "annotation.json",
        "images",
        "images.csv",
        "overview",
    ]
    images = pd.read_csv(tmp_path / "images.csv", keep_default_na=False)
    above = [name for name, p in zip(CLASS_NAMES_2018, annotation.image_probabilities, strict=True) if p >= 0.5]
    assert images["labels"].tolist() == ["|".join(above)]
    assert images["n_cells"].tolist() == [0]
    assert list(_nodes(tmp_path / "images" / "img-2018.ome.zarr")) == [""]
    assert json.loads(Image.open(tmp_path / "overview" / "img-2018.png").text["legend"]) == above


def test_a_resumed_run_skips_done_images_and_writes_identical_tables(tmp_path, written):
    first, second, empty = _images()
    killed = _writer(tmp_path)
    killed.add(first)  # then killed: no close()
    resumed = _writer(tmp_path)
    assert [resumed.done(image.image_id) for image in (first, second, empty)] == [True, False, False]
    resumed.add(second)
    resumed.add(first)  # the engine redoes a whole shard when one of its images is missing
    resumed.add(empty)
    resumed.close()
    for name in ("cells.csv", "images.csv", "cells.parquet", "overview/index.html", "overview/img-a.png"):
        assert (tmp_path / name).read_bytes() == (written / name).read_bytes(), name


def test_another_run_key_removes_the_old_outputs_first(tmp_path, caplog):
    first, second, _ = _images()
    _writer(tmp_path, "key-old").add(first)
    (tmp_path / "notes.txt").write_text("mine")
    with caplog.at_level(logging.INFO, logger="hpa_pipeline.annotate.outputs"):
        writer = _writer(tmp_path, "key-new")
    assert [record.message for record in caplog.records if "another run" in record.message] == [
        f"{tmp_path} holds annotations of another run (key key-old, now key-new): removing images, overview, .parts"
    ]
    assert not writer.done("img-a")
    assert not (tmp_path / "images").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    with writer:
        writer.add(second)
    assert pd.read_csv(tmp_path / "images.csv")["image_id"].tolist() == ["img-b"]


def test_a_failed_add_leaves_nothing_of_the_image(tmp_path):
    writer = _writer(tmp_path)
    writer.add(_images()[0])
    broken = _images()[0]
    broken.labels = np.where(broken.labels == 4, 0, broken.labels)  # cell 4 missing from its mask
    with pytest.raises(InputDataError, match=r"image img-a: cells \[4\] are not in its mask"):
        writer.add(broken)
    assert not writer.done("img-a")
    leftovers = [path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if "img-a" in path.name]
    assert leftovers == []


def test_bad_annotations_and_settings_get_one_clear_error(tmp_path):
    writer = _writer(tmp_path)
    image = _images()[0]
    image.labels = image.labels[:, :-1]
    with pytest.raises(InputDataError, match=r"image img-a: labels must be an integer mask of \(96, 128\)"):
        writer.add(image)
    image = _images()[0]
    image.image_id = "../escape"
    with pytest.raises(InputDataError, match="image ID '../escape' is no file name"):
        writer.add(image)
    with pytest.raises(ConfigError, match="19 class names but 3 class thresholds"):
        AnnotationWriter(
            tmp_path, task=TASK_CELLS, class_names=CLASS_NAMES, class_thresholds=[0.5] * 3, run_key="k", provenance={}
        )


def test_a_run_of_images_without_cells_writes_empty_cell_tables(tmp_path, written):
    with _writer(tmp_path) as writer:
        writer.add(_images()[2])
    empty, full = pq.read_schema(tmp_path / "cells.parquet"), pq.read_schema(written / "cells.parquet")
    assert empty.names == full.names and empty.types == full.types
    assert pq.read_metadata(tmp_path / "cells.parquet").num_rows == 0
    assert anndata.read_h5ad(tmp_path / "cells.h5ad").shape == (0, len(CLASS_NAMES))
    assert pd.read_csv(tmp_path / "images.csv")["n_cells"].tolist() == [0]


def test_shards_written_apart_and_adopted_in_order_give_the_same_outputs(tmp_path, written):
    first, second, empty = _images()
    for shard, images in (("shard-0", [first, second]), ("shard-1", [empty])):
        writer = _writer(tmp_path / shard)
        for image in images:
            writer.add(image)  # a shard's job never closes its writer
    merged = _writer(tmp_path / "out")
    for shard, image in (("shard-0", first), ("shard-0", second), ("shard-1", empty)):
        merged.adopt(tmp_path / shard, image.image_id)
    merged.close()
    for name in ("cells.csv", "images.csv", "cells.parquet", "overview/index.html", "overview/img-a.png"):
        assert (tmp_path / "out" / name).read_bytes() == (written / name).read_bytes(), name
    zarr_file = Path("images/img-b.ome.zarr/labels/cells/.zattrs")
    assert (tmp_path / "out" / zarr_file).read_bytes() == (written / zarr_file).read_bytes()
    # hard links: the merged folder costs no second copy of the images
    assert (tmp_path / "out" / zarr_file).stat().st_ino == (tmp_path / "shard-0" / zarr_file).stat().st_ino


def test_adopting_from_another_run_or_an_unfinished_image_is_refused(tmp_path):
    first = _images()[0]
    _writer(tmp_path / "shard", run_key="key-old").add(first)
    with pytest.raises(InputDataError, match=f"^{tmp_path / 'shard'} holds annotations of run key key-old, this"):
        _writer(tmp_path / "out").adopt(tmp_path / "shard", first.image_id)
    with pytest.raises(InputDataError, match=f"^{tmp_path / 'shard'}: image img-z is not finished there"):
        _writer(tmp_path / "out2", run_key="key-old").adopt(tmp_path / "shard", "img-z")
