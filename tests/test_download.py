"""Downloading the public HPA images, against a local HTTP server that can misbehave on request."""

from __future__ import annotations

import gzip
import io
import socket
import threading
import time
from collections import Counter
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from v18_mirror import V18_COLOURS

from hpa_pipeline.cli import main
from hpa_pipeline.data import download
from hpa_pipeline.data.download import (
    MANIFEST_NAME,
    DownloadError,
    download_images,
    read_public_table,
    read_v18_table,
    write_download_outputs,
)
from hpa_pipeline.errors import InputDataError
from hpa_pipeline.io.channels import CHANNELS, read_channel_raw, read_rgby_with_bit_depth
from hpa_pipeline.labels import read_train_table, read_train_table_2018

STEMS = ["/10005/921_B9_1", "/10005/921_B9_2", "/1000/A12_2", "/2031/55_C3_7"]
IDS = ["10005_921_B9_1", "10005_921_B9_2", "1000_A12_2", "2031_55_C3_7"]
FAST = {"workers": 2, "retries": 1, "timeout": 0.5, "backoff": 0.0}


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tif_gz(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image)
    return gzip.compress(buffer.getvalue())


class FakeHPA:
    """A local image server: ``files`` by URL path, ``behaviour`` per path, ``hits`` counted per path.

    Behaviours: "404", "truncated" (half the file, announced as such), "cut" (announces the whole file,
    sends half and closes), "stall" (answers after ``stall`` seconds), "503" (always), "503-once" (a 503,
    then the file).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.images: dict[str, np.ndarray] = {}
        self.behaviour: dict[str, str] = {}
        self.hits: Counter[str] = Counter()
        self.stall = 1.5
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                fake.hits[self.path] += 1
                behaviour = fake.behaviour.get(self.path)
                data = fake.files.get(self.path)
                if data is None or behaviour == "404":
                    self.send_error(404)
                    return
                if behaviour == "503" or (behaviour == "503-once" and fake.hits[self.path] == 1):
                    self.send_error(503)
                    return
                if behaviour == "stall":
                    time.sleep(fake.stall)
                if behaviour == "truncated":
                    data = data[: len(data) // 2]
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2] if behaviour == "cut" else data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (stall)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def add_image(self, stem: str, size: int = 64, seed: int = 0, dtype: type = np.uint16) -> None:
        rng = np.random.default_rng(seed)
        for channel in CHANNELS:
            image = rng.integers(0, np.iinfo(dtype).max, size=(size, size), dtype=dtype, endpoint=True)
            self.images[f"{stem}_{channel}"] = image
            self.files[f"{stem}_{channel}.tif.gz"] = tif_gz(image)

    def add_v18_image(self, stem: str, size: int = 48, seed: int = 0, grey: bool = False) -> None:
        """The four channel JPEGs of an HPA v18 image: each channel in its display colour, or grey."""
        rng = np.random.default_rng(seed)
        for channel in CHANNELS:
            plane = cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 1.5)
            rgb = np.stack([plane * weight for weight in V18_COLOURS[channel]], axis=-1).astype(np.uint8)
            self.files[f"{stem}_{channel}.jpg"] = jpeg(plane if grey else rgb)

    def image_hits(self) -> int:
        return sum(self.hits.values())


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """Requests to the local server must not go through a proxy configured on the machine."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


