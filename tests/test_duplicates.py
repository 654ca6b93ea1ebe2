import logging

import cv2
import imagehash
import numpy as np
import pandas as pd
import pytest
from conftest import REAL_IMAGES, real_image_ids, requires_realdata, write_rgby
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hpa_pipeline import cli
from hpa_pipeline.data import duplicates
from hpa_pipeline.data.duplicates import (
    DEFAULT_MAX_DISTANCE,
    duplicates_of_test,
    find_duplicate_groups,
    hash_images_store,
    image_hash,
    read_hash_table,
    summarize_groups,
    write_hash_table,
)
from hpa_pipeline.data.synth import render_field
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import read_rgby_planes, to_uint8
from hpa_pipeline.io.duplicates import read_duplicate_groups
from hpa_pipeline.preprocess.resize import resize_image, resize_shard

#: Bounds with a margin: planted copies (resized, re-encoded, 16-bit) measured at most 2 bits from the
#: original, distinct fields at least 16 (4,950 synthetic pairs) and 18 (the 21 real pairs).
COPY_DISTANCE, DISTINCT_DISTANCE = 4, 14


def distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def field(seed: int, side: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_field(rng, side, side, int(rng.integers(10, 30)), [int(rng.integers(0, 18))]).channels


def jpeg(image: np.ndarray, quality: int = 90) -> np.ndarray:
    """Round-trip each channel through JPEG, as the public HPA images are distributed."""
    encode = [cv2.IMWRITE_JPEG_QUALITY, quality]
    return np.stack([cv2.imdecode(cv2.imencode(".jpg", plane, encode)[1], cv2.IMREAD_GRAYSCALE) for plane in image])


def as_16_bit(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 16-bit acquisition of which ``image`` is the truncated 8-bit copy (v >> 8)."""
    return image.astype(np.uint16) * 256 + rng.integers(0, 256, size=image.shape).astype(np.uint16)


def copies(full: np.ndarray) -> dict[str, np.ndarray]:
    """Each kind of planted duplicate of a full-size field, as the 768 px image the pipeline hashes."""
    at_768 = resize_image(full, 768)
    return {
        "exact copy": at_768.copy(),
        "1536 px source": resize_image(resize_image(full, 1536), 768),
        "0.9x and back up": resize_image(resize_image(at_768, 691), 768),
        "JPEG quality 90": resize_image(jpeg(full), 768),
        "16-bit to 8-bit": resize_image(
            np.stack([to_uint8(plane) for plane in as_16_bit(full, np.random.default_rng(0))]), 768
        ),
    }


@pytest.fixture(scope="module")
def planted() -> tuple[list[int], dict[str, list[int]]]:
    """Hashes of distinct 2048 px synthetic fields and of each kind of copy of each field."""
    originals, copied = [], {}
    for seed in range(3):
        full = field(seed, 2048)
        originals.append(image_hash(resize_image(full, 768)))
        for kind, image in copies(full).items():
            copied.setdefault(kind, []).append(image_hash(image))
    return originals, copied


def test_hash_is_imagehash_phash_of_the_reference_channels():
    image = field(5, 512)
    composite = np.rint(image[[0, 2, 3]].mean(axis=0)).astype(np.uint8)
    reduced = cv2.resize(composite, (128, 128), interpolation=cv2.INTER_AREA)
    assert f"{image_hash(image):016x}" == str(imagehash.phash(Image.fromarray(reduced), hash_size=8))
    small = image[:, :100, :90]  # no reduction below 128 px
    composite = np.rint(small[[0, 2, 3]].mean(axis=0)).astype(np.uint8)
    assert f"{image_hash(small):016x}" == str(imagehash.phash(Image.fromarray(composite), hash_size=8))
    other_protein = image.copy()
    other_protein[1] = field(6, 512)[1]
    assert image_hash(other_protein) == image_hash(image)  # green does not enter the hash


def test_hash_rejects_an_image_that_is_not_rgby_uint8():
    with pytest.raises(ValueError, match=r"\(4, H, W\) uint8"):
        image_hash(np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match=r"\(4, H, W\) uint8"):
        image_hash(np.zeros((4, 64, 64), np.uint16))


@pytest.mark.parametrize(
    "kind", ["exact copy", "1536 px source", "0.9x and back up", "JPEG quality 90", "16-bit to 8-bit"]
)
def test_planted_copies_hash_within_a_few_bits(planted, kind):
    originals, copied = planted
    distances = [distance(a, b) for a, b in zip(originals, copied[kind])]
    assert max(distances) <= COPY_DISTANCE < DEFAULT_MAX_DISTANCE, distances


def test_distinct_fields_hash_far_apart():
    hashes = [image_hash(resize_image(field(seed, 512), 384)) for seed in range(100, 130)]
    distances = [distance(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) >= DISTINCT_DISTANCE > DEFAULT_MAX_DISTANCE
    assert 28 < np.mean(distances) < 36  # about half the bits differ, as for unrelated images


@pytest.mark.slow
@requires_realdata
def test_real_fields_and_their_copies():
    originals, copied = [], []
    rng = np.random.default_rng(0)
    for image_id in real_image_ids():
        full = np.stack(read_rgby_planes(REAL_IMAGES, image_id)[0])
        originals.append(image_hash(resize_image(full, 768)))
        sixteen = np.stack([to_uint8(plane) for plane in as_16_bit(full, rng)])
        copied += [distance(originals[-1], image_hash(resize_image(copy, 768))) for copy in (jpeg(full), sixteen)]
    assert max(copied) <= COPY_DISTANCE
    assert min(distance(a, b) for i, a in enumerate(originals) for b in originals[i + 1 :]) >= DISTINCT_DISTANCE


# ----------------------------------------------------------------------------------------- grouping


def table(ids: list[str], hashes: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"ID": ids, "hash": np.array(hashes, dtype=np.uint64)})


def test_grouping_is_transitive_and_spans_datasets():
    a = 0x0123456789ABCDEF
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ 0b1111_0000  # 4 from b, 8 from a
    far = a ^ 0xFFFF_FFFF_0000_0000
    hashes = {"train": table(["t2", "t1", "t3"], [c, a, far]), "test": table(["x1"], [b])}
    groups = find_duplicate_groups(hashes, max_distance=5)
    assert groups.to_dict("list") == {
        "group": [0, 0, 0],
        "dataset": ["train", "train", "test"],
        "ID": ["t1", "t2", "x1"],
        "distance": [4, 4, 4],
    }
    assert find_duplicate_groups(hashes, max_distance=3).empty


def test_groups_are_numbered_by_first_member_whatever_the_input_order():
    rng = np.random.default_rng(1)
    bases = rng.integers(0, 2**63, size=4, dtype=np.uint64)
    train = table([f"t{i}" for i in range(8)], [int(bases[i % 4]) ^ (i // 4) for i in range(8)])
    test = table(["a", "b"], [int(bases[3]), int(bases[1]) ^ 3])
    groups = find_duplicate_groups({"train": train, "test": test}, 2)
    assert groups["group"].tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert groups["ID"].tolist() == ["t0", "t4", "t1", "t5", "b", "t2", "t6", "t3", "t7", "a"]
    shuffled = {"train": train.sample(frac=1, random_state=3), "test": test.iloc[::-1]}
    pd.testing.assert_frame_equal(find_duplicate_groups(shuffled, 2), groups)


def brute_force_groups(hashes: np.ndarray, max_distance: int) -> tuple[set[frozenset[int]], dict[int, int]]:
    """Groups (as sets of rows) and each grouped row's nearest distance, comparing every row with all."""
    first, second, nearest = [], [], {}
    for start in range(0, len(hashes), 256):
        distances = np.bitwise_count(hashes[start : start + 256, None] ^ hashes[None, :]).astype(int)
        distances[np.arange(len(distances)), np.arange(start, start + len(distances))] = 99  # not itself
        rows, columns = np.nonzero(distances <= max_distance)
        first += (rows + start).tolist()
        second += columns.tolist()
        nearest.update({start + row: int(distances[row].min()) for row in np.unique(rows)})
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(hashes), len(hashes)))
    _, labels = connected_components(graph, directed=False)
    groups = {frozenset(np.flatnonzero(labels == labels[row]).tolist()) for row in nearest}
    return groups, nearest