@pytest.fixture
def server():
    fake = FakeHPA()
    for seed, stem in enumerate(STEMS):
        fake.add_image(stem, seed=seed)
    thread = threading.Thread(target=fake.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


def public_table(path: Path, rows: list[str] | None = None, separator: str = ",") -> Path:
    """A kaggle_2021.tsv-like file; ``rows`` are written with ``|`` between the first four fields.

    The default rows are the four STEMS with labels, plus one train-set row and one unlabelled row.
    """
    if rows is None:
        rows = [
            f"https://images.proteinatlas.org{stem}|Nucleoplasm|False|{label}"
            for stem, label in zip(STEMS, ["0|16", "5", "18", "2|3"])
        ]
        rows.insert(1, "https://images.proteinatlas.org/3/in_train|Nucleoli|True|2")
        rows.insert(3, "https://images.proteinatlas.org/4/no_label|Nucleoli|False|")
    header = "Image|Label|in_trainset|Label_idx"
    path.write_text("\n".join(line.replace("|", separator, 3) for line in [header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- table


@pytest.mark.parametrize("separator", [",", "\t"])
def test_table_keeps_labelled_public_rows_with_ids_from_the_url_stem(tmp_path, separator):
    table = read_public_table(public_table(tmp_path / "kaggle_2021.tsv", separator=separator))
    assert table["ID"].tolist() == IDS
    assert table["url_path"].tolist() == STEMS
    assert table["Label"].tolist() == ["0|16", "5", "18", "2|3"]


def test_table_without_needed_columns_names_file_and_columns(tmp_path):
    path = tmp_path / "list.tsv"
    path.write_text("Image,Label\nhttps://h/1/a,Nucleoli\n")
    with pytest.raises(InputDataError, match=r"list\.tsv: missing column\(s\) Label_idx, in_trainset"):
        read_public_table(path)


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = ["https://h/1/a_1|x|False|0", "https://h/2/b_1|x|False|1", "https://other/1/a_1|x|False|2"]
    with pytest.raises(InputDataError, match="rows 2 and 4 both give image ID 1_a_1"):
        read_public_table(public_table(tmp_path / "t.tsv", rows))


def test_unknown_label_names_the_row(tmp_path):
    rows = ["https://h/1/a_1|x|False|0", "https://h/2/b_1|x|False|0|19"]
    with pytest.raises(InputDataError, match=r"t\.tsv row 3 .*unknown label '19'"):
        read_public_table(public_table(tmp_path / "t.tsv", rows))


def test_table_is_read_from_an_url(server, tmp_path):
    server.files["/lists/kaggle_2021.tsv"] = public_table(tmp_path / "t.tsv").read_bytes()
    assert read_public_table(f"{server.url}/lists/kaggle_2021.tsv")["ID"].tolist() == IDS


# ------------------------------------------------------------------------------------------- download


def test_download_writes_kaggle_layout_and_keeps_16_bit_values(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", **FAST)
    assert result.done == IDS and result.failed == {} and result.downloaded == 4
    for image_id, stem in zip(IDS, STEMS):
        for channel in CHANNELS:
            written = tifffile.imread(tmp_path / "images" / f"{image_id}_{channel}.tif")
            assert written.dtype == np.uint16
            np.testing.assert_array_equal(written, server.images[f"{stem}_{channel}"])
    manifest = pd.read_csv(tmp_path / "images" / MANIFEST_NAME)
    assert sorted(manifest["ID"]) == sorted(IDS)
    assert manifest.columns.tolist() == ["ID", "height", "width", "dtype", "finished"]
    assert set(manifest["dtype"]) == {"uint16"} and set(manifest["height"]) == {64}


def test_written_files_are_read_by_the_pipelines_channel_reader(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    download_images(table, server.url, tmp_path / "images", limit=1, **FAST)
    assert read_channel_raw(tmp_path / "images" / f"{IDS[0]}_green.tif").dtype == np.uint16
    image, bit_depth = read_rgby_with_bit_depth(tmp_path / "images", IDS[0])
    assert image.shape == (4, 64, 64) and image.dtype == np.uint8 and bit_depth == 16


def test_png_format_keeps_16_bit_values(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    download_images(table, server.url, tmp_path / "images", limit=1, image_format="png", **FAST)
    written = read_channel_raw(tmp_path / "images" / f"{IDS[0]}_red.png")
    np.testing.assert_array_equal(written, server.images[f"{STEMS[0]}_red"])


def test_8_bit_images_stay_8_bit(server, tmp_path):
    server.add_image(STEMS[0], dtype=np.uint8)
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    download_images(table, server.url, tmp_path / "images", limit=1, **FAST)
    assert read_channel_raw(tmp_path / "images" / f"{IDS[0]}_blue.tif").dtype == np.uint8


def test_rerun_downloads_nothing(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    download_images(table, server.url, tmp_path / "images", **FAST)
    hits = server.image_hits()
    again = download_images(table, server.url, tmp_path / "images", **FAST)
    assert server.image_hits() == hits
    assert again.done == IDS and again.downloaded == 0


def test_killed_run_resumes_with_only_the_missing_images(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    images = tmp_path / "images"
    download_images(table, server.url, images, limit=3, **FAST)
    manifest = images / MANIFEST_NAME
    lines = manifest.read_text().splitlines(keepends=True)
    # Killed while writing the line of the third image (its files are there, its line is cut short),
    # and while writing the files of the fourth (a temporary file is left).
    third = next(line for line in lines if line.startswith(IDS[2]))
    manifest.write_text("".join(line for line in lines if line != third) + third[:12])
    (images / f".{IDS[3]}_red.tif.abc123.tmp").write_bytes(b"partial")
    server.hits.clear()
    result = download_images(table, server.url, images, **FAST)
    assert result.done == IDS and result.downloaded == 2
    assert {path.rsplit("_", 1)[0] for path in server.hits} == {STEMS[2], STEMS[3]}
    assert not list(images.glob(".*.tmp"))
    resumed = pd.read_csv(manifest)
    assert sorted(resumed["ID"]) == sorted(IDS) and resumed["finished"].notna().all()


def test_image_with_a_deleted_file_is_downloaded_again(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    download_images(table, server.url, tmp_path / "images", **FAST)
    (tmp_path / "images" / f"{IDS[1]}_yellow.tif").unlink()
    result = download_images(table, server.url, tmp_path / "images", **FAST)
    assert result.downloaded == 1 and (tmp_path / "images" / f"{IDS[1]}_yellow.tif").is_file()


def test_limit_downloads_the_first_images(server, tmp_path):
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", limit=2, **FAST)
    assert result.done == IDS[:2]
    assert sorted(path.name for path in (tmp_path / "images").glob("*.tif")) == sorted(
        f"{image_id}_{channel}.tif" for image_id in IDS[:2] for channel in CHANNELS
    )


def test_failed_images_are_listed_with_their_reasons(server, tmp_path):
    server.behaviour[f"{STEMS[0]}_green.tif.gz"] = "404"
    server.behaviour[f"{STEMS[1]}_blue.tif.gz"] = "truncated"
    server.behaviour[f"{STEMS[2]}_yellow.tif.gz"] = "stall"
    server.add_image(STEMS[3] + "_x", size=32)  # a green channel at another size
    server.files[f"{STEMS[3]}_green.tif.gz"] = server.files[f"{STEMS[3]}_x_green.tif.gz"]
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", workers=4, retries=1, timeout=0.3, backoff=0)
    assert result.done == []
    assert list(result.failed) == IDS
    assert result.failed[IDS[0]] == f"HTTP 404 for {STEMS[0]}_green.tif.gz"
    assert result.failed[IDS[1]] == f"truncated gzip after 2 tries ({STEMS[1]}_blue.tif.gz)"
    assert result.failed[IDS[2]] == f"timed out after 2 tries ({STEMS[2]}_yellow.tif.gz)"
    assert result.failed[IDS[3]] == "channels differ in size: red 64x64, green 32x32, blue 64x64, yellow 64x64"
    assert server.hits[f"{STEMS[0]}_green.tif.gz"] == 1  # a 404 is not retried
    assert server.hits[f"{STEMS[1]}_blue.tif.gz"] == 2
    assert not list((tmp_path / "images").glob(f"{IDS[0]}_*")), "no part of a failed image is written"
    assert pd.read_csv(tmp_path / "images" / MANIFEST_NAME).empty


@pytest.mark.parametrize(
    ("served", "reason"),
    [
        (b"<html>busy</html>", "not a valid gzip file"),
        (gzip.compress(b"garbage, not a TIFF"), "cannot decode the TIFF"),
        (gzip.compress(b"II*\0garbage"), "the TIFF holds no image"),
        (tif_gz(np.zeros((2, 8, 8), np.uint16)), "expected a 2-D grayscale image, found shape (2, 8, 8)"),
        (tif_gz(np.zeros((8, 8), np.float32)), "unsupported pixel type float32"),
    ],
    ids=["html", "not-tiff", "empty-tiff", "stack", "float"],
)
def test_a_broken_file_fails_its_image_without_retries(server, tmp_path, served, reason):
    server.files[f"{STEMS[0]}_blue.tif.gz"] = served
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", limit=2, **FAST)
    assert result.done == IDS[1:2]
    assert reason in result.failed[IDS[0]] and f"{STEMS[0]}_blue.tif.gz" in result.failed[IDS[0]]
    assert server.hits[f"{STEMS[0]}_blue.tif.gz"] == 1


def test_a_503_is_retried(server, tmp_path):
    server.behaviour[f"{STEMS[0]}_red.tif.gz"] = "503-once"
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", limit=1, **FAST)
    assert result.done == IDS[:1] and result.retried == 1
    assert server.hits[f"{STEMS[0]}_red.tif.gz"] == 2


def test_a_refused_base_url_stops_the_download_fast(tmp_path):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    rows = [f"https://h/{i}/img_{i}|x|False|0" for i in range(200)]
    table = read_public_table(public_table(tmp_path / "t.tsv", rows))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=f"base URL {closed} refused every request .*connection refused"):
        download_images(table, closed, tmp_path / "images", workers=4, retries=4, timeout=0.5, backoff=0.01)
    assert time.monotonic() - start < 5


def test_a_server_that_stops_answering_stops_the_download(server, tmp_path):
    stems = [f"/9/img_{i}" for i in range(12)]
    for i, stem in enumerate(stems):
        server.add_image(stem, size=8, seed=i)
        if i > 0:
            for channel in CHANNELS:
                server.behaviour[f"{stem}_{channel}.tif.gz"] = "503"
    table = read_public_table(public_table(tmp_path / "t.tsv", [f"https://h{stem}|x|False|0" for stem in stems]))
    with pytest.raises(DownloadError, match=f"base URL {server.url} stopped answering .*HTTP 503"):
        download_images(table, server.url, tmp_path / "images", **{**FAST, "workers": 1})
    assert pd.read_csv(tmp_path / "images" / MANIFEST_NAME)["ID"].tolist() == ["9_img_0"]


def test_an_interrupted_run_keeps_the_finished_images(server, tmp_path, monkeypatch):
    calls = []

    class Clock:  # Ctrl-C while the second image is being recorded
        @staticmethod
        def now(tz):
            calls.append(tz)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return datetime.now(tz)

    monkeypatch.setattr(download, "datetime", Clock)
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    with pytest.raises(KeyboardInterrupt):
        download_images(table, server.url, tmp_path / "images", **FAST)
    monkeypatch.setattr(download, "datetime", datetime)
    assert len(pd.read_csv(tmp_path / "images" / MANIFEST_NAME)) == 1
    result = download_images(table, server.url, tmp_path / "images", **FAST)
    assert result.done == IDS and result.downloaded == 3


# -------------------------------------------------------------------------------------------- outputs


def test_outputs_list_the_failures_and_label_the_rest(server, tmp_path):
    server.behaviour[f"{STEMS[1]}_red.tif.gz"] = "404"
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", **FAST)
    write_download_outputs(result, table, tmp_path / "public.csv", tmp_path / "failed.csv", max_failed_fraction=0.25)
    labels = read_train_table(tmp_path / "public.csv")
    assert labels["ID"].tolist() == [IDS[0], IDS[2], IDS[3]]
    assert labels["Label"].tolist() == ["0|16", "18", "2|3"]
    failed = pd.read_csv(tmp_path / "failed.csv")
    assert failed.to_dict("records") == [{"ID": IDS[1], "reason": f"HTTP 404 for {STEMS[1]}_red.tif.gz"}]


def test_too_many_failures_is_an_error_and_writes_no_labels(server, tmp_path):
    server.behaviour[f"{STEMS[1]}_red.tif.gz"] = "404"
    server.behaviour[f"{STEMS[2]}_red.tif.gz"] = "404"
    table = read_public_table(public_table(tmp_path / "t.tsv"))
    result = download_images(table, server.url, tmp_path / "images", **FAST)
    with pytest.raises(DownloadError, match=r"2 of 4 images failed .*50\.00%.*25\.00%.*failed\.csv"):
        write_download_outputs(result, table, tmp_path / "public.csv", tmp_path / "failed.csv", 0.25)
    assert not (tmp_path / "public.csv").exists()
    assert len(pd.read_csv(tmp_path / "failed.csv")) == 2


def test_cli_downloads_end_to_end(server, tmp_path):
    server.files["/kaggle_2021.tsv"] = public_table(tmp_path / "t.tsv").read_bytes()
    out = tmp_path / "public"
    code = main(
        ["download-public", "--tsv", f"{server.url}/kaggle_2021.tsv", "--base-url", server.url,
         "--out-images", str(out / "images"), "--out-table", str(out / "train.csv"),
         "--out-failed", str(out / "failed.csv"), "--workers", "2", "--timeout", "2", "--limit", "3"]
    )  # fmt: skip
    assert code == 0
    assert read_train_table(out / "train.csv")["ID"].tolist() == IDS[:3]
    assert pd.read_csv(out / "failed.csv").empty
    assert len(list((out / "images").glob("*.tif"))) == 12


def test_a_local_mirror_folder_serves_as_base_url_and_a_missing_file_fails_at_once(tmp_path):
    rng = np.random.default_rng(5)
    for stem in STEMS[:2]:
        for channel in CHANNELS:
            path = tmp_path / "mirror" / f"{stem.lstrip('/')}_{channel}.tif.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tif_gz(rng.integers(0, 65535, (16, 16), dtype=np.uint16)))
    (tmp_path / "mirror" / f"{STEMS[1].lstrip('/')}_blue.tif.gz").unlink()
    table = read_public_table(public_table(tmp_path / "t.tsv")).head(2)
    result = download_images(table, str(tmp_path / "mirror"), tmp_path / "images", **FAST)
    assert result.done == IDS[:1]
    assert "HTTP 404" in result.failed[IDS[1]] and "_blue.tif.gz" in result.failed[IDS[1]]
    with pytest.raises(InputDataError, match="neither an http"):
        download_images(table, str(tmp_path / "nowhere"), tmp_path / "images", **FAST)


def test_the_demo_generators_mirror_downloads_completely(tmp_path):
    from hpa_pipeline.data.synth import write_demo_dataset

    write_demo_dataset(tmp_path / "demo", n_train=1, n_test=1, image_size=64, n_public=3, progress=False)
    table = read_public_table(tmp_path / "demo/public_hpa/kaggle_2021.tsv")
    assert len(table) == 3 and all(image_id.count("_") == 3 for image_id in table["ID"])
    result = download_images(table, str(tmp_path / "demo/public_hpa/server"), tmp_path / "images", **FAST)
    assert result.done == table["ID"].tolist() and not result.failed
    image, bits = read_rgby_with_bit_depth(tmp_path / "images", result.done[0])
    assert bits == 16


# ------------------------------------------------------------------------------- the HPA v18 set (2018)

V18_IDS = ["10580_1610_C1_1", "10580_1610_C1_2", "24089_si27_F4_11"]
V18_STEMS = ["/10580/1610_C1_1", "/10580/1610_C1_2", "/24089/si27_F4_11"]
V18 = {**FAST, "source": "hpa_v18"}


def v18_list(path: Path, rows: list[str] | None = None) -> Path:
    """An HPAv18RGBY_WithoutUncertain_wodpl.csv-like list (Id,Target) of the V18_IDS, or of ``rows``."""
    rows = rows if rows is not None else [f"{i},{t}" for i, t in zip(V18_IDS, ["0 25", "16", "27 2 2"])]
    path.write_text("\n".join(["Id,Target", *rows]) + "\n")
    return path


@pytest.fixture
def v18_server(server):
    for seed, stem in enumerate(V18_STEMS):
        server.add_v18_image(stem, seed=seed, grey=stem == V18_STEMS[2])  # some v18 channel files are grey
    return server


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_v18_list_gives_ids_labels_and_server_paths(tmp_path):
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    assert table["ID"].tolist() == V18_IDS
    assert table["url_path"].tolist() == V18_STEMS
    assert table["Label"].tolist() == ["0|25", "16", "27|2"]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["10580_1610_C1_1,0", "nofolder,1"], r"v18\.csv row 3: Id 'nofolder' is not an HPA v18 image Id"),
        (["10580_1610_C1_1,0", "10580_../../etc,1"], r"row 3: Id '10580_../../etc' is not an HPA v18 image Id"),
        (["10580_1610_C1_1,0", "10580_1610_C1_2,28"], r"v18\.csv row 3 \(Id 10580_1610_C1_2\): unknown label '28'"),
        (["10580_1610_C1_1,0", "10580_1610_C1_2,"], r"row 3 \(Id 10580_1610_C1_2\): unknown label ''"),
        (["10580_1610_C1_1,0", "1_a,1", "10580_1610_C1_1,2"], "rows 2 and 4 both give Id 10580_1610_C1_1"),
    ],
    ids=["no-folder", "path", "label-28", "no-label", "duplicate"],
)
def test_v18_list_errors_name_the_row(tmp_path, rows, message):
    with pytest.raises(InputDataError, match=message):
        read_v18_table(v18_list(tmp_path / "v18.csv", rows))


def test_a_2021_list_is_not_read_as_a_v18_one(tmp_path):
    with pytest.raises(InputDataError, match=r"t\.tsv: missing column\(s\) Id, Target .*an HPA v18 list has Id,Target"):
        read_v18_table(public_table(tmp_path / "t.tsv"))


def test_v18_download_keeps_the_served_jpegs_and_reads_each_channels_plane(v18_server, tmp_path):
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    result = download_images(table, v18_server.url, tmp_path / "images", **V18)
    assert result.done == V18_IDS and result.failed == {} and result.downloaded == 3
    assert sorted(v18_server.hits) == sorted(f"{stem}_{c}.jpg" for stem in V18_STEMS for c in CHANNELS)
    for image_id, stem in zip(V18_IDS, V18_STEMS):
        for channel in CHANNELS:
            served = v18_server.files[f"{stem}_{channel}.jpg"]
            assert (tmp_path / "images" / f"{image_id}_{channel}.jpg").read_bytes() == served
    # an RGB file gives the plane of its colour (yellow: the mean of red and green); a grey one itself
    folder = tmp_path / "images"
    rgb = {channel: decoded(v18_server.files[f"{V18_STEMS[0]}_{channel}.jpg"]) for channel in CHANNELS}
    np.testing.assert_array_equal(read_channel_raw(folder / f"{V18_IDS[0]}_red.jpg"), rgb["red"][..., 0])
    np.testing.assert_array_equal(read_channel_raw(folder / f"{V18_IDS[0]}_green.jpg"), rgb["green"][..., 1])
    np.testing.assert_array_equal(read_channel_raw(folder / f"{V18_IDS[0]}_blue.jpg"), rgb["blue"][..., 2])
    yellow = (rgb["yellow"][..., 0].astype(np.uint16) + rgb["yellow"][..., 1]) // 2
    np.testing.assert_array_equal(read_channel_raw(folder / f"{V18_IDS[0]}_yellow.jpg"), yellow)
    grey = decoded(v18_server.files[f"{V18_STEMS[2]}_blue.jpg"])
    assert grey.ndim == 2
    np.testing.assert_array_equal(read_channel_raw(folder / f"{V18_IDS[2]}_blue.jpg"), grey)
    image, bits = read_rgby_with_bit_depth(folder, V18_IDS[1])
    assert image.shape == (4, 48, 48) and bits == 8
    manifest = pd.read_csv(folder / MANIFEST_NAME).sort_values("ID")  # in the order the images finished
    assert manifest[["ID", "height", "width", "dtype"]].values.tolist() == [[i, 48, 48, "uint8"] for i in V18_IDS]


def test_v18_failures_are_listed_with_their_reasons(v18_server, tmp_path):
    v18_server.behaviour[f"{V18_STEMS[0]}_green.jpg"] = "404"
    v18_server.files[f"{V18_STEMS[1]}_blue.jpg"] = v18_server.files[f"{V18_STEMS[1]}_blue.jpg"][:400]
    v18_server.files[f"{V18_STEMS[2]}_yellow.jpg"] = b"<html>maintenance</html>"
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    result = download_images(table, v18_server.url, tmp_path / "images", **V18)
    assert result.done == []
    assert result.failed[V18_IDS[0]] == f"HTTP 404 for {V18_STEMS[0]}_green.jpg"
    assert result.failed[V18_IDS[1]].startswith(f"{V18_STEMS[1]}_blue.jpg: cannot decode the JPEG (")
    assert "truncated" in result.failed[V18_IDS[1]].lower()
    assert result.failed[V18_IDS[2]] == f"{V18_STEMS[2]}_yellow.jpg: not a JPEG file"
    # a file that arrived whole but is broken is not fetched again
    assert v18_server.hits[f"{V18_STEMS[1]}_blue.jpg"] == 1 and v18_server.hits[f"{V18_STEMS[0]}_green.jpg"] == 1
    assert not list((tmp_path / "images").glob("*.jpg")), "no part of a failed image is written"


def test_v18_transient_failures_are_retried(v18_server, tmp_path):
    v18_server.behaviour[f"{V18_STEMS[0]}_red.jpg"] = "503-once"
    v18_server.behaviour[f"{V18_STEMS[1]}_yellow.jpg"] = "cut"
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    result = download_images(table, v18_server.url, tmp_path / "images", **V18)
    assert result.done == [V18_IDS[0], V18_IDS[2]] and result.retried == 2
    assert result.failed == {V18_IDS[1]: f"truncated transfer after 2 tries ({V18_STEMS[1]}_yellow.jpg)"}
    assert v18_server.hits[f"{V18_STEMS[0]}_red.jpg"] == 2 and v18_server.hits[f"{V18_STEMS[1]}_yellow.jpg"] == 2


def test_v18_killed_run_resumes_with_only_the_missing_images(v18_server, tmp_path):
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    images = tmp_path / "images"
    download_images(table, v18_server.url, images, limit=2, **V18)
    (images / f"{V18_IDS[1]}_green.jpg").unlink()  # lost: the image is fetched again
    (images / f".{V18_IDS[2]}_red.jpg.abc123.tmp").write_bytes(b"partial")  # a killed run's temporary file
    v18_server.hits.clear()
    result = download_images(table, v18_server.url, images, **V18)
    assert result.done == V18_IDS and result.downloaded == 2
    assert {path.rsplit("_", 1)[0] for path in v18_server.hits} == {V18_STEMS[1], V18_STEMS[2]}
    assert not list(images.glob(".*.tmp"))
    assert sorted(pd.read_csv(images / MANIFEST_NAME)["ID"]) == sorted(V18_IDS)
    v18_server.hits.clear()
    assert download_images(table, v18_server.url, images, **V18).downloaded == 0 and not v18_server.hits


def test_v18_is_stored_only_as_served_jpegs(v18_server, tmp_path):
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    with pytest.raises(InputDataError, match="image format 'png' is not one of jpg .*source hpa_v18"):
        download_images(table, v18_server.url, tmp_path / "images", image_format="png", **V18)
    with pytest.raises(InputDataError, match="image format 'jpg' is not one of tif, png .*source hpa2021"):
        download_images(table, v18_server.url, tmp_path / "images", image_format="jpg", **FAST)


def test_v18_outputs_are_a_2018_train_table(v18_server, tmp_path):
    v18_server.behaviour[f"{V18_STEMS[1]}_red.jpg"] = "404"
    table = read_v18_table(v18_list(tmp_path / "v18.csv"))
    result = download_images(table, v18_server.url, tmp_path / "images", **V18)
    write_download_outputs(result, table, tmp_path / "labels.csv", tmp_path / "failed.csv", 0.5, source="hpa_v18")
    assert (tmp_path / "labels.csv").read_text() == f"Id,Target\n{V18_IDS[0]},0 25\n{V18_IDS[2]},27 2\n"
    assert read_train_table_2018(tmp_path / "labels.csv")["labels"].tolist() == [[0, 25], [27, 2]]
    assert pd.read_csv(tmp_path / "failed.csv")["ID"].tolist() == [V18_IDS[1]]


def test_cli_downloads_the_v18_set_end_to_end(v18_server, tmp_path):
    v18_server.files["/lists/v18.csv"] = v18_list(tmp_path / "v18.csv").read_bytes()
    out = tmp_path / "v18"
    code = main(
        ["download-public", "--source", "hpa_v18", "--tsv", f"{v18_server.url}/lists/v18.csv",
         "--base-url", v18_server.url, "--out-images", str(out / "images"), "--out-table", str(out / "labels.csv"),
         "--out-failed", str(out / "failed.csv"), "--workers", "2", "--timeout", "2"]
    )  # fmt: skip
    assert code == 0
    assert read_train_table_2018(out / "labels.csv")["ID"].tolist() == V18_IDS
    assert sorted(path.name for path in (out / "images").glob("*.jpg")) == sorted(
        f"{image_id}_{channel}.jpg" for image_id in V18_IDS for channel in CHANNELS
    )


def test_the_v18_mirror_downloads_completely_from_its_folder(tmp_path):
    from v18_mirror import V18_LIST_NAME, write_v18_mirror

    ids = write_v18_mirror(tmp_path / "mirror", n_images=2, image_size=64)
    table = read_v18_table(tmp_path / "mirror" / V18_LIST_NAME)
    result = download_images(table, str(tmp_path / "mirror" / "server"), tmp_path / "images", **V18)
    assert result.done == ids and not result.failed
    image, bits = read_rgby_with_bit_depth(tmp_path / "images", ids[0])
    assert image.shape == (4, 64, 64) and bits == 8