def clustered_hashes(n: int, seed: int) -> np.ndarray:
    """Random hashes where about a third are a few random bit flips away from an earlier one."""
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**64, size=n, dtype=np.uint64)
    for row in np.flatnonzero(rng.random(n) < 0.35)[1:]:
        flips = rng.choice(64, size=rng.integers(0, 9), replace=False)
        hashes[row] = hashes[rng.integers(0, row)] ^ np.uint64(sum(1 << int(bit) for bit in flips))
    return hashes


@pytest.mark.parametrize(
    ("n", "blocks", "max_distance"),
    [(1, None, 4), (2, None, 0), (300, None, 6), (100, (7, 13), 3), (101, (16, 16), 8), (97, (32, 5), 20)],
)
def test_groups_match_a_brute_force_reference(monkeypatch, n, blocks, max_distance):
    if blocks:  # tiny tiles put many pairs across tile edges and the diagonal
        monkeypatch.setattr(duplicates, "_BLOCK_ROWS", blocks[0])
        monkeypatch.setattr(duplicates, "_BLOCK_COLUMNS", blocks[1])
    hashes = clustered_hashes(n, seed=n)
    ids = [f"{row:05d}" for row in range(n)]
    groups = find_duplicate_groups({"train": table(ids, hashes.tolist())}, max_distance)
    expected_groups, expected_nearest = brute_force_groups(hashes, max_distance)
    assert expected_groups or n < 3  # the comparison checks real groups
    rows = groups["ID"].astype(int)
    assert {frozenset(rows[groups["group"] == g].tolist()) for g in groups["group"].unique()} == expected_groups
    assert dict(zip(rows.tolist(), groups["distance"].tolist())) == expected_nearest


def test_groups_match_the_reference_across_the_default_tile_edges():
    n = 2 * duplicates._BLOCK_COLUMNS + duplicates._BLOCK_ROWS + 3
    hashes = clustered_hashes(n, seed=7)
    split = duplicates._BLOCK_ROWS + 1
    inputs = {"a": table([f"{r:05d}" for r in range(split)], hashes[:split].tolist())}
    inputs["b"] = table([f"{r:05d}" for r in range(split, n)], hashes[split:].tolist())
    groups = find_duplicate_groups(inputs, 5)
    rows = groups["ID"].astype(int)
    expected_groups, _ = brute_force_groups(hashes, 5)
    assert {frozenset(rows[groups["group"] == g].tolist()) for g in groups["group"].unique()} == expected_groups


def test_many_identical_hashes_are_collapsed_without_changing_the_groups(monkeypatch):
    hashes = np.concatenate([np.zeros(300, np.uint64), clustered_hashes(200, seed=2)])  # 300 blank images
    inputs = {"train": table([f"{r:05d}" for r in range(500)], hashes.tolist())}
    expected = find_duplicate_groups(inputs, 4)
    monkeypatch.setattr(duplicates, "_MAX_PENDING_LINKS", 50)
    monkeypatch.setattr(duplicates, "_BLOCK_ROWS", 64)
    pd.testing.assert_frame_equal(find_duplicate_groups(inputs, 4), expected)
    assert (expected["group"] == 0).sum() >= 300


def test_no_hashes_give_an_empty_table_with_the_columns():
    groups = find_duplicate_groups({"train": table([], [])}, 4)
    assert groups.empty and list(groups.columns) == ["group", "dataset", "ID", "distance"]
    assert summarize_groups(groups) == {"groups": 0, "images": 0, "groups_across_datasets": 0, "duplicates_of_test": 0}


def test_repeated_id_within_a_dataset_is_an_error():
    with pytest.raises(InputDataError, match="dataset train: ID a appears more than once"):
        find_duplicate_groups({"train": table(["a", "a"], [1, 2])}, 4)


def test_training_images_sharing_a_group_with_a_test_image():
    groups = pd.DataFrame(
        {
            "group": [0, 0, 1, 1, 2, 2, 2],
            "dataset": ["train", "test", "train", "extra", "extra", "train", "test"],
            "ID": ["a", "x", "b", "c", "d", "e", "y"],
        }
    )
    assert duplicates_of_test(groups) == {("train", "a"), ("extra", "d"), ("train", "e")}
    assert summarize_groups(groups) == {"groups": 3, "images": 7, "groups_across_datasets": 3, "duplicates_of_test": 3}


# ------------------------------------------------------------------------------------------- files


def test_hash_table_round_trips_as_16_hex_digits(tmp_path):
    hashes = table(["a", "b", "c"], [0, 2**64 - 1, 0x00FF])
    write_hash_table(tmp_path / "h.csv", hashes)
    assert (tmp_path / "h.csv").read_text().splitlines() == [
        "ID,hash",
        "a,0000000000000000",
        "b,ffffffffffffffff",
        "c,00000000000000ff",
    ]
    pd.testing.assert_frame_equal(read_hash_table(tmp_path / "h.csv"), hashes, check_dtype=False)
    assert read_hash_table(tmp_path / "h.csv")["hash"].dtype == np.uint64


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ID,hash\na,00000000000000ff\nb,ff\n", r"h.csv, line 3 \(ID b\): hash 'ff' is not 16 hex digits"),
        ("ID,hash\na,00000000000000zz\n", r"h.csv, line 2 \(ID a\): hash '00000000000000zz'"),
        ("ID,hash\na,00000000000000ff\na,00000000000000ff\n", "h.csv, line 3: ID a repeats line 2"),
        ("ID,hash\n,00000000000000ff\n", "h.csv, line 2: empty ID"),
        ("ID,phash\na,00000000000000ff\n", r"h.csv: not a hash table \(missing column\(s\) hash\)"),
    ],
)
def test_malformed_hash_table_names_the_file_and_line(tmp_path, text, message):
    (tmp_path / "h.csv").write_text(text)
    with pytest.raises(InputDataError, match=message):
        read_hash_table(tmp_path / "h.csv")


def test_missing_hash_table_is_named(tmp_path):
    with pytest.raises(InputDataError, match="missing hash table .*h.csv"):
        read_hash_table(tmp_path / "h.csv")


# --------------------------------------------------------------------------------------------- CLI


def write_dataset(directory, fields: dict[str, np.ndarray]) -> None:
    for image_id, image in fields.items():
        write_rgby(directory, image_id, image)


def test_cli_hashes_stores_and_groups_planted_duplicates(tmp_path, caplog):
    originals = {f"tr{i}": field(200 + i, 512) for i in range(5)}
    write_dataset(tmp_path / "train", originals)
    # the test set holds a JPEG copy of tr1 at another size and a 16-bit copy of tr3, plus a new field
    write_dataset(tmp_path / "test", {"te0": resize_image(jpeg(originals["tr1"]), 384), "te2": field(300, 512)})
    write_rgby(tmp_path / "test", "te1", as_16_bit(originals["tr3"], np.random.default_rng(0)))
    stores = {"train": [], "test": []}
    for dataset, shards in (("train", [["tr0", "tr1", "tr2"], ["tr3", "tr4"]]), ("test", [["te0", "te1", "te2"]])):
        for shard, ids in enumerate(shards):
            stores[dataset].append(tmp_path / f"results/{dataset}/images_256/shard-{shard}.zarr")
            resize_shard(tmp_path / dataset, ids, [256], [stores[dataset][-1]])

    for dataset, paths in stores.items():
        assert cli.main(["hash-images", "--images", *map(str, paths), "--out", str(tmp_path / f"{dataset}.csv")]) == 0
    train_hashes = read_hash_table(tmp_path / "train.csv")
    assert train_hashes["ID"].tolist() == ["tr0", "tr1", "tr2", "tr3", "tr4"]
    assert train_hashes["hash"].tolist() == hash_images_store(stores["train"])["hash"].tolist()

    caplog.set_level(logging.INFO, logger="hpa_pipeline")
    arguments = ["duplicate-groups", "--hashes", f"train={tmp_path / 'train.csv'}", f"test={tmp_path / 'test.csv'}"]
    arguments += ["--max-distance", str(DEFAULT_MAX_DISTANCE), "--out", str(tmp_path / "groups.csv")]
    assert cli.main(arguments) == 0
    groups = read_duplicate_groups(tmp_path / "groups.csv")
    assert groups[["group", "dataset", "ID"]].values.tolist() == [
        [0, "train", "tr1"],
        [0, "test", "te0"],
        [1, "train", "tr3"],
        [1, "test", "te1"],
    ]
    assert groups["distance"].max() <= COPY_DISTANCE
    assert "2 groups of near duplicates (max distance 6) hold 4 images; 2 groups span datasets" in caplog.text
    assert "2 training images duplicate test images" in caplog.text


def test_cli_joins_a_datasets_shards_and_rejects_an_image_twice_or_no_file(tmp_path, caplog, capsys):
    write_hash_table(tmp_path / "h.csv", table(["a"], [1]))
    write_hash_table(tmp_path / "h2.csv", table(["b"], [3]))
    arguments = ["duplicate-groups", "--max-distance", "4", "--out", str(tmp_path / "g.csv"), "--hashes"]
    assert cli.main([*arguments, f"train={tmp_path / 'h.csv'}", f"train={tmp_path / 'h2.csv'}"]) == 0
    assert read_duplicate_groups(tmp_path / "g.csv")["ID"].tolist() == ["a", "b"]  # 1 bit apart
    assert cli.main([*arguments, f"train={tmp_path / 'h.csv'}", f"train={tmp_path / 'h.csv'}"]) == 1
    assert "ID a appears more than once" in caplog.text
    with pytest.raises(SystemExit):
        cli.main([*arguments, str(tmp_path / "h.csv")])
    assert "expected DATASET=CSV" in capsys.readouterr().err
